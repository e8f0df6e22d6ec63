"""The work of ``benchmarks/structure_search.py`` (which owns the flags, ``main`` and tables).

* the models searched with: a finished BounceGrad run's (:func:`load_run`, read with
  :func:`nri_modular.evaluate_saved.run_config` and rebuilt with
  :func:`nri_modular.train.build`), or modules + proposal trained on the true relations
  (:func:`train_or_load`, cached);
* the timed searches (a)-(d) (:func:`run_loop`, :func:`run_batched`), each with meta-test's
  search settings of the searched model's run (:func:`method_settings`, from
  :func:`nri_modular.evaluate.search_config`): the run's energy (its training loss: MSE or
  Huber), ``p``, edge layout, and meta-test's exact stride; exact scores come from
  :func:`nri_modular.evaluate.exact_scores`, the move and the start from meta-test's own
  (:func:`nri_modular.structure_priors.make_search_move`,
  :func:`nri_modular.structure_priors.search_initial_structure`);
* meta-training in each regime (:func:`meta_train`): the run's own state and step, built by
  :func:`nri_modular.train.build` from the run's config (loss, step-size schedule,
  stride, initial temperature, structure priors, ...).

No flags are defined here, so tests import this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app

from nri_modular import (
    annealing,
    bouncegrad,
    checkpoints,
    distributed,
    evaluate,
    evaluate_saved,
    loading,
    proposal_net,
    structure_priors,
)
from nri_modular import config as config_lib
from nri_modular import metrics as metrics_lib
from nri_modular import structure as structure_lib
from nri_modular import train as train_lib
from nri_modular.baselines import true_edges
from nri_modular.data import Split, task_batches
from nri_modular.modules import ModuleBank

NUM_TYPES = 2  # Relation types of both systems (spring / none; attract / repel).
METHODS = ("a", "b", "c", "d")
DESCRIPTIONS = {
    "a": "2018: per-task loop, uniform",
    "b": "batched uniform SA",
    "c": "batched + learned blocked Gibbs",
    "d": "batched + exact local moves",
}
MOVES = {"a": "uniform", "b": "uniform", "c": "blocked_gibbs", "d": "exact_local"}
# The benchmark's own meta-test settings (its flags), laid over the searched run's config;
# every other setting of the search (loss, p, edge layout, ...) is the run's.
SEARCH_FIELDS = ("seed", "test_sa_steps", "test_t_start", "test_t_end", "test_batch_size")


def _sync(tree):
    return jax.block_until_ready(tree)


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


# ----------------------------------------------------------------------------------------
# The modules and proposal searched with: a meta-training run's, or trained on true edges.


@dataclasses.dataclass
class Trained:
    """Modules + learned proposal, and how they were obtained.

    Attributes:
      config: the searched model's config: its run's (loss, ``p``, sizes, ...), with the
        benchmark's :data:`SEARCH_FIELDS`; every method searches with
        :func:`method_settings` of it.
      mapping: int ``[num_modules]`` module -> relation type used to score edges (chosen on
        the run's training structures; the identity for ``--supervised``).
      source: ``"meta-learned"`` (a BounceGrad run, no labels) or ``"supervised"``.
      cache_path: the run's folder, or the supervised model's cache folder.
      train_accuracy: edge accuracy of the run's training structures under ``mapping``
        (``None`` for supervised models).
    """

    bank: ModuleBank
    params: object
    proposal_params: object
    proposal_apply: object
    train_seconds: float
    cache_path: str
    from_cache: bool
    mapping: np.ndarray
    config: config_lib.Config
    source: str = "supervised"
    train_accuracy: float | None = None


def searched_config(run_config: config_lib.Config, bench: config_lib.Config):
    """The run's config with the benchmark's meta-test settings (:data:`SEARCH_FIELDS`)."""
    return dataclasses.replace(run_config, **{f: getattr(bench, f) for f in SEARCH_FIELDS})


def load_run(system: str, workdir: str, data_dir: str | None, make: str, bench=None):
    """Modules, proposal and module -> relation map of a finished BounceGrad run.

    The run's config is read with :func:`nri_modular.evaluate_saved.run_config` (its
    ``run.json``, or an older run's ``config.json``), the model rebuilt from it with
    :func:`nri_modular.train.build` and its last checkpoint restored; the map is chosen on
    the run's training structures.

    Args:
      data_dir: where the run's dataset is (``None``: the run's own ``data_dir``).
      make: the command that makes the right run (named by every error).
      bench: the benchmark's config, whose :data:`SEARCH_FIELDS` the searches use (``None``:
        the run's own).

    Returns:
      ``(trained, data, run_config)``; ``trained.config`` is :func:`searched_config`.

    Raises:
      app.UsageError: no run, an unfinished run, another system's, one without a learned
        proposal, or one with structure priors (each names the command that makes the
        right one).
    """
    try:
        run_config, _ = evaluate_saved.run_config(workdir)
    except FileNotFoundError as e:
        raise app.UsageError(
            f"no meta-training run in {workdir!r} to take the {system} modules and learned "
            f"proposal from ({e}); make it (BounceGrad, no labels; minutes on a CPU; it is "
            f"searched with its own loss as the energy, as meta-test does) with\n  {make}\n"
            f"or pass --workdir / --{system}_workdir, or --supervised (trained on true "
            "relations)"
        ) from e
    if run_config.system != system:
        raise app.UsageError(f"{workdir!r} holds a {run_config.system} run, not {system}")
    if not run_config.uses_proposal_network:
        raise app.UsageError(
            f"the run in {workdir!r} has no learned proposal (proposal={run_config.proposal!r}, "
            f"test_proposal={run_config.test_proposal!r}); method (c) needs one: make it with\n"
            f"  {make}"
        )
    if run_config.symmetric_structure or run_config.node_types:
        raise app.UsageError(
            f"the run in {workdir!r} has structure priors (symmetric_structure="
            f"{run_config.symmetric_structure}, node_types={run_config.node_types}); this "
            f"benchmark's searches have none: make a run without them with\n  {make}"
        )
    if data_dir is not None:
        run_config = dataclasses.replace(run_config, data_dir=data_dir)
    data = loading.load_data(run_config)
    mesh = distributed.make_mesh(run_config.model_axis_size)
    setup = train_lib.build(
        run_config, mesh, np.zeros((1, *data.train.states.shape[1:]), np.float32)
    )
    manager = checkpoints.checkpoint_manager(workdir, run_config.keep_checkpoints)
    latest = manager.latest_step()
    total = run_config.num_epochs * (run_config.num_train // run_config.batch_size)
    if latest != total:
        raise app.UsageError(
            f"the run in {workdir!r} is not finished (last checkpoint: step {latest} of "
            f"{total}); rerun its command to resume it:\n  {make}"
        )
    start = time.perf_counter()
    state = checkpoints.restore_checkpoint(manager, latest, setup.abstract_state)
    structures = distributed.to_host(state.structures)
    mapping = metrics_lib.module_mapping(
        structures, data.train.labels, run_config.num_modules, NUM_TYPES
    )
    trained = Trained(
        bank=setup.bank,
        params=state.params,
        proposal_params=state.proposal_params,
        proposal_apply=setup.proposal_apply,
        train_seconds=0.0,
        cache_path=os.path.abspath(workdir),
        from_cache=True,
        mapping=mapping,
        config=searched_config(run_config, run_config if bench is None else bench),
        source="meta-learned",
        train_accuracy=metrics_lib.edge_accuracy(structures, data.train.labels, mapping),
    )
    print(
        f"[{system}] modules + proposal of the BounceGrad run {workdir} (training "
        f"proposal={run_config.proposal!r}, loss={run_config.loss!r}, proposal network trained "
        f"in the step on the annealed structures; step {latest}; restored in "
        f"{time.perf_counter() - start:.1f} s); module->relation map {mapping.tolist()} from "
        f"its training structures ({100 * trained.train_accuracy:.2f}% right)",
        flush=True,
    )
    return trained, data, run_config


def _train_steps(config: config_lib.Config) -> int:
    return config.num_epochs * (config.num_train // config.batch_size)


# Config fields the true-edges trainer reads that are off by default: in the cache key only
# when set, so the cache folders of models trained before they were read keep their names.
_KEYED_WHEN_SET = ("final_learning_rate", "module_init_spread")


def model_meta(system: str, config: config_lib.Config) -> dict:
    """What the cached modules + proposal were trained with (their cache key)."""
    set_fields = {k: getattr(config, k) for k in _KEYED_WHEN_SET if getattr(config, k)}
    return {
        "system": system,
        "num_particles": config.num_particles,
        "num_modules": config.num_modules,
        "edge_hidden": list(config.edge_hidden),
        "node_hidden": list(config.node_hidden),
        "proposal_hidden": config.proposal_hidden,
        "train_steps": _train_steps(config),
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "proposal_learning_rate": config.proposal_learning_rate,
        "p": config.p,
        "seed": config.seed,
        "obs_frames": config.obs_frames,
        "num_train": config.num_train,
        "data_seed": config.data_seed,
        **set_fields,
    }


def cache_path(cache_dir: str, meta: dict) -> str:
    """``<cache_dir>/<system>_<hash of the settings>`` (a checkpoints.save_model folder)."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{meta['system']}_{digest}")


def train_or_load(
    system: str,
    train: Split,
    config: config_lib.Config,
    cache_dir: str,
    log: Callable[[str], None] = print,
) -> Trained:
    """Modules and proposal trained on the true training structures (or the cached ones).

    Module ``k`` is trained on relation type ``k`` (the map is the identity) by the one
    true-edges trainer with every setting from ``config``
    (:func:`nri_modular.baselines.true_edges.train_true_edges_from_config`: bank, step-size
    schedule, edge layout), except the loss: always the squared error (``--supervised``
    models are MSE models), so they are searched with the MSE energy
    (``trained.config.loss == "mse"``).
    """
    config = dataclasses.replace(config, loss="mse")
    n = train.num_particles
    if train.num_frames != config.obs_frames:
        raise ValueError(
            f"the proposal network reads obs_frames={config.obs_frames} frames but the "
            f"training trajectories have {train.num_frames}"
        )
    bank = config_lib.build_bank(config)
    init_fn, apply_fn = proposal_net.make_proposal_network(
        config.num_modules, n, config.proposal_hidden
    )
    key = jax.random.PRNGKey(config.seed)
    example = jnp.asarray(train.states[:1, : config.obs_frames])
    proposal_init = init_fn(jax.random.fold_in(key, 1), example)
    meta = model_meta(system, config)
    path = cache_path(cache_dir, meta)
    identity = np.arange(config.num_modules)
    if os.path.exists(path):
        template = {
            "params": jax.eval_shape(bank.init, key),
            "proposal_params": proposal_init,
        }
        restored, saved = checkpoints.load_model(path, target=template)
        if saved != meta:
            raise ValueError(f"{path} holds a model trained with {saved}, not {meta}")
        log(f"[{system}] loaded supervised modules + proposal from {path}")
        return Trained(
            bank,
            restored["params"],
            restored["proposal_params"],
            apply_fn,
            0.0,
            path,
            True,
            identity,
            config,
        )

    log(f"[{system}] training modules + proposal on the true structures: {path}")
    start = time.perf_counter()
    params, proposal_params = true_edges.train_true_edges_from_config(
        config,
        train,
        num_steps=_train_steps(config),
        proposal=true_edges.ProposalTraining(
            apply_fn, proposal_init, optax.adam(config.proposal_learning_rate)
        ),
        log=lambda line: log(f"[{system}] {line}"),
        log_every=200,
    )
    train_seconds = time.perf_counter() - start
    checkpoints.save_model(
        path,
        jax.device_get({"params": params, "proposal_params": proposal_params}),
        meta,
    )
    return Trained(
        bank, params, proposal_params, apply_fn, train_seconds, path, False, identity, config
    )


# ----------------------------------------------------------------------------------------
# Search settings: meta-test's, per method.


def method_settings(
    method: str, config: config_lib.Config, gibbs_mix: float, exact_mix: float
) -> evaluate.SearchConfig:
    """The search settings of method ``method`` on a model of run ``config``.

    Meta-test's (:func:`nri_modular.evaluate.search_config`: the run's energy, i.e. its
    training loss's penalty ``huber_delta``, ``p``, edge layout, meta-test's
    ``exact_stride``, steps and temperatures) with the method's move (:data:`MOVES`) and
    uniform-move probability (``gibbs_mix`` for (c), ``exact_mix`` for (d), else 0), and
    ``groups=1``: the benchmark searches on one device, method (a) one task at a time (the
    same values: groups only lay the computation out).
    """
    mix = {"c": gibbs_mix, "d": exact_mix}.get(method, 0.0)
    return dataclasses.replace(
        evaluate.search_config(config), proposal=MOVES[method], uniform_mix=mix, groups=1
    )


def energy_name(settings: evaluate.SearchConfig) -> str:
    """``"MSE"`` or ``"Huber delta=<d>"``: the penalty of the search's energy."""
    return "MSE" if settings.huber_delta is None else f"Huber delta={settings.huber_delta:g}"


def settings_note(settings: evaluate.SearchConfig) -> str:
    """What a method searched with: its energy and, for exact moves, the scores' stride."""
    note = f"{settings.p}-step rollout {energy_name(settings)}"
    if settings.proposal in structure_lib.EXACT_KINDS:
        note += f"; exact one-step {energy_name(settings)} scores at stride {settings.exact_stride}"
    return note


def temperatures(settings: evaluate.SearchConfig) -> jax.Array:
    return annealing.geometric_temperatures(settings.t_start, settings.t_end, settings.num_steps)


def make_search_fns(bank: ModuleBank, proposal_apply, settings: evaluate.SearchConfig, n: int):
    """Search functions of one method's ``settings`` (:func:`method_settings`).

    ``init(params, pparams, states, key) -> (structure, key, aux)`` (initial structures),
    ``start(params, states, structure, key) -> AnnealState`` (their energies),
    ``chunk(params, states, state, aux, temps) -> AnnealState`` (annealing steps) and
    ``one_step(params, states, state, temperature) -> AnnealState`` (one step).
    """
    kind = settings.proposal
    prior = (settings.symmetric_structure, settings.node_types)
    proposal_fn = structure_priors.make_search_move(
        kind, bank.num_modules, n, settings.uniform_mix, *prior
    )

    def init(params, pparams, states, key):
        """Initial structures (no energy yet: see :func:`run_batched`)."""
        k_init, k_anneal = jax.random.split(key)
        aux, aux_kind = None, None
        if kind in structure_lib.EXACT_KINDS:
            aux, aux_kind = evaluate.exact_scores(bank, params, states, settings)[0], "scores"
        elif kind == "blocked_gibbs":
            aux, aux_kind = proposal_apply(pparams, states), "logits"
        energy_fn = evaluate.search_energy(bank, params, states, settings)
        s = structure_priors.search_initial_structure(
            k_init, energy_fn, aux, aux_kind, states.shape[0], n, bank.num_modules, *prior
        )
        return s, k_anneal, aux

    def start(params, states, s, k_anneal):
        """The annealing state of initial structures ``s``: their energies evaluated."""
        energy = evaluate.search_energy(bank, params, states, settings)(s)
        return annealing.AnnealState(s, energy, k_anneal, jnp.float32(settings.t_start))

    def chunk(params, states, state, aux, temps):
        state, _ = annealing.anneal(
            state, evaluate.search_energy(bank, params, states, settings), proposal_fn, temps, aux
        )
        return state

    def one_step(params, states, state, temperature):
        state, _ = annealing.anneal_step(
            state.replace(temperature=temperature),
            evaluate.search_energy(bank, params, states, settings),
            proposal_fn,
            None,
        )
        return state

    return init, start, chunk, one_step


# ----------------------------------------------------------------------------------------
# Timed searches.


@dataclasses.dataclass
class Curve:
    """Accuracy (and mean energy) after step ``steps[i]`` reached at ``seconds[i]``.

    Compilation excluded; ``energy[i]`` is the mean over tasks of the annealing energy (the
    ``p``-step rollout penalty of the run's loss) of the structures after step ``steps[i]``,
    ``loop_energy[i]`` the same over only the tasks method (a) runs (the first
    ``--loop_tasks``), which is what is compared with (a)'s.
    """

    steps: list
    seconds: list
    accuracy: list
    energy: list
    loop_energy: list
    compile_seconds: float
    note: str = ""

    @property
    def final(self) -> float:
        return self.accuracy[-1]

    def seconds_to(self, level: float):
        for s, a in zip(self.seconds, self.accuracy, strict=True):
            if a >= level:
                return s
        return None

    def steps_to(self, level: float):
        for s, a in zip(self.steps, self.accuracy, strict=True):
            if a >= level:
                return s
        return None

    def seconds_to_energy(self, level: float):
        """Seconds until the mean energy on (a)'s tasks is at most ``level`` (or ``None``)."""
        for s, e in zip(self.seconds, self.loop_energy, strict=True):
            if e <= level:
                return s
        return None


def _accuracy(structures, labels: np.ndarray, mapping: np.ndarray) -> float:
    """Edge accuracy of ``structures [N, E]`` under the module -> relation ``mapping``."""
    return metrics_lib.edge_accuracy(np.asarray(structures), labels, mapping)


def _search_key(seed: int, method: str) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), 1000 + ord(method))


def run_batched(
    trained: Trained,
    method: str,
    settings: evaluate.SearchConfig,
    states,
    labels,
    chunk: int,
    loop_tasks: int,
) -> Curve:
    """Methods (b), (c), (d): all tasks' chains advance chunk by chunk.

    ``settings``: the method's (:func:`method_settings`); ``loop_tasks``: how many leading
    tasks method (a) runs (for ``Curve.loop_energy``).
    """
    n = states.shape[2]
    init, start_fn, chunk_fn, _ = make_search_fns(trained.bank, trained.proposal_apply, settings, n)
    temps = temperatures(settings)
    bsz = min(settings.batch_size, states.shape[0])
    if states.shape[0] % bsz:
        raise ValueError(f"num_tasks {states.shape[0]} must be a multiple of test_batch_size {bsz}")
    batches = [jnp.asarray(states[i : i + bsz]) for i in range(0, states.shape[0], bsz)]
    c = chunk
    pparams = trained.proposal_params if settings.proposal == "blocked_gibbs" else None
    key = _search_key(trained.config.seed, method)
    keys = [jax.random.fold_in(key, i) for i in range(len(batches))]
    init_c, t_init = _compile(init, trained.params, pparams, batches[0], keys[0])
    s0, k0, aux0 = init_c(trained.params, pparams, batches[0], keys[0])
    start_c, t_start = _compile(start_fn, trained.params, batches[0], s0, k0)
    st0 = start_c(trained.params, batches[0], s0, k0)
    chunk_c, t_chunk = _compile(chunk_fn, trained.params, batches[0], st0, aux0, temps[:c])
    _sync(st0)

    # Step 0 is the initial structures (random, the proposal's argmax, or the exact one-step
    # optimum); evaluating their energies, which annealing needs, is charged to chunk 1.
    t0 = time.perf_counter()
    inits = [init_c(trained.params, pparams, b, k) for b, k in zip(batches, keys, strict=True)]
    structures = _sync([s for s, _, _ in inits])
    seconds, steps = [time.perf_counter() - t0], [0]
    accuracy = [_accuracy(np.concatenate(structures), labels, trained.mapping)]
    carry = [
        (start_c(trained.params, b, s, k), aux)
        for b, (s, k, aux) in zip(batches, inits, strict=True)
    ]
    energies = [[st.energy for st, _ in carry]]  # device arrays, fetched after the clock
    for i in range(len(temps) // c):
        carry = [
            (chunk_c(trained.params, b, st, aux, temps[i * c : (i + 1) * c]), aux)
            for b, (st, aux) in zip(batches, carry, strict=True)
        ]
        structures = _sync([st.structure for st, _ in carry])
        seconds.append(time.perf_counter() - t0)
        steps.append((i + 1) * c)
        accuracy.append(_accuracy(np.concatenate(structures), labels, trained.mapping))
        energies.append([st.energy for st, _ in carry])
    per_task = [np.concatenate(jax.device_get(e)) for e in energies]  # [tasks] per checkpoint
    energy = [float(e.mean()) for e in per_task]
    loop_energy = [float(e[:loop_tasks].mean()) for e in per_task]
    return Curve(steps, seconds, accuracy, energy, loop_energy, t_init + t_start + t_chunk)


def run_loop(
    trained: Trained,
    settings: evaluate.SearchConfig,
    states,
    labels,
    num_total: int,
    chunk: int,
) -> Curve:
    """Method (a): one task at a time, a Python loop of jitted one-task SA steps.

    ``settings``: method (a)'s (:func:`method_settings`). Its ``loop_energy`` is its
    ``energy`` (both over the tasks it runs).

    Accuracy is measured on ``len(states)`` tasks; seconds are extrapolated linearly to
    ``num_total`` tasks (per-task init time + per-step time, both measured).
    """
    n = states.shape[2]
    init, start_fn, _, one_step = make_search_fns(trained.bank, None, settings, n)
    temps = temperatures(settings)
    tasks = [jnp.asarray(states[i : i + 1]) for i in range(states.shape[0])]
    key = _search_key(trained.config.seed, "a")

    def init_and_start(params, states, key):
        s, k, _ = init(params, None, states, key)
        return start_fn(params, states, s, k)

    init_c, t_init = _compile(init_and_start, trained.params, tasks[0], key)
    st0 = init_c(trained.params, tasks[0], key)
    step_c, t_step = _compile(one_step, trained.params, tasks[0], st0, temps[0])
    temps_host = [temps[i] for i in range(len(temps))]  # device scalars, made once
    _sync(temps_host)
    c = chunk
    snapshots, energies = [], []  # per task: structures (energies) after step 0, c, 2c, ...
    init_time = step_time = 0.0
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        st = init_c(trained.params, task, jax.random.fold_in(key, i))
        _sync(st)
        t1 = time.perf_counter()
        snaps, snap_energies = [st.structure], [st.energy]
        for s in range(len(temps)):
            st = step_c(trained.params, task, st, temps_host[s])
            if (s + 1) % c == 0:
                snaps.append(st.structure)
                snap_energies.append(st.energy)
        _sync(st)
        t2 = time.perf_counter()
        init_time += t1 - t0
        step_time += t2 - t1
        snapshots.append(np.concatenate(jax.device_get(snaps)))  # [checkpoints, E]
        energies.append(np.concatenate(jax.device_get(snap_energies)))  # [checkpoints]
    m = len(tasks)
    per_init, per_step = init_time / m, step_time / (m * len(temps))
    stacked = np.stack(snapshots, axis=1)  # [checkpoints, tasks, E]
    steps = [j * c for j in range(stacked.shape[0])]
    accuracy = [_accuracy(stacked[j], labels, trained.mapping) for j in range(stacked.shape[0])]
    energy = [float(v) for v in np.stack(energies, axis=1).mean(axis=1)]
    seconds = [num_total * (per_init + s * per_step) for s in steps]
    note = (
        f"measured on {m} tasks ({per_init * 1e3:.2f} ms init + {per_step * 1e3:.3f} ms/step "
        f"per task), seconds extrapolated linearly to {num_total} tasks"
    )
    return Curve(steps, seconds, accuracy, energy, energy, t_init + t_step, note)


# ----------------------------------------------------------------------------------------
# Meta-training in each regime: uniform moves, learned blocked Gibbs, exact sweeps.

REGIMES = {
    "uniform": "uniform single-edge moves (the paper's SA)",
    "blocked_gibbs": "learned blocked-Gibbs proposal, trained in the step (the paper's)",
    "exact_sweep": "exact sweeps (+ proposal trained in the step)",
}


def meta_train_config(regime: str, config: config_lib.Config) -> config_lib.Config:
    """The springs run of one regime: ``config`` with the regime's training move.

    Blocked Gibbs and exact sweeps train the proposal network in the step
    (``test_proposal="blocked_gibbs"`` makes :func:`nri_modular.train.build` build it) with
    ``config.uniform_mix`` uniform moves; uniform moves train no network (mix 0).
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {list(REGIMES)}")
    on = regime != "uniform"
    return dataclasses.replace(
        config,
        system="springs",
        proposal=regime,
        uniform_mix=config.uniform_mix if on else 0.0,
        test_proposal="blocked_gibbs" if on else "uniform",
    )


def meta_train_setup(regime: str, config: config_lib.Config, sample_states: np.ndarray):
    """``(run_config, setup)``: the regime's run (:func:`meta_train_config`) and its state
    initialiser and step, built by the trainer itself (:func:`nri_modular.train.build`:
    the run's loss, step-size schedule, exact stride, initial temperature, priors, ...).

    Args:
      sample_states: ``[1, T, n, 4]`` (shape only).
    """
    run = meta_train_config(regime, config)
    return run, train_lib.build(run, distributed.make_mesh(run.model_axis_size), sample_states)


def training_note(run: config_lib.Config) -> str:
    """What a regime's run trained with: loss, step size, exact stride, temperature."""
    delta = bouncegrad.loss_delta(run.loss, run.huber_delta)
    note = "MSE" if delta is None else f"Huber delta={delta:g}"
    note += f", Adam {run.learning_rate:g}"
    if run.final_learning_rate:
        note += f" cosine to {run.final_learning_rate:g}"
    if run.proposal in structure_lib.EXACT_KINDS:
        note += f", exact stride {run.exact_stride}"
    note += f", initial temperature {run.initial_temperature:.3g}"
    if run.symmetric_structure:
        note += ", symmetric structures"
    if run.node_types:
        note += f", {run.node_types} node types"
    return note


def meta_train(
    regime: str,
    train: Split,
    config: config_lib.Config,
    num_steps: int,
    eval_every: int,
    stop_at_99: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """One regime: seconds to 99% training-structure accuracy.

    A timing harness of the run's compiled BounceGrad step (:func:`meta_train_setup`;
    compile excluded, accuracy of the training structures checked every ``eval_every``
    steps), not a training run (no checkpoints, no meta-test).
    """
    run, setup = meta_train_setup(regime, config, train.states[:1])
    if run.uses_proposal_network and train.num_frames != run.obs_frames:
        raise ValueError(
            f"the proposal network reads obs_frames={run.obs_frames} frames but the "
            f"training trajectories have {train.num_frames}"
        )
    if train.num_tasks != run.num_train:
        raise ValueError(f"{train.num_tasks} training tasks, the run's num_train {run.num_train}")
    bsz = run.batch_size
    per_epoch = train.num_tasks // bsz

    def batch_at(i):
        epoch, offset = divmod(i, per_epoch)
        order = task_batches(train.num_tasks, bsz, run.seed, epoch, shards=run.task_shards)
        ids = order[offset]
        (task_ids,) = distributed.put_batch(setup.mesh, (ids,))
        states, labels = distributed.put_batch(setup.mesh, (train.states, train.labels), rows=ids)
        return bouncegrad.Batch(task_ids, states, labels)

    state = setup.init_fn()
    start = time.perf_counter()
    step_c = setup.step_fn.lower(state, batch_at(0)).compile()
    compile_s = time.perf_counter() - start
    labels = np.asarray(train.labels)
    start, elapsed, t99, s99, history = time.perf_counter(), 0.0, None, None, []
    for i in range(num_steps):
        state, _ = step_c(state, batch_at(i))
        if (i + 1) % eval_every == 0:
            _sync(state.structures)
            elapsed += time.perf_counter() - start
            structures = distributed.to_host(state.structures)
            mapping = metrics_lib.module_mapping(structures, labels, run.num_modules, NUM_TYPES)
            acc = float(metrics_lib.edge_accuracy(structures, labels, mapping))
            history.append((i + 1, elapsed, acc))
            if t99 is None and acc >= 0.99:
                t99, s99 = elapsed, i + 1
            log(f"[meta-train {regime}] step {i + 1} {elapsed:.0f} s train-structure acc {acc:.4f}")
            if t99 is not None and stop_at_99:
                break
            start = time.perf_counter()
    return {
        "regime": REGIMES[regime],
        "trained_with": training_note(run),
        "loss": run.loss,
        "huber_delta": bouncegrad.loss_delta(run.loss, run.huber_delta),
        "exact_stride": run.exact_stride if run.proposal in structure_lib.EXACT_KINDS else None,
        "seconds_to_99_train_accuracy": t99,
        "steps_to_99_train_accuracy": s99,
        "final_train_accuracy": history[-1][2] if history else None,
        "steps_run": history[-1][0] if history else 0,
        "seconds_per_step": history[-1][1] / history[-1][0] if history else None,
        "compile_seconds": compile_s,
        "history": history,
    }
