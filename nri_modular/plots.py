"""Every matplotlib figure of the project (the optional ``[plots]`` extra).

Figures read saved or computed arrays and write a PNG; nothing here trains or searches.
matplotlib is imported inside each function (``import nri_modular`` never imports it); a
missing matplotlib is an error naming the extra to install.
"""

from __future__ import annotations

import numpy as np


def available() -> bool:
    """Whether matplotlib (the ``[plots]`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


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


def _save(fig, path: str, title: str = "", dpi: int = 100) -> None:
    """Titles (when given), lays out, writes ``path`` and closes ``fig``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


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
    title = "Hidden particle inferred from the others (o: frame 0; true dashed, ours red)"
    _save(fig, path, title, dpi=110)


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
            (
                ("valid_edge_accuracy", "o-", "after search"),
                ("valid_exact_init_accuracy", "x--", "exact one-step start"),
            ),
        ),
        ("valid 1-step MSE, true graph", (("valid_mse1_true_graph", "o-", ""),)),
        ("training loss (p-step rollout)", (("loss", "o-", ""),)),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    arms = sorted({r["arm"] for r in rows})
    for ax, (name, series) in zip(axes, panels, strict=True):
        for color, arm in enumerate(arms):
            for key, style, what in series:
                pts = [r for r in rows if r["arm"] == arm and np.isfinite(r.get(key, np.nan))]
                if pts:
                    label = f"{arm}, {what}" if what else arm
                    times = [r["train_seconds"] / 60 for r in pts]
                    ax.plot(times, [r[key] for r in pts], style, color=f"C{color}", label=label)
        ax.set_title(name)
        ax.set_xlabel("training wall time (min)")
        if name != "valid edge accuracy":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, title)


def training_curves(runs: dict, path: str, title: str = "") -> None:
    """Training runs against wall time: the edge accuracy of the training structures that
    BounceGrad holds, and the training loss (log scale); a run's test edge accuracy, when
    given, is a star at its end.

    Args:
      runs: label -> ``{"minutes": [R], "edge_accuracy": [R], "loss": [R]}`` and optionally
        ``"test_edge_accuracy"`` (fraction).
      path: the PNG to write.
    """
    if not runs:
        raise ValueError("no runs to draw")
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (label, run) in enumerate(runs.items()):
        minutes = np.asarray(run["minutes"], np.float64)
        acc_ax.plot(minutes, 100 * np.asarray(run["edge_accuracy"]), color=f"C{color}", label=label)
        loss_ax.plot(minutes, run["loss"], color=f"C{color}", label=label)
        test = run.get("test_edge_accuracy")
        if test is not None:
            acc_ax.plot(minutes[-1], 100 * test, "*", ms=12, color=f"C{color}")
    acc_ax.set_ylabel("edge accuracy of the training structures (%)\n(star: test, after search)")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("training wall time (min)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, title)


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
    _save(fig, path)


def evaluation_figure(
    states: np.ndarray,
    predicted: np.ndarray,
    inferred: np.ndarray,
    true: np.ndarray,
    obs_frames: int,
    path: str,
    system: str = "",
) -> None:
    """Evaluation PNG, one column per system: paths, then inferred vs true graph.

    Top: observed positions (frames ``0..obs_frames``, solid), the true continuation
    (dashed) and the model's open-loop prediction from frame ``obs_frames`` (dotted, x at
    its end). Bottom: the ``n x n`` relations ``j -> i`` found by the search (mapped to
    relation types), true ones circled, wrong ones crossed in red.

    Args:
      states: ``[S, T, n, 4]`` physical (x, y, vx, vy) of each system.
      predicted: ``[S, H, n, 4]`` physical predictions of frames ``obs_frames + 1..+H``.
      inferred, true: int ``[S, n(n-1)]`` relation types (receiver-major edge order).
      obs_frames: frames the structure search saw.
      path: the PNG to write.
    """
    from nri_modular import graph

    s, h = predicted.shape[0], predicted.shape[1]
    n = states.shape[2]
    if states.shape[0] != s or inferred.shape != true.shape or inferred.shape[0] != s:
        raise ValueError(
            f"states {states.shape}, predicted {predicted.shape}, inferred {inferred.shape} "
            f"and true {true.shape} must hold the same systems"
        )
    plt = _pyplot()
    fig, axes = plt.subplots(2, s, figsize=(4.5 * s, 8.5), squeeze=False)
    colors = plt.cm.tab10(np.arange(n) % 10)
    receivers, senders = graph.edge_index(n)
    for c in range(s):
        ax = axes[0, c]
        end = obs_frames + h
        for j in range(n):
            obs = states[c, : obs_frames + 1, j]
            ax.plot(obs[:, 0], obs[:, 1], "-", color=colors[j], lw=1.2)
            ax.plot(obs[0, 0], obs[0, 1], "o", color=colors[j], ms=3)
            truth = states[c, obs_frames : end + 1, j]
            ax.plot(truth[:, 0], truth[:, 1], "--", color=colors[j], lw=1.5)
            pred = np.concatenate([states[c, obs_frames : obs_frames + 1, j], predicted[c, :, j]])
            ax.plot(pred[:, 0], pred[:, 1], ":", color="k", lw=1.8)
            ax.plot(pred[-1, 0], pred[-1, 1], "x", color="k", ms=6)
        right = int((inferred[c] == true[c]).sum())
        ax.set_title(f"system {c}: {right}/{true.shape[1]} edges right")
        ax.set_aspect("equal", adjustable="datalim")
        grid = np.full((n, n), np.nan)
        truth_grid = np.full((n, n), np.nan)
        grid[receivers, senders] = inferred[c]
        truth_grid[receivers, senders] = true[c]
        ax = axes[1, c]
        ax.imshow(grid, cmap="Blues", vmin=-0.5, vmax=1.5)
        for i, j in zip(receivers, senders, strict=True):
            if truth_grid[i, j] == 1:
                ax.plot(j, i, "o", mfc="none", mec="orange", ms=14, mew=2)
            if grid[i, j] != truth_grid[i, j]:
                ax.plot(j, i, "x", color="red", ms=12, mew=2.5)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("sender j")
        ax.set_ylabel("receiver i")
        ax.set_title("graph j -> i: inferred vs true")
    axes[0, 0].plot([], [], "k-", label=f"observed (frames 0-{obs_frames})")
    axes[0, 0].plot([], [], "k--", label="true continuation")
    axes[0, 0].plot([], [], "k:", label=f"predicted ({h} steps)")
    axes[0, 0].legend(loc="best", fontsize=8)
    title = (
        f"{system}: paths (top); graph (bottom): dark blue = inferred relation 1 "
        "(spring / like charges), orange o = true relation 1, red x = wrong"
    )
    _save(fig, path, title, dpi=90)


def choose_k_figure(curve: list[dict], chosen: int, path: str) -> None:
    """The valid prediction loss against the number of modules K (the chosen one marked).

    Args:
      curve: rows of ``experiments/choose_k.py``: ``{"K", "valid_loss", ...}``.
      chosen: the K picked.
      path: the PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [row["K"] for row in curve]
    losses = [row["valid_loss"] for row in curve]
    ax.plot(ks, losses, "o-", color="tab:blue")
    ax.plot([chosen], [losses[ks.index(chosen)]], "o", ms=12, mfc="none", mec="tab:red", mew=2)
    ax.set_xticks(ks)
    ax.set_xlabel("modules K")
    ax.set_ylabel("valid loss (mean MSE, held-out frames)")
    ax.set_yscale("log")
    _save(fig, path, f"choosing K: K = {chosen} (red)")
