"""The hidden-particle experiment (paper section 5.2, Figure 4): the driver of
:mod:`nri_modular.hidden_node`.

Trains (or loads) a springs model on the TRUE edges
(:func:`nri_modular.baselines.true_edges.train_true_edges`, saved with
:func:`nri_modular.checkpoints.save_model` in ``<workdir>/model``), hides one particle in
each test system, infers its initial state with the true edges given (the paper's
setting) and measures the hidden particle's MSE; then the existence test (is a particle
hidden at all?) with the latent edges searched. ``experiments/hidden_node.py`` is its
command line; the figure is :func:`nri_modular.plots.hidden_node_figure`, the table
:func:`nri_modular.reporting.format_hidden_node_results`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular import checkpoints, plots
from nri_modular import graph as graph_lib
from nri_modular import hidden_node as hn
from nri_modular import hidden_node_search as hs
from nri_modular.baselines import true_edges
from nri_modular.data import Split, batching, ensure_dataset, physics
from nri_modular.modules import ModuleBank, Params

HIDDEN_CHOICES = ("last", "random")
EXISTENCE_BASELINES = ("null_latent", "observed_only")
PAPER_HIDDEN_MSE = 1.09e-3
MODEL_DIR = "model"  # <workdir>/model: the true-edges model (checkpoints.save_model)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of the hidden-particle experiment (defaults: the CPU demo)."""

    # Data (springs, cached in data_dir; a folder of its own, since the main demos keep
    # 2,000 training systems in data/).
    data_dir: str = "data/springs_10k"
    num_particles: int = 5
    num_train: int = 10000
    num_valid: int = 100
    num_test: int = 1000
    data_seed: int = 42
    # Model trained with the TRUE edges (structure = labels, module k = relation type k).
    # 128 wide on 10k systems: rollout-from-truth MSE 1.4e-4 (64 wide on 2k: 5.5e-4).
    edge_hidden: tuple[int, ...] = (128, 128, 128)
    node_hidden: tuple[int, ...] = (128, 128, 128)
    batch_size: int = 50
    num_epochs: int = 20
    learning_rate: float = 2e-3
    final_learning_rate: float = 1e-4
    p: int = 10
    seed: int = 0
    # Inference.
    split: str = "test"  # systems to infer on; choose settings (refeed, ...) on "valid"
    num_systems: int = 200
    obs_frames: int = 49
    hidden: str = "last"  # "last" or "random" (seeded per system)
    system_batch: int = 50
    num_existence: int = 100  # systems per class (with / without a hidden particle)
    existence_threshold: float = 2.0
    existence_baseline: str = "null_latent"  # or "observed_only", see existence_test
    null_module: int = 0  # the "no relation" module of the true-edges model
    # Search (see SearchConfig).
    refeed: int = 1
    num_candidates: int = 8
    num_initial_samples: int = 256
    samples_per_round: int = 32
    grad_steps: int = 10
    sa_steps: int = 4
    prior_weight: float = 1e-7
    log_every: int = 200

    def __post_init__(self):
        if self.existence_baseline not in EXISTENCE_BASELINES:
            raise ValueError(
                f"unknown existence_baseline {self.existence_baseline!r}; expected one of "
                f"{EXISTENCE_BASELINES}"
            )
        if self.split not in ("test", "valid"):
            raise ValueError(f"split must be 'test' or 'valid', got {self.split!r}")
        if self.hidden not in HIDDEN_CHOICES:
            raise ValueError(f"unknown hidden {self.hidden!r}; expected one of {HIDDEN_CHOICES}")
        for name in (
            "num_particles",
            "num_train",
            "num_test",
            "batch_size",
            "num_epochs",
            "p",
            "num_systems",
            "obs_frames",
            "system_batch",
            "log_every",
            "refeed",
            "num_candidates",
            "num_initial_samples",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_particles < 3:
            raise ValueError(
                f"need >= 3 particles (2 observed + 1 hidden), got {self.num_particles}"
            )
        if self.num_existence < 0:
            raise ValueError(f"num_existence must be >= 0, got {self.num_existence}")
        size = self.num_test if self.split == "test" else self.num_valid
        # The existence-test systems follow the MSE systems: the two never share a system.
        if self.num_systems + self.num_existence > size:
            raise ValueError(
                f"num_systems {self.num_systems} + num_existence {self.num_existence} exceed "
                f"the {size} {self.split} systems (num_{self.split}): the existence test "
                "must not reuse the MSE systems; use fewer systems or a larger split"
            )


HIDDEN_CHOICES = ("last", "random")
EXISTENCE_BASELINES = ("null_latent", "observed_only")


def model_meta(config: ExperimentConfig) -> dict:
    """What the true-edges model is trained with (saved beside it, compared on load)."""
    keys = ("num_particles", "num_train", "data_seed", "edge_hidden", "node_hidden")
    keys += ("batch_size", "num_epochs", "learning_rate", "final_learning_rate", "p", "seed")
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in ((k, getattr(config, k)) for k in keys)
    }


def true_edges_optimizer(config: ExperimentConfig) -> optax.GradientTransformation:
    """Adam with a cosine decay from ``learning_rate`` to ``final_learning_rate``."""
    total = (config.num_train // config.batch_size) * config.num_epochs
    schedule = optax.cosine_decay_schedule(
        config.learning_rate, total, alpha=config.final_learning_rate / config.learning_rate
    )
    return optax.adam(schedule)


def load_or_train(
    config: ExperimentConfig, workdir: str, train: Split, log: Callable[[str], None] = print
) -> tuple[ModuleBank, Params, float]:
    """The true-edges model in ``<workdir>/model`` (trained and saved there if missing).

    A saved model trained with other settings (:func:`model_meta`) is an error naming them.

    Returns:
      ``(bank, params, train_seconds)``; ``train_seconds`` is 0 when loaded.
    """
    bank = ModuleBank(2, config.edge_hidden, config.node_hidden)
    directory = os.path.join(workdir, MODEL_DIR)
    meta = model_meta(config)
    legacy = os.path.join(workdir, "model.msgpack")
    if os.path.exists(legacy) and not os.path.exists(directory):
        raise ValueError(
            f"{legacy} is a model cache of an older version of this experiment (models are "
            f"now saved in {directory} by nri_modular.checkpoints.save_model): delete it to "
            "retrain, or use another --workdir"
        )
    if os.path.exists(directory):
        template = jax.eval_shape(bank.init, jax.random.PRNGKey(0))
        params, saved = checkpoints.load_model(directory, target=template)
        if saved != meta:
            diff = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
            raise ValueError(
                f"{directory} was trained with other settings (saved, now): {diff}; "
                "use another --workdir"
            )
        log(f"loaded the true-edges model from {directory}")
        return bank, params, 0.0
    start = time.time()
    params, _ = true_edges.train_true_edges(
        bank,
        true_edges_optimizer(config),
        train,
        num_steps=(config.num_train // config.batch_size) * config.num_epochs,
        batch_size=config.batch_size,
        p=config.p,
        seed=config.seed,
        log=log,
        log_every=config.log_every,
    )
    checkpoints.save_model(directory, jax.device_get(params), meta)
    return bank, params, time.time() - start


def hidden_search_config(config: ExperimentConfig) -> hn.HiddenSearchConfig:
    """The latent-node search settings of the experiment."""
    return hn.HiddenSearchConfig(
        refeed=config.refeed,
        num_candidates=config.num_candidates,
        num_initial_samples=config.num_initial_samples,
        samples_per_round=config.samples_per_round,
        grad_steps=config.grad_steps,
        sa_steps=config.sa_steps,
        num_particles=config.num_particles,
        prior_weight=config.prior_weight,
    )


def _batched(fn, arrays: tuple, batch: int, key, log=None, what=""):
    """Runs jitted ``fn(*arrays_batch, key_i)`` on the fixed-size batches of
    :func:`nri_modular.data.batching.padded_batches` (the last one padded by repeating its
    last system), ``key_i = fold_in(key, i)``; returns the outputs of the real systems, in
    order.
    """
    total = arrays[0].shape[0]
    outs = []
    for i, (idx, valid) in enumerate(batching.padded_batches(total, batch)):
        out = fn(*(jnp.asarray(a[idx]) for a in arrays), jax.random.fold_in(key, i))
        outs.append(jax.tree.map(lambda x, valid=valid: np.asarray(x)[:valid], out))
        if log is not None:
            log(f"{what}: {min((i + 1) * batch, total)}/{total} systems")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def absent_systems(num: int, num_observed: int, frames: int, normalization, seed: int):
    """Genuine ``m``-particle springs systems (nothing hidden), normalised like the data.

    Returns:
      ``(states [num, frames, m, 4], labels int32 [num, m(m-1)])``.
    """
    steps = (frames + 1) * 100
    loc, vel, edges = physics.simulate("springs", seed, num, num_observed, steps, 100)
    states = np.concatenate([loc, vel], axis=2).transpose(0, 1, 3, 2)  # [S, T, m, 4]
    states = normalization.normalise(states.astype(np.float32))
    labels = (graph_lib.matrix_to_edges(edges) > 0).astype(np.int32)
    return states[:, :frames].astype(np.float32), labels


def run_experiment(config: ExperimentConfig, workdir: str, log=print) -> dict:
    """Train (or load) the true-edges springs model, hide a particle, infer it, measure.

    Writes ``<workdir>/results.json`` (keys ``hidden_mse``, ``num_systems``,
    ``existence_accuracy``, ``wall_seconds`` and details), ``<workdir>/hidden_node.png``
    (Figure 4 style) and ``<workdir>/hidden_node.npz`` (inferred and true trajectories).
    """
    wall_start = time.time()
    data = ensure_dataset(
        config.data_dir,
        "springs",
        config.num_train,
        config.num_valid,
        config.num_test,
        config.data_seed,
        config.num_particles,
    )
    bank, params, train_seconds = load_or_train(config, workdir, data.train, log)
    n, t = config.num_particles, config.obs_frames
    split = data[config.split]
    if t > split.num_frames:
        raise ValueError(
            f"obs_frames {t} exceeds the {config.split} trajectories' {split.num_frames}"
        )
    prior_mean, prior_std = hn.state_prior(data.train.states)
    dynamics = hn.gnn_dynamics(bank, params, edge_compute="blocked")
    scfg = hidden_search_config(config)
    key = jax.random.PRNGKey(config.seed + 1)
    rng = np.random.default_rng(config.seed)

    # 1. The paper's setting: hide particle k, true edges given, infer its trajectory.
    num = config.num_systems
    if config.hidden == "last":
        hidden = np.full(num, n - 1)
    else:
        hidden = rng.integers(0, n, num)
    systems = hn.hide_particle(split.states[:num, :t], split.labels[:num], hidden)
    infer_known = hs.make_infer_hidden(dynamics, scfg, edges_known=True)
    start = time.time()
    known = _batched(
        lambda o, s, e, k: infer_known(o, s, k, prior_mean, prior_std, e),
        (systems.observed, systems.observed_structure, systems.hidden_edges),
        config.system_batch,
        jax.random.fold_in(key, 0),
        log,
        "hidden particle, true edges",
    )
    infer_seconds = time.time() - start
    mse = np.asarray(hn.hidden_mse(known.trajectory, systems.hidden_states))
    degree = systems.hidden_edges.sum(axis=1) // 2  # springs are symmetric
    connected = degree > 0
    results = {
        "hidden_mse": float(mse.mean()),
        "hidden_mse_median": float(np.median(mse)),
        "hidden_mse_connected": float(mse[connected].mean()) if connected.any() else None,
        "hidden_mse_unconnected": float(mse[~connected].mean()) if (~connected).any() else None,
        "num_connected": int(connected.sum()),
        # No method does better than this on the systems whose hidden particle is free.
        "free_particle_floor": hn.free_particle_floor(data.train.states, data.train.labels, t),
        "hidden_position_mse": float(
            np.square(known.trajectory[..., :2] - systems.hidden_states[..., :2]).mean()
        ),
        "hidden_velocity_mse": float(
            np.square(known.trajectory[..., 2:] - systems.hidden_states[..., 2:]).mean()
        ),
        "initial_state_mse": float(np.square(known.initial - systems.hidden_states[:, 0]).mean()),
        "observed_mse_with_latent": float(known.observed_mse.mean()),
        "hidden_mse_from_true_initial": float(
            hn.oracle_hidden_mse(dynamics, systems, scfg.refeed).mean()
        ),
        "paper_hidden_mse": PAPER_HIDDEN_MSE,
        "num_systems": num,
        "obs_frames": t,
        "hidden": config.hidden,
        "split": config.split,
        "infer_seconds": infer_seconds,
        "train_seconds": train_seconds,
    }
    log(f"hidden-particle MSE {results['hidden_mse']:.3e} on {num} systems ({infer_seconds:.0f} s)")

    # 2. Existence test: present (a 5-particle system, one hidden) vs absent (a genuine
    # 4-particle system); edges of the latent node unknown (searched) in both.
    if config.num_existence:
        results.update(existence_test(config, dynamics, data, prior_mean, prior_std, key, log))

    np.savez_compressed(
        os.path.join(workdir, "hidden_node.npz"),
        observed=systems.observed,
        hidden_true=systems.hidden_states,
        hidden_inferred=known.trajectory,
        hidden_index=systems.hidden_index,
        hidden_edges=systems.hidden_edges,
        mse=mse,
    )
    figure = os.path.join(workdir, "hidden_node.png")
    plots.hidden_node_figure(systems, known.trajectory, mse, figure)
    results["figure"] = figure
    results["wall_seconds"] = time.time() - wall_start
    checkpoints.write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results


def existence_test(config, dynamics, data, prior_mean, prior_std, key, log=print) -> dict:
    """Detection of an unobserved particle from ``log(loss without / loss with latent)``.

    Present: ``num_existence`` systems of ``split`` (those after the ``num_systems`` used above,
    so the two evaluations do not share systems) with particle ``n - 1`` hidden.
    Absent: ``num_existence`` freshly simulated ``(n - 1)``-particle springs systems
    (same simulator, normalisation and frames), so the observed particles truly feel
    nothing else.

    "With": the latent node's edges are searched (annealing) and its state fitted.
    "Without" (``existence_baseline``):

    * ``"null_latent"`` (default): the same search with every latent edge fixed to the
      "no relation" module ``null_module`` (module k = relation type k in the true-edges
      model; springs type 0 = no spring). Both hypotheses then run the ``n``-node graph
      the model was trained on and get the same optimisation budget, so the comparison
      is only "does the latent particle interact?".
    * ``"observed_only"``: the ``n - 1`` observed particles alone. The model was trained
      on ``n``-node graphs, so this baseline is off-distribution (one message fewer into
      every node) and a latent node "improves" it even when nothing is hidden.

    A system is declared to hold a hidden particle when the latent node lowers the loss
    by more than ``existence_threshold`` (a fixed ratio, not tuned on the test systems).
    """
    n, m, t = config.num_particles, config.num_particles - 1, config.obs_frames
    num = config.num_existence
    split = data[config.split]
    lo = config.num_systems  # never the MSE systems (checked by ExperimentConfig)
    if lo + num > split.num_tasks:
        raise ValueError(
            f"the existence test needs num_systems + num_existence = {lo + num} {config.split} "
            f"systems; {split.num_tasks} exist"
        )
    present = hn.hide_particle(
        split.states[lo : lo + num, :t], split.labels[lo : lo + num], np.full(num, n - 1)
    )
    absent_states, absent_labels = absent_systems(
        num, m, t, data.normalization, seed=config.seed + 1000
    )
    scfg = hidden_search_config(config)
    infer = hs.make_infer_hidden(dynamics, scfg, edges_known=False)
    if config.existence_baseline == "null_latent":
        infer_null = hs.make_infer_hidden(dynamics, scfg, edges_known=True)
        null_edges = np.full((num, 2 * m), config.null_module, np.int32)

        def baseline(obs, struct, k):
            res = _batched(
                lambda o, s, e, kk: infer_null(o, s, kk, prior_mean, prior_std, e),
                (obs, struct, null_edges),
                config.system_batch,
                k,
            )
            return res.observed_mse

    else:
        without = jax.jit(lambda o, s: hn.observed_only_loss(dynamics, o, s, scfg.refeed))

        def baseline(obs, struct, k):
            del k
            return np.asarray(without(jnp.asarray(obs), jnp.asarray(struct)))

    out = {"existence_baseline": config.existence_baseline}
    scores = {}
    for c, (name, (obs, struct)) in enumerate(
        (
            ("present", (present.observed, present.observed_structure)),
            ("absent", (absent_states, absent_labels)),
        )
    ):
        start = time.time()
        res = _batched(
            lambda o, s, k: infer(o, s, k, prior_mean, prior_std),
            (obs, struct),
            config.system_batch,
            jax.random.fold_in(key, 1 + c),
            log,
            f"existence test ({name})",
        )
        loss_without = baseline(obs, struct, jax.random.fold_in(key, 3 + c))
        scores[name] = np.asarray(hn.existence_scores(res.observed_mse, loss_without))
        out[f"existence_{name}_seconds"] = time.time() - start
        if name == "present":
            mse = np.asarray(hn.hidden_mse(res.trajectory, present.hidden_states))
            out["hidden_mse_unknown_edges"] = float(mse.mean())
            out["latent_edge_accuracy"] = float((res.edges == present.hidden_edges).mean())
    cut = float(np.log(config.existence_threshold))
    connected = present.hidden_edges.sum(axis=1) > 0
    detected = scores["present"] > cut
    rejected = scores["absent"] <= cut
    out.update(
        existence_accuracy=float((detected.sum() + rejected.sum()) / (2 * num)),
        existence_detection_rate=float(detected.mean()),
        existence_detection_rate_connected=float(detected[connected].mean()),
        existence_false_alarm_rate=float(1 - rejected.mean()),
        existence_accuracy_connected=float(
            (detected[connected].sum() + rejected.sum()) / (connected.sum() + num)
        ),
        existence_threshold=config.existence_threshold,
        existence_best_threshold_accuracy=hn.balanced_accuracy(
            scores["present"],
            scores["absent"],
            hn.best_threshold(scores["present"], scores["absent"]),
        ),
        existence_num_per_class=num,
        existence_score_present_median=float(np.median(scores["present"])),
        existence_score_absent_median=float(np.median(scores["absent"])),
    )
    log(
        f"existence test: accuracy {out['existence_accuracy']:.3f} (detected "
        f"{out['existence_detection_rate']:.3f} present, false alarms "
        f"{out['existence_false_alarm_rate']:.3f})"
    )
    return out
