r"""Meta-test structure search: the 2018 loop vs batched SA vs learned / exact blocked moves.

  python benchmarks/structure_search.py --quick --out=runs/structure_search_quick.json
  python benchmarks/structure_search.py --out=runs/structure_search.json   # 1,000 tasks each

With the same trained modules (trained once on the TRUE training structures by
:func:`nri_modular.baselines.true_edges.train_true_edges`, the proposal network trained in
the same compiled step with those structures as targets; both saved with
:func:`nri_modular.checkpoints.save_model` under ``--cache_dir`` and reused) and the same
test tasks (first ``--obs_frames`` frames observed), it measures for each method the wall
time to reach 99% of its own final edge accuracy, and the final accuracy:

  (a) the 2018 way: one task at a time, uniform single-edge proposals, a Python loop over
      tasks and steps calling a jitted one-task SA step. Run on ``--loop_tasks`` tasks;
      its time is extrapolated linearly to all tasks (printed as such);
  (b) batched uniform SA: all tasks' chains advance together in one ``lax.scan``;
  (c) batched, initialised from the learned proposal's argmax, then blocked-Gibbs moves
      from the proposal mixed with uniform moves (``--gibbs_uniform_mix``);
  (d) batched, initialised from the exact one-step optimum, then exact local blocked
      moves mixed with uniform moves (``--exact_uniform_mix``).

Every method runs ``--test_sa_steps`` steps with the same geometric temperature schedule
(``--test_t_start`` to ``--test_t_end``), in
chunks of ``--chunk`` steps; accuracy is recorded after initialisation (step 0: the
initial structures, random / the proposal's argmax / the exact one-step optimum) and after
every chunk, with a timestamp taken after ``block_until_ready``. Evaluating the initial
structures' energies (which annealing needs, the structures do not) is charged to the
first chunk of (b)-(d) and to each task's initialisation in (a). Compilation is done ahead
of time (``jit(...).lower(...).compile()``), reported separately and excluded. Edge
accuracy uses the identity module->type map: the modules were trained with module k on
relation type k. Besides each method's own 99% time, ``seconds_to_a_level`` is its time
to reach 99% of (a)'s final accuracy ("to the same accuracy").

``--meta_train_compare`` additionally meta-trains from scratch on springs twice (same seed,
same step budget ``--meta_train_steps``, ``--sa_steps`` annealing steps per task visit),
proposal off (uniform SA) vs on (blocked Gibbs mixed with ``--uniform_mix`` uniform moves,
proposal trained in the step), and prints the wall time to reach 99% training-structure
accuracy.

Settings that are :class:`nri_modular.config.Config` fields are its flags (``--num_train``,
``--edge_hidden``, ``--batch_size``, ``--num_epochs``, ``--learning_rate``,
``--test_sa_steps``, ``--test_batch_size``, ...; see ``CONFIG_FLAGS``), with this
benchmark's defaults; the other flags are the benchmark's own. A Config flag it does not
use is an error, and so is an old flag name (e.g. ``--hidden``), naming the new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from nri_modular import annealing, bouncegrad, checkpoints, gnn, proposal_net
from nri_modular import config as config_lib
from nri_modular import metrics as metrics_lib
from nri_modular import structure as structure_lib
from nri_modular.baselines import true_edges
from nri_modular.data import Split, ensure_dataset, task_batches
from nri_modular.modules import ModuleBank

config_lib.define_flags(flags)
FLAGS = flags.FLAGS
# Config fields this benchmark reads, and its defaults where they differ from Config's.
CONFIG_FLAGS = tuple(
    "data_dir num_particles num_train num_valid num_test data_seed num_modules edge_hidden "
    "node_hidden seed batch_size num_epochs learning_rate p sa_steps uniform_mix exact_stride "
    "proposal_hidden proposal_learning_rate test_sa_steps test_t_start test_t_end "
    "test_batch_size obs_frames".split()
)
DEFAULTS = {
    "learning_rate": 2e-3,
    "sa_steps": 5,  # meta-training only (--meta_train_compare)
    "exact_stride": 4,  # (d) scores every 4th observed transition: no accuracy lost
}
# Settings whose default depends on --quick: (full, quick). num_epochs: 75 x 40 = 3,000
# true-edges training steps with the default 2,000 tasks and batches of 50 (quick: 800).
QUICK_DEFAULTS = {"num_epochs": (75, 20), "test_sa_steps": (400, 200)}
for _name, _value in DEFAULTS.items():
    FLAGS.set_default(_name, _value)
for _name, (_full, _quick) in QUICK_DEFAULTS.items():
    FLAGS.set_default(_name, _full)
# Old flags of this benchmark -> the Config flag that replaces them.
RENAMED_FLAGS = {
    "hidden": "--edge_hidden and --node_hidden (comma lists: --hidden=64 is 64,64,64)",
    "train_steps": "--num_epochs (steps = num_epochs * num_train // batch_size)",
    "train_batch": "--batch_size",
    "search_batch": "--test_batch_size",
    "t_start": "--test_t_start",
    "t_end": "--test_t_end",
    "meta_sa_steps": "--sa_steps",
}
# Config flags only meta-training reads: without --meta_train_compare they are an error.
META_TRAIN_ONLY = {
    "sa_steps": "the search's steps are --test_sa_steps (this benchmark's old --sa_steps)",
    "uniform_mix": "the uniform-move probabilities of the searches are --gibbs_uniform_mix "
    "and --exact_uniform_mix",
}
for _old, _new in RENAMED_FLAGS.items():
    flags.DEFINE_string(_old, None, f"Renamed: use {_new}.")

_QUICK = flags.DEFINE_bool("quick", False, "Fewer tasks and steps (minutes on 2 CPU cores).")
_OUT = flags.DEFINE_string("out", None, "Write the results JSON here.")
_SYSTEMS = flags.DEFINE_list("systems", ["springs", "charged"], "Systems to benchmark.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "runs/structure_search_cache", "Trained modules + proposal cache."
)
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Test tasks searched (1000; quick 200).")
_LOOP_TASKS = flags.DEFINE_integer("loop_tasks", None, "Tasks run by method (a) (100; quick 50).")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Steps per timed chunk.")
_GIBBS_MIX = flags.DEFINE_float("gibbs_uniform_mix", 0.1, "Uniform-move probability in (c).")
_EXACT_MIX = flags.DEFINE_float("exact_uniform_mix", 0.5, "Uniform-move probability in (d).")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Only train (or load) and cache the models.")
_META_COMPARE = flags.DEFINE_bool(
    "meta_train_compare", False, "Also time meta-training (springs) with proposal on vs off."
)
_META_STEPS = flags.DEFINE_integer("meta_train_steps", 3000, "Meta-training step budget.")
_META_EVAL_EVERY = flags.DEFINE_integer("meta_eval_every", 50, "Accuracy check interval.")

NUM_TYPES = 2  # Relation types of both systems (spring / none; attract / repel).
METHODS = ("a", "b", "c", "d")
DESCRIPTIONS = {
    "a": "2018: per-task loop, uniform",
    "b": "batched uniform SA",
    "c": "batched + learned blocked Gibbs",
    "d": "batched + exact local moves",
}


def _load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _setting(flag, full, quick):
    if flag.value is not None:
        return flag.value
    return quick if _QUICK.value else full


def benchmark_config() -> config_lib.Config:
    """The :class:`Config` of the parsed flags (``--quick`` defaults applied).

    Raises:
      app.UsageError: an old flag name, or a Config flag this benchmark does not read.
    """
    for old, new in RENAMED_FLAGS.items():
        if FLAGS[old].present:
            raise app.UsageError(f"--{old} was renamed: use {new}")
    unused = [
        f"--{f.name}"
        for f in dataclasses.fields(config_lib.Config)
        if f.name not in CONFIG_FLAGS and FLAGS[f.name].present
    ]
    if FLAGS["workdir"].present:
        unused.append("--workdir (models are cached in --cache_dir)")
    if unused:
        raise app.UsageError(
            f"not read by this benchmark: {', '.join(unused)} (it reads --systems and the "
            f"Config flags {', '.join('--' + n for n in CONFIG_FLAGS)})"
        )
    for name, note in META_TRAIN_ONLY.items():
        if FLAGS[name].present and not _META_COMPARE.value:
            raise app.UsageError(f"--{name} is only read by --meta_train_compare; {note}")
    if _QUICK.value:
        for name, (_, quick) in QUICK_DEFAULTS.items():
            if not FLAGS[name].present:
                FLAGS[name].value = quick
    return config_lib.config_from_flags(FLAGS)


def _sync(tree):
    return jax.block_until_ready(tree)


def _load_data(system: str, config: config_lib.Config):
    return ensure_dataset(
        config.data_dir,
        system,
        num_train=config.num_train,
        num_valid=config.num_valid,
        num_test=config.num_test,
        seed=config.data_seed,
        num_particles=config.num_particles,
    )


# ----------------------------------------------------------------------------------------
# Training once (true structures), cached.


@dataclasses.dataclass
class Trained:
    bank: ModuleBank
    params: object
    proposal_params: object
    proposal_apply: object
    train_seconds: float
    cache_path: str
    from_cache: bool


def _train_steps(config: config_lib.Config) -> int:
    return config.num_epochs * (config.num_train // config.batch_size)


def model_meta(system: str, config: config_lib.Config) -> dict:
    """What the cached modules + proposal were trained with (their cache key)."""
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
    }


def _cache_path(meta: dict) -> str:
    """``<cache_dir>/<system>_<hash of the settings>`` (a checkpoints.save_model folder)."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(_CACHE_DIR.value, f"{meta['system']}_{digest}")


def train_or_load(system: str, train: Split, config: config_lib.Config) -> Trained:
    """Modules and proposal trained on the true training structures (or the cached ones)."""
    n = train.num_particles
    if train.num_frames != config.obs_frames:
        raise ValueError(
            f"the proposal network reads obs_frames={config.obs_frames} frames but the "
            f"training trajectories have {train.num_frames}"
        )
    bank = ModuleBank(config.num_modules, config.edge_hidden, config.node_hidden)
    init_fn, apply_fn = proposal_net.make_proposal_network(
        config.num_modules, n, config.proposal_hidden
    )
    key = jax.random.PRNGKey(config.seed)
    example = jnp.asarray(train.states[:1, : config.obs_frames])
    proposal_init = init_fn(jax.random.fold_in(key, 1), example)
    meta = model_meta(system, config)
    path = _cache_path(meta)
    if os.path.exists(path):
        template = {
            "params": jax.eval_shape(bank.init, key),
            "proposal_params": proposal_init,
        }
        restored, saved = checkpoints.load_model(path, target=template)
        if saved != meta:
            raise ValueError(f"{path} holds a model trained with {saved}, not {meta}")
        print(f"[{system}] loaded trained modules + proposal from {path}")
        return Trained(
            bank, restored["params"], restored["proposal_params"], apply_fn, 0.0, path, True
        )

    print(f"[{system}] training modules + proposal on the true structures: {path}")
    start = time.perf_counter()
    params, proposal_params = true_edges.train_true_edges(
        bank,
        optax.adam(config.learning_rate),
        train,
        num_steps=_train_steps(config),
        batch_size=config.batch_size,
        p=config.p,
        seed=config.seed,
        proposal=true_edges.ProposalTraining(
            apply_fn, proposal_init, optax.adam(config.proposal_learning_rate)
        ),
        log=lambda line: print(f"[{system}] {line} ({_load_avg()})", flush=True),
    )
    train_seconds = time.perf_counter() - start
    checkpoints.save_model(
        path, jax.device_get({"params": params, "proposal_params": proposal_params}), meta
    )
    return Trained(bank, params, proposal_params, apply_fn, train_seconds, path, False)


# ----------------------------------------------------------------------------------------
# Timed searches.


@dataclasses.dataclass
class Curve:
    """Accuracy after step ``steps[i]`` reached at ``seconds[i]`` (compile excluded)."""

    steps: list
    seconds: list
    accuracy: list
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


def _accuracy(structures: np.ndarray, labels: np.ndarray) -> float:
    """Identity module->type map (module k was trained on relation type k)."""
    return float((np.asarray(structures) == labels).mean())


def _energy_fn(bank, params, states, p: int):
    return lambda s: gnn.rollout_loss(bank, params, states, s, p)


def _make_search_fns(
    bank: ModuleBank, proposal_apply, kind: str, uniform_mix: float, n: int, config
):
    """Search functions of one proposal kind.

    ``init(params, pparams, states, key) -> (structure, key, aux)`` (initial structures),
    ``start(params, states, structure, key) -> AnnealState`` (their energies),
    ``chunk(params, states, state, aux, temps) -> AnnealState`` (annealing steps) and
    ``one_step(params, states, state, temperature) -> AnnealState`` (one uniform step).
    """
    proposal_fn = structure_lib.make_move(kind, bank.num_modules, n, uniform_mix)

    def init(params, pparams, states, key):
        """Initial structures (no energy yet: see :func:`run_batched`)."""
        k_init, k_anneal = jax.random.split(key)
        aux = None
        if kind == "uniform":
            s = structure_lib.random_structures(k_init, states.shape[0], n, bank.num_modules)
        elif kind == "blocked_gibbs":
            aux = proposal_apply(pparams, states)
            s = proposal_net.argmax_structure(aux)
        else:
            configs = jnp.asarray(structure_lib.incoming_configs(n, bank.num_modules))
            aux = gnn.incoming_config_losses(bank, params, states, configs, config.exact_stride)
            s = structure_lib.exact_best_structure(aux, n, bank.num_modules)
        return s, k_anneal, aux

    def start(params, states, s, k_anneal):
        """The annealing state of initial structures ``s``: their energies evaluated."""
        energy = _energy_fn(bank, params, states, config.p)(s)
        return annealing.AnnealState(s, energy, k_anneal, jnp.float32(config.test_t_start))

    def chunk(params, states, state, aux, temps):
        state, _ = annealing.anneal(
            state, _energy_fn(bank, params, states, config.p), proposal_fn, temps, aux
        )
        return state

    def one_step(params, states, state, temperature):
        state, _ = annealing.anneal_step(
            state.replace(temperature=temperature),
            _energy_fn(bank, params, states, config.p),
            proposal_fn,
            None,
        )
        return state

    return init, start, chunk, one_step


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def run_batched(trained: Trained, method: str, states, labels, temps, config) -> Curve:
    """Methods (b), (c), (d): all tasks' chains advance chunk by chunk."""
    kind, mix = {
        "b": ("uniform", 0.0),
        "c": ("blocked_gibbs", _GIBBS_MIX.value),
        "d": ("exact_local", _EXACT_MIX.value),
    }[method]
    n = states.shape[2]
    init, start_fn, chunk, _ = _make_search_fns(
        trained.bank, trained.proposal_apply, kind, mix, n, config
    )
    bsz = min(config.test_batch_size, states.shape[0])
    if states.shape[0] % bsz:
        raise ValueError(f"num_tasks {states.shape[0]} must be a multiple of test_batch_size {bsz}")
    batches = [jnp.asarray(states[i : i + bsz]) for i in range(0, states.shape[0], bsz)]
    c = _CHUNK.value
    pparams = trained.proposal_params if kind == "blocked_gibbs" else None
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1000 + ord(method))
    keys = [jax.random.fold_in(key, i) for i in range(len(batches))]
    init_c, t_init = _compile(init, trained.params, pparams, batches[0], keys[0])
    s0, k0, aux0 = init_c(trained.params, pparams, batches[0], keys[0])
    start_c, t_start = _compile(start_fn, trained.params, batches[0], s0, k0)
    st0 = start_c(trained.params, batches[0], s0, k0)
    chunk_c, t_chunk = _compile(chunk, trained.params, batches[0], st0, aux0, temps[:c])
    _sync(st0)

    # Step 0 is the initial structures (random, the proposal's argmax, or the exact one-step
    # optimum); evaluating their energies, which annealing needs, is charged to chunk 1.
    t0 = time.perf_counter()
    inits = [init_c(trained.params, pparams, b, k) for b, k in zip(batches, keys, strict=True)]
    structures = _sync([s for s, _, _ in inits])
    seconds, steps = [time.perf_counter() - t0], [0]
    accuracy = [_accuracy(np.concatenate(structures), labels)]
    carry = [
        (start_c(trained.params, b, s, k), aux)
        for b, (s, k, aux) in zip(batches, inits, strict=True)
    ]
    for i in range(len(temps) // c):
        carry = [
            (chunk_c(trained.params, b, st, aux, temps[i * c : (i + 1) * c]), aux)
            for b, (st, aux) in zip(batches, carry, strict=True)
        ]
        structures = _sync([st.structure for st, _ in carry])
        seconds.append(time.perf_counter() - t0)
        steps.append((i + 1) * c)
        accuracy.append(_accuracy(np.concatenate(structures), labels))
    return Curve(steps, seconds, accuracy, t_init + t_start + t_chunk)


def run_loop(trained: Trained, states, labels, temps, num_total: int, config) -> Curve:
    """Method (a): one task at a time, a Python loop of jitted one-task SA steps.

    Accuracy is measured on ``len(states)`` tasks; seconds are extrapolated linearly to
    ``num_total`` tasks (per-task init time + per-step time, both measured).
    """
    n = states.shape[2]
    init, start_fn, _, one_step = _make_search_fns(trained.bank, None, "uniform", 0.0, n, config)
    tasks = [jnp.asarray(states[i : i + 1]) for i in range(states.shape[0])]
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1000 + ord("a"))

    def init_and_start(params, states, key):
        s, k, _ = init(params, None, states, key)
        return start_fn(params, states, s, k)

    init_c, t_init = _compile(init_and_start, trained.params, tasks[0], key)
    st0 = init_c(trained.params, tasks[0], key)
    step_c, t_step = _compile(one_step, trained.params, tasks[0], st0, temps[0])
    temps_host = [temps[i] for i in range(len(temps))]  # device scalars, made once
    _sync(temps_host)
    c = _CHUNK.value
    snapshots = []  # per task: structures after step 0, c, 2c, ...
    init_time = step_time = 0.0
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        st = init_c(trained.params, task, jax.random.fold_in(key, i))
        _sync(st)
        t1 = time.perf_counter()
        snaps = [st.structure]
        for s in range(len(temps)):
            st = step_c(trained.params, task, st, temps_host[s])
            if (s + 1) % c == 0:
                snaps.append(st.structure)
        _sync(st)
        t2 = time.perf_counter()
        init_time += t1 - t0
        step_time += t2 - t1
        snapshots.append(np.concatenate(jax.device_get(snaps)))  # [checkpoints, E]
    m = len(tasks)
    per_init, per_step = init_time / m, step_time / (m * len(temps))
    stacked = np.stack(snapshots, axis=1)  # [checkpoints, tasks, E]
    steps = [j * c for j in range(stacked.shape[0])]
    accuracy = [_accuracy(stacked[j], labels) for j in range(stacked.shape[0])]
    seconds = [num_total * (per_init + s * per_step) for s in steps]
    note = (
        f"measured on {m} tasks ({per_init * 1e3:.2f} ms init + {per_step * 1e3:.3f} ms/step "
        f"per task), seconds extrapolated linearly to {num_total} tasks"
    )
    return Curve(steps, seconds, accuracy, t_init + t_step, note)


def benchmark_system(system: str, config: config_lib.Config) -> dict:
    data = _load_data(system, config)
    trained = train_or_load(system, data.train, config)
    if _TRAIN_ONLY.value:
        return {"setup": {"train_seconds": trained.train_seconds, "cache": trained.cache_path}}
    num_tasks = _setting(_NUM_TASKS, 1000, 200)
    loop_tasks = _setting(_LOOP_TASKS, 100, 50)
    sa_steps = config.test_sa_steps
    if sa_steps % _CHUNK.value:
        raise ValueError(f"sa_steps {sa_steps} must be a multiple of chunk {_CHUNK.value}")
    test = data.test
    num_tasks = min(num_tasks, test.num_tasks)
    states = test.states[:num_tasks, : config.obs_frames]
    labels = test.labels[:num_tasks]
    temps = annealing.geometric_temperatures(config.test_t_start, config.test_t_end, sa_steps)
    print(
        f"[{system}] {num_tasks} test tasks, {sa_steps} SA steps, chunks of {_CHUNK.value}; "
        f"(a) on {loop_tasks} tasks; {_load_avg()}",
        flush=True,
    )
    curves = {}
    curves["a"] = run_loop(
        trained, states[:loop_tasks], labels[:loop_tasks], temps, num_tasks, config
    )
    for method in ("b", "c", "d"):
        curves[method] = run_batched(trained, method, states, labels, temps, config)
        print(f"[{system}] ({method}) done; {_load_avg()}", flush=True)

    a_level = 0.99 * curves["a"].final
    results = {}
    for method, curve in curves.items():
        t99 = curve.seconds_to(0.99 * curve.final)
        t_a = curve.seconds_to(a_level)
        results[method] = {
            "method": DESCRIPTIONS[method],
            "seconds_to_99": t99,
            "steps_to_99": curve.steps_to(0.99 * curve.final),
            "final_accuracy": curve.final,
            "initial_accuracy": curve.accuracy[0],
            "seconds_total": curve.seconds[-1],
            "seconds_to_a_level": t_a,
            "compile_seconds": curve.compile_seconds,
            "curve": {"steps": curve.steps, "seconds": curve.seconds, "accuracy": curve.accuracy},
        }
        if curve.note:
            results[method]["note"] = curve.note
    a99, a_total = results["a"]["seconds_to_99"], results["a"]["seconds_to_a_level"]
    for r in results.values():
        r["speedup_vs_a"] = a99 / r["seconds_to_99"] if r["seconds_to_99"] else None
        r["speedup_vs_a_at_a_level"] = (
            a_total / r["seconds_to_a_level"] if r["seconds_to_a_level"] else None
        )
    results["setup"] = {
        "num_tasks": num_tasks,
        "loop_tasks": loop_tasks,
        "sa_steps": sa_steps,
        "chunk": _CHUNK.value,
        "test_batch_size": config.test_batch_size,
        "train_seconds": trained.train_seconds,
        "cache": trained.cache_path,
        "from_cache": trained.from_cache,
        "load_average_end": os.getloadavg()[0],
    }
    return results


def format_table(system: str, results: dict) -> str:
    lines = [
        f"== {system}: {results['setup']['num_tasks']} test tasks, "
        f"{results['setup']['sa_steps']} SA steps",
        "| method | s to 99% of own final | steps | final acc | init acc | speed-up vs (a) "
        "| s to 99% of (a) final | speed-up | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt, unit=""):
        return "never" if v is None else format(v, fmt) + unit

    for m in METHODS:
        r = results[m]
        lines.append(
            f"| ({m}) {r['method']} | {f(r['seconds_to_99'], '.3f')} | "
            f"{f(r['steps_to_99'], 'd')} | {100 * r['final_accuracy']:.2f}% | "
            f"{100 * r['initial_accuracy']:.2f}% | {f(r['speedup_vs_a'], '.1f', 'x')} | "
            f"{f(r['seconds_to_a_level'], '.3f')} | "
            f"{f(r['speedup_vs_a_at_a_level'], '.1f', 'x')} | "
            f"{r['compile_seconds']:.1f} |"
        )
    lines.append(f"(a): {results['a']['note']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Meta-training with the proposal on vs off.


def meta_train_compare(config: config_lib.Config) -> dict:
    """Meta-trains from scratch on springs twice (same seed and budget): proposal off / on.

    A timing harness of the compiled BounceGrad step (compile excluded, accuracy of the
    training structures checked every ``--meta_eval_every`` steps), not a training run.
    """
    train = _load_data("springs", config).train
    n = train.num_particles
    out = {}
    for on in (False, True):
        bank = ModuleBank(config.num_modules, config.edge_hidden, config.node_hidden)
        init_fn, apply_fn = proposal_net.make_proposal_network(
            config.num_modules, n, config.proposal_hidden
        )
        optimizer = optax.adam(config.learning_rate)
        p_optimizer = optax.adam(config.proposal_learning_rate) if on else None
        key = jax.random.PRNGKey(config.seed)
        pparams = init_fn(jax.random.fold_in(key, 1), jnp.asarray(train.states[:1])) if on else None
        step_config = bouncegrad.BounceGradConfig(
            p=config.p,
            sa_steps=config.sa_steps,
            proposal="blocked_gibbs" if on else "uniform",
            uniform_mix=config.uniform_mix if on else 0.0,
        )
        state = bouncegrad.init_train_state(
            key,
            bank,
            optimizer,
            train.num_tasks,
            n,
            proposal_params=pparams,
            proposal_optimizer=p_optimizer,
        )
        step = bouncegrad.make_bouncegrad_step(
            bank, optimizer, step_config, n, apply_fn if on else None, p_optimizer
        )
        bsz = config.batch_size
        per_epoch = train.num_tasks // bsz

        def batch_at(i, bsz=bsz, per_epoch=per_epoch):
            epoch, offset = divmod(i, per_epoch)
            ids = task_batches(train.num_tasks, bsz, config.seed, epoch)[offset]
            return bouncegrad.Batch(
                jnp.asarray(ids), jnp.asarray(train.states[ids]), jnp.asarray(train.labels[ids])
            )

        step_c, compile_s = _compile(step, state, batch_at(0))
        labels = jnp.asarray(train.labels)
        start, elapsed, t99, s99, history = time.perf_counter(), 0.0, None, None, []
        for i in range(_META_STEPS.value):
            state, _ = step_c(state, batch_at(i))
            if (i + 1) % _META_EVAL_EVERY.value == 0:
                _sync(state.structures)
                elapsed += time.perf_counter() - start
                mapping = metrics_lib.module_mapping(
                    state.structures, labels, config.num_modules, NUM_TYPES
                )
                acc = float(metrics_lib.edge_accuracy(state.structures, labels, mapping))
                history.append((i + 1, elapsed, acc))
                if t99 is None and acc >= 0.99:
                    t99, s99 = elapsed, i + 1
                print(
                    f"[meta-train proposal={'on' if on else 'off'}] step {i + 1} "
                    f"{elapsed:.0f} s train-structure acc {acc:.4f}",
                    flush=True,
                )
                start = time.perf_counter()
        out["on" if on else "off"] = {
            "seconds_to_99_train_accuracy": t99,
            "steps_to_99_train_accuracy": s99,
            "final_train_accuracy": history[-1][2] if history else None,
            "compile_seconds": compile_s,
            "history": history,
        }
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = benchmark_config()
    print(f"structure-search benchmark: {os.cpu_count()} CPUs, {_load_avg()}", flush=True)
    all_results = {}
    for system in _SYSTEMS.value:
        all_results[system] = benchmark_system(system, config)
        if _TRAIN_ONLY.value:
            continue
        print(format_table(system, all_results[system]), flush=True)
    if _META_COMPARE.value:
        all_results["meta_train"] = meta_train_compare(config)
        for k, v in all_results["meta_train"].items():
            print(
                f"meta-training, proposal {k}: 99% train-structure accuracy after "
                f"{v['seconds_to_99_train_accuracy']} s ({v['steps_to_99_train_accuracy']} steps); "
                f"final {v['final_train_accuracy']:.4f}"
            )
    else:
        print("meta-training proposal on/off comparison: not run (--meta_train_compare)")
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        checkpoints.write_json_atomic(_OUT.value, all_results)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
