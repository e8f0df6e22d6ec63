"""Every matplotlib figure of the project (the optional ``[plots]`` extra).

Figures read saved or computed arrays and write a PNG; nothing here trains or searches.
matplotlib is imported inside each function (``import nri_modular`` never imports it); a
missing matplotlib is an error naming the extra to install.
"""

from __future__ import annotations

import numpy as np


def _pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            'drawing figures needs matplotlib, the [plots] extra: pip install -e ".[plots]"'
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def hidden_node_figure(systems, inferred: np.ndarray, mse: np.ndarray, path: str) -> None:
    """Figure-4-style PNG: observed paths, the true hidden path and ours, for 3 systems.

    Shows the systems with the median, 25th and 75th percentile hidden MSE (not the best).

    Args:
      systems: :class:`nri_modular.hidden_node.HiddenSystems` (``observed [B, T, m, 4]``,
        ``hidden_states [B, T, 4]``, ``hidden_edges [B, 2m]``).
      inferred: ``[B, T, 4]`` the inferred hidden trajectories.
      mse: ``[B]`` their hidden MSE.
      path: the PNG to write.
    """
    if len(mse) == 0 or inferred.shape != systems.hidden_states.shape:
        raise ValueError(
            f"need >= 1 system and inferred {inferred.shape} shaped like the hidden states "
            f"{systems.hidden_states.shape}"
        )
    plt = _pyplot()
    order = np.argsort(mse)
    picks = [order[int(q * (len(order) - 1))] for q in (0.25, 0.5, 0.75)]
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 5))
    colors = plt.cm.tab10([0, 1, 2, 4, 5, 6, 7, 8, 9])  # no red: red is "inferred"
    for ax, i in zip(np.atleast_1d(axes), picks, strict=True):
        obs = systems.observed[i]
        for j in range(obs.shape[1]):
            ax.plot(obs[:, j, 0], obs[:, j, 1], color=colors[j], lw=1.5, label=f"observed {j}")
            ax.plot(obs[0, j, 0], obs[0, j, 1], "o", color=colors[j], ms=4)
        truth = systems.hidden_states[i]
        ax.plot(truth[:, 0], truth[:, 1], "k--", lw=2.5, label="hidden (true)")
        ax.plot(inferred[i, :, 0], inferred[i, :, 1], "r-", lw=2, label="hidden (inferred)")
        ax.plot(truth[0, 0], truth[0, 1], "ko", ms=6)
        ax.plot(inferred[i, 0, 0], inferred[i, 0, 1], "rx", ms=8)
        springs = int(systems.hidden_edges[i].sum() // 2)
        ax.set_title(f"test system {i}: hidden MSE {mse[i]:.1e}, {springs} spring(s)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x (normalised)")
        ax.set_ylabel("y (normalised)")
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="best")
    fig.suptitle("Hidden particle inferred from the others (o: frame 0; true dashed, ours red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def upper_bound_curves(rows: list[dict], path: str, title: str = "") -> None:
    """Learning curves of ``experiments/upper_bound.py`` against training wall time.

    Three panels, one line per arm (``upper_bound``: modules trained on the true
    relations; ``bouncegrad``): valid edge accuracy after the meta-test search (o) and of
    its exact one-step starting point (x), valid one-step MSE with the true graph, and the
    training loss.

    Args:
      rows: the rows of ``curve.jsonl``; each has ``arm``, ``train_seconds``,
        ``valid_edge_accuracy``, ``valid_exact_init_accuracy``, ``valid_mse1_true_graph``
        and ``loss`` (NaN where not measured).
      path: the PNG to write.
      title: figure title (e.g. the budget).
    """
    required = ("arm", "train_seconds", "valid_exact_init_accuracy", "valid_mse1_true_graph")
    missing = sorted({k for r in rows for k in required if k not in r})
    if not rows or missing:
        raise ValueError(f"need curve rows with keys {required}; missing {missing or 'rows'}")
    plt = _pyplot()
    panels = (
        (
            "valid edge accuracy",
            (("valid_edge_accuracy", "o-"), ("valid_exact_init_accuracy", "x--")),
        ),
        ("valid 1-step MSE, true graph", (("valid_mse1_true_graph", "o-"),)),
        ("training loss (p-step rollout)", (("loss", "o-"),)),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    arms = sorted({r["arm"] for r in rows})
    for ax, (name, series) in zip(axes, panels, strict=True):
        for color, arm in enumerate(arms):
            for key, style in series:
                pts = [r for r in rows if r["arm"] == arm and np.isfinite(r.get(key, np.nan))]
                if pts:
                    label = arm if len(series) == 1 else f"{arm}, {key.split('_')[1]}"
                    times = [r["train_seconds"] / 60 for r in pts]
                    ax.plot(times, [r[key] for r in pts], style, color=f"C{color}", label=label)
        ax.set_title(name)
        ax.set_xlabel("training wall time (min)")
        if name != "valid edge accuracy":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def data_efficiency_figure(
    sizes, accuracies: dict, path: str, system: str, steps: int | None = None
) -> None:
    """Figure-3-style PNG: edge accuracy against the number of training tasks (log x).

    Args:
      sizes: ``[P]`` training-set sizes.
      accuracies: method name -> ``[P]`` test edge accuracy (fractions) at those sizes.
      path: the PNG to write.
      system: for the title.
      steps: gradient steps per point (for the title), if the same for all.
    """
    if not accuracies or any(len(a) != len(sizes) for a in accuracies.values()):
        raise ValueError(f"every curve needs one accuracy per size ({len(sizes)} sizes)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    labels = {"modular": "modular meta-learning (ours)", "nri_vae": "NRI VAE (Kipf et al.)"}
    for name, acc in accuracies.items():
        ax.plot(sizes, 100 * np.asarray(acc, np.float64), "o-", label=labels.get(name, name))
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training tasks (log scale)")
    ax.set_ylabel("test edge accuracy (%)")
    ax.set_title(f"{system}" + (f", {steps} gradient steps per point" if steps else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
