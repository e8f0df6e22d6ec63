"""What caps edge accuracy at a budget: modules trained on the TRUE relations, then searched.

  python experiments/upper_bound.py --flagfile=experiments/flags/charged_2k.flags \
      --data_dir=runs/charged_ub_data --num_valid=500 --max_seconds=300 --workdir=runs/ub

(its own ``--data_dir``: another ``num_valid`` than the demo's would be another dataset).

Two arms at the same budget (training tasks, widths, steps, wall time), both scored on the
**valid** split exactly as meta-test scores the test split (exact local moves + annealing on
frames ``0..obs_frames-1``, ``--test_*`` flags):

* ``upper_bound``: the module bank trained with every training task's true relations as its
  structure (no search during training: BounceGrad with ``sa_steps=0`` and the structures
  set to the labels, the training of :mod:`nri_modular.baselines.true_edges`). What search
  can reach with modules fitted this well.
* ``bouncegrad``: BounceGrad as configured (structures searched during training).

Both arms build their state and step as the real run does (:func:`arm_setup`:
:func:`nri_modular.train.build`, so initial structures under the run's structure prior,
its initial temperature, loss, optimiser schedule and edge layout) and take the real run's
batches (``task_batches`` with the run's ``task_shards``, placed on its mesh).

Every ``--eval_every_seconds`` of training (the clock excludes evaluation) each arm writes a
curve point to ``<workdir>/curve.jsonl``: valid edge accuracy after search (and of the
exact one-step optimum alone), valid one-step MSE with the true graph, the training loss,
training seconds and the machine's load; ``<workdir>/curve.png`` plots them against
training wall time. Each arm's final module parameters are saved in ``<workdir>/model_<arm>``
(:func:`nri_modular.checkpoints.save_model`; read back with ``load_model``). Every flag of
:class:`nri_modular.Config` applies (see --helpfull).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from nri_modular import config as config_lib
from nri_modular import plots

ARMS = ("upper_bound", "bouncegrad")

config_lib.define_flags(flags, system_default="charged")
flags.DEFINE_multi_enum("arm", list(ARMS), list(ARMS), "Which arms to train and score.")
flags.DEFINE_float("max_seconds", 0.0, "Training wall-time budget per arm (0: num_epochs only).")
flags.DEFINE_float("eval_every_seconds", 60.0, "Training seconds between curve points.")
flags.DEFINE_integer("curve_valid", 200, "Valid tasks scored at intermediate curve points.")
flags.DEFINE_bool(
    "curve_search",
    True,
    "Intermediate curve points run the meta-test search (else only its exact one-step "
    "starting point, much cheaper); the final point always searches.",
)
flags.DEFINE_integer(
    "data_num_train",
    0,
    "Training tasks in --data_dir's dataset (0: num_train); a run uses "
    "the first num_train of them, so one cached dataset serves every budget.",
)
flags.DEFINE_integer("data_num_valid", 0, "Valid tasks in the dataset (0: num_valid).")


@dataclasses.dataclass(frozen=True)
class Budget:
    """When an arm stops training: ``total_steps`` BounceGrad steps or ``max_seconds``."""

    total_steps: int
    max_seconds: float = 0.0
    eval_every_seconds: float = 60.0

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0, got {self.max_seconds}")
        if self.eval_every_seconds <= 0:
            raise ValueError(f"eval_every_seconds must be positive, got {self.eval_every_seconds}")


def label_structures(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """The module structure whose mapped relations are ``labels``.

    Args:
      labels: int32 ``[N, E]`` relation types.
      mapping: int32 ``[K]`` module -> relation type (the first module of a type computes it).

    Returns:
      int32 ``[N, E]``: for each edge, the module ``k`` with ``mapping[k] == labels``.
    """
    mapping = np.asarray(mapping)
    inverse = np.full(int(max(mapping.max(), labels.max())) + 1, -1, np.int32)
    for k, t in enumerate(mapping):
        if inverse[t] < 0:
            inverse[t] = k
    out = inverse[labels]
    if (out < 0).any():
        missing = sorted(set(np.unique(labels[out < 0]).tolist()))
        raise ValueError(f"relation types {missing} have no module in mapping {mapping.tolist()}")
    return out.astype(np.int32)


@functools.cache
def _one_step_errors(bank):
    """Jitted ``(params, states [B, T, n, 4], structures [B, E]) -> [B]`` one-step MSEs."""
    from nri_modular import gnn

    return jax.jit(
        lambda params, states, structures: gnn.rollout_loss(bank, params, states, structures, 1)
    )


@functools.cache
def _exact_best(bank, config):
    """Jitted ``(params, states [B, T, n, 4]) -> [B, E]``: meta-test search's exact start."""
    from nri_modular import evaluate

    return jax.jit(lambda params, states: evaluate.exact_scores(bank, params, states, config)[1])


def one_step_mse(bank, params, states: np.ndarray, structures: np.ndarray, batch_size: int):
    """Teacher-forced one-step MSE (normalised units), mean over tasks, frames, nodes, dims.

    Args:
      states: ``[N, T, n, 4]``; structures: int32 ``[N, E]``.
    """
    from nri_modular.data import batching

    fn = _one_step_errors(bank)
    total = 0.0
    for idx, valid in batching.padded_batches(states.shape[0], batch_size):
        losses = np.asarray(fn(params, jnp.asarray(states[idx]), jnp.asarray(structures[idx])))
        total += float(losses[:valid].sum())
    return total / states.shape[0]


def exact_init_structures(
    bank, params, states: np.ndarray, batch_size: int, search_config=None
) -> np.ndarray:
    """The exact argmin of the one-step loss (meta-test search's starting point), per task.

    Args:
      states: ``[N, T, n, 4]``.
      search_config: the meta-test ``evaluate.SearchConfig`` (its energy's penalty;
        default: squared error).

    Returns:
      int32 ``[N, n(n-1)]``.
    """
    from nri_modular import evaluate
    from nri_modular.data import batching

    # The same scores on one device for any batch (groups only splits the work).
    config = dataclasses.replace(search_config or evaluate.SearchConfig(), groups=1)
    best = _exact_best(bank, config)
    out = [
        np.asarray(best(params, jnp.asarray(states[idx])))[:valid]
        for idx, valid in batching.padded_batches(states.shape[0], batch_size)
    ]
    return np.concatenate(out)


def score_valid(
    config, bank, params, valid, mapping, key, num_tasks: int, search: bool = True
) -> dict:
    """Meta-test search on the first ``num_tasks`` valid tasks; accuracy and one-step MSEs.

    ``search=False`` scores only the exact one-step optimum (search's starting point, one
    batched pass): ``valid_edge_accuracy`` and ``valid_mse1_searched`` are then NaN.
    """
    import nri_modular as nm
    from nri_modular import evaluate

    states = valid.states[:num_tasks]
    labels = valid.labels[:num_tasks]
    observed = states[:, : config.obs_frames]
    start = time.time()
    b = min(config.test_batch_size, num_tasks)
    search_config = evaluate.search_config(config)
    init = exact_init_structures(bank, params, observed, b, search_config)
    accuracy = mse_searched = float("nan")
    if search:
        structures, _ = nm.search_structures(bank, params, observed, key, search_config)
        accuracy = nm.edge_accuracy(structures, labels, mapping)
        mse_searched = one_step_mse(bank, params, states, structures, b)
    true_structures = label_structures(labels, mapping)
    return {
        "valid_edge_accuracy": accuracy,
        "valid_exact_init_accuracy": nm.edge_accuracy(init, labels, mapping),
        "valid_mse1_true_graph": one_step_mse(bank, params, states, true_structures, b),
        "valid_mse1_searched": mse_searched,
        "num_valid_scored": int(num_tasks),
        "eval_seconds": time.time() - start,
    }


def load_average() -> float:
    """The 1-minute load average (NaN where the OS does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


def _check_arm(arm: str, config) -> None:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    if config.uses_proposal_network:
        raise ValueError(
            "the diagnostic trains and searches without a proposal network; use another "
            "proposal and test_proposal than 'blocked_gibbs'"
        )


def arm_setup(arm: str, config, train_split, mesh=None):
    """An arm's step and initial state, built as the real run builds them.

    Both come from :func:`nri_modular.train.build` (the one state builder): the real run's
    initial state (module parameters, structures drawn under its structure prior,
    ``initial_temperature``) and its jitted, sharded step (loss, ``huber_delta``, the
    optimiser's schedule, exact stride, edge layout, structure-prior moves). The
    ``upper_bound`` arm's step has ``sa_steps=0`` and its structures are the training
    labels (module ``k`` computes relation type ``k``).

    Args:
      arm: one of :data:`ARMS`.
      train_split: the training split (its states' shape and, for ``upper_bound``, labels).
      mesh: default :func:`nri_modular.distributed.make_mesh` of ``config.model_axis_size``.

    Returns:
      ``(setup, state)``: the :class:`nri_modular.train.Setup` and the fresh ``TrainState``.
    """
    from nri_modular import distributed, train

    _check_arm(arm, config)
    if train_split.num_tasks != config.num_train:
        raise ValueError(
            f"the training split has {train_split.num_tasks} tasks, num_train is {config.num_train}"
        )
    if mesh is None:
        mesh = distributed.make_mesh(config.model_axis_size)
    arm_config = config if arm == "bouncegrad" else dataclasses.replace(config, sa_steps=0)
    sample = np.zeros((1, *train_split.states.shape[1:]), np.float32)
    setup = train.build(arm_config, mesh, sample)
    state = setup.init_fn()
    if arm == "upper_bound":
        labels = label_structures(np.asarray(train_split.labels), np.arange(config.num_modules))
        state = state.replace(structures=jax.device_put(labels, state.structures.sharding))
    return setup, state


def run_arm(
    arm: str,
    config,
    data,
    budget: Budget,
    curve_valid: int,
    write,
    workdir: str,
    curve_search: bool = True,
) -> dict:
    """Trains one arm within ``budget``, writing a curve point every ``eval_every_seconds``.

    Args:
      arm: ``"upper_bound"`` (true relations, no search) or ``"bouncegrad"``.
      data: the loaded :class:`nri_modular.Dataset` (train and valid splits used).
      write: called with each curve row (a dict).
      workdir: the final parameters go to ``<workdir>/model_<arm>``
        (:func:`nri_modular.checkpoints.save_model`, replacing an earlier run's).

    Returns:
      The final curve row (all valid tasks scored).
    """
    import nri_modular as nm
    from nri_modular import checkpoints, distributed
    from nri_modular.data import batching

    _check_arm(arm, config)
    train_split, valid = data.train, data.valid
    setup, state = arm_setup(arm, config, train_split)
    mesh, bank, step_fn = setup.mesh, setup.bank, setup.step_fn
    states_np, labels_np = np.asarray(train_split.states), np.asarray(train_split.labels)
    steps_per_epoch = config.num_train // config.batch_size
    key = jax.random.PRNGKey(config.seed + 1)
    trained, losses, step, next_eval = 0.0, [], 0, budget.eval_every_seconds

    def point(final: bool) -> dict:
        structures = distributed.to_host(state.structures)
        mapping = nm.module_mapping(
            structures, labels_np, config.num_modules, data.relations.num_types
        )
        count = valid.num_tasks if final else min(curve_valid, valid.num_tasks)
        params = jax.device_get(state.params)  # host copy: scoring runs on one device
        scores = score_valid(
            config, bank, params, valid, mapping, key, count, final or curve_search
        )
        out = {
            "arm": arm,
            "final": final,
            "step": step,
            "tasks_seen": step * config.batch_size,
            "epoch": step / steps_per_epoch,
            "train_seconds": trained,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "train_edge_accuracy": nm.edge_accuracy(structures, labels_np, mapping),
            "load1": load_average(),
            **scores,
        }
        write(out)
        return out

    while step < budget.total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = batching.task_batches(
            config.num_train, config.batch_size, config.seed, epoch, shards=config.task_shards
        )
        for ids in order[offset:]:
            t0 = time.time()
            batching.check_block_local(ids, config.num_train, config.task_shards)
            (task_ids,) = distributed.put_batch(mesh, (ids,))
            batch_states, batch_labels = distributed.put_batch(
                mesh, (states_np, labels_np), rows=ids
            )
            batch = nm.Batch(task_ids=task_ids, states=batch_states, labels=batch_labels)
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))  # blocks: the clock measures the step
            trained += time.time() - t0
            step += 1
            if step % config.log_every == 0:
                logging.info(
                    "%s step %d/%d | loss %.3e | %.0f s training | load %.1f",
                    arm,
                    step,
                    budget.total_steps,
                    np.mean(losses[-config.log_every :]),
                    trained,
                    load_average(),
                )
            out_of_time = budget.max_seconds and trained >= budget.max_seconds
            if step >= budget.total_steps or out_of_time:
                break
            if trained >= next_eval:
                point(final=False)
                losses, next_eval = [], trained + budget.eval_every_seconds
        if budget.max_seconds and trained >= budget.max_seconds:
            break
    final = point(final=True)
    meta = {"arm": arm, "step": step, "config": checkpoints.config_json(config)}
    checkpoints.save_model(
        os.path.join(workdir, f"model_{arm}"), jax.device_get(state.params), meta, overwrite=True
    )
    return final


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import nri_modular as nm

    logging.set_verbosity(logging.INFO)
    f = flags.FLAGS
    config = config_lib.config_from_flags(f)
    workdir = f.workdir or f"runs/upper_bound_{config.system}"
    os.makedirs(workdir, exist_ok=True)
    data_train = f.data_num_train or config.num_train
    data_valid = f.data_num_valid or config.num_valid
    if data_train < config.num_train or data_valid < config.num_valid:
        raise ValueError(
            f"data_num_train/valid ({data_train}, {data_valid}) must be >= num_train/valid "
            f"({config.num_train}, {config.num_valid})"
        )
    if config.num_valid <= 0:
        raise ValueError("the diagnostic scores the valid split: --num_valid must be positive")
    data = nm.ensure_dataset(
        config.data_dir,
        config.system,
        data_train,
        data_valid,
        config.num_test,
        seed=config.data_seed,
        num_particles=config.num_particles,
        train_rows=np.arange(config.num_train) if data_train > config.num_train else None,
    )
    train_split, valid = data.train, data.valid
    if data_train > config.num_train:  # the first num_train tasks, as a plain array
        train_split = nm.Split(
            np.asarray(train_split.states.data), train_split.labels[: config.num_train]
        )
    if data_valid > config.num_valid:
        valid = nm.Split(valid.states[: config.num_valid], valid.labels[: config.num_valid])
    data = nm.Dataset(
        data.system, data.num_particles, data.normalization, {"train": train_split, "valid": valid}
    )
    budget = Budget(
        total_steps=config.num_epochs * (config.num_train // config.batch_size),
        max_seconds=f.max_seconds,
        eval_every_seconds=f.eval_every_seconds,
    )
    curve_path = os.path.join(workdir, "curve.jsonl")
    rows = []

    def write(row):
        rows.append(row)
        with open(curve_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        logging.info(
            "%s step %d (%.0f s): valid acc %.4f (exact init %.4f) | mse1 true %.3e | loss %.3e",
            row["arm"],
            row["step"],
            row["train_seconds"],
            row["valid_edge_accuracy"],
            row["valid_exact_init_accuracy"],
            row["valid_mse1_true_graph"],
            row["loss"],
        )

    finals = {
        arm: run_arm(arm, config, data, budget, f.curve_valid, write, workdir, f.curve_search)
        for arm in f.arm
    }
    title = (
        f"{config.system}: {config.num_train} training tasks, widths {config.edge_hidden}, "
        f"batch {config.batch_size}, lr {config.learning_rate:g}"
        + (f" -> {config.final_learning_rate:g}" if config.final_learning_rate else "")
        + f", p {config.p}; {config.num_valid} valid tasks"
    )
    try:
        plots.upper_bound_curves(rows, os.path.join(workdir, "curve.png"), title)
    except ImportError as e:
        logging.warning("no curve.png: %s", e)
    print(f"{config.system}, {config.num_train} training tasks, {config.num_valid} valid tasks")
    print("| arm | steps | train s | valid edge acc | exact-init acc | valid MSE-1 true graph |")
    print("|---|---|---|---|---|---|")
    for arm, r in finals.items():
        print(
            f"| {arm} | {r['step']} | {r['train_seconds']:.0f} | "
            f"{100 * r['valid_edge_accuracy']:.2f}% | {100 * r['valid_exact_init_accuracy']:.2f}% "
            f"| {r['valid_mse1_true_graph']:.3e} |"
        )


if __name__ == "__main__":
    app.run(main)
