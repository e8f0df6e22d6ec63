r"""Meta-test structure search: the 2018 loop vs batched SA vs learned / exact blocked moves.

  python benchmarks/structure_search.py --quick --out=runs/structure_search_quick.json
  python benchmarks/structure_search.py --out=runs/structure_search.json   # 1,000 tasks each

With the same trained modules (trained once on the TRUE training structures with
``make_bouncegrad_step`` and ``sa_steps=0``; the proposal network is trained in the same
compiled step through its BounceGrad hook, targets = those structures; both saved to
``--cache_dir`` and reused) and the same test tasks (first ``--obs_frames`` frames
observed), it measures for each method the wall time to reach 99% of its own final edge
accuracy, and the final accuracy:

  (a) the 2018 way: one task at a time, uniform single-edge proposals, a Python loop over
      tasks and steps calling a jitted one-task SA step. Run on ``--loop_tasks`` tasks;
      its time is extrapolated linearly to all tasks (printed as such);
  (b) batched uniform SA: all tasks' chains advance together in one ``lax.scan``;
  (c) batched, initialised from the learned proposal's argmax, then blocked-Gibbs moves
      from the proposal mixed with uniform moves (``--gibbs_uniform_mix``);
  (d) batched, initialised from the exact one-step optimum, then exact local blocked
      moves mixed with uniform moves (``--exact_uniform_mix``).

Every method runs ``--sa_steps`` steps with the same geometric temperature schedule, in
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
same step budget), proposal off (uniform SA) vs on (blocked Gibbs + proposal trained in
the step), and prints the wall time to reach 99% training-structure accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from nri_modular import annealing, bouncegrad, gnn, proposal_net
from nri_modular import structure as structure_lib
from nri_modular.data import datasets
from nri_modular.modules import ModuleBank

_QUICK = flags.DEFINE_bool("quick", False, "Fewer tasks and steps (minutes on 2 CPU cores).")
_OUT = flags.DEFINE_string("out", None, "Write the results JSON here.")
_SYSTEMS = flags.DEFINE_list("systems", ["springs", "charged"], "Systems to benchmark.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data", "Dataset cache (ensure_dataset).")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "runs/structure_search_cache", "Trained modules + proposal cache."
)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2000, "Training tasks (dataset size).")
_NUM_VALID = flags.DEFINE_integer("num_valid", 100, "Validation tasks (dataset size).")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test tasks (dataset size).")
_DATA_SEED = flags.DEFINE_integer("data_seed", 42, "Dataset seed.")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Test tasks searched (1000; quick 200).")
_LOOP_TASKS = flags.DEFINE_integer("loop_tasks", None, "Tasks run by method (a) (100; quick 50).")
_SA_STEPS = flags.DEFINE_integer("sa_steps", None, "SA steps per task (400; quick 200).")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Steps per timed chunk.")
_SEARCH_BATCH = flags.DEFINE_integer("search_batch", 250, "Tasks per batched scan.")
_T_START = flags.DEFINE_float("t_start", 1e-5, "Initial SA temperature.")
_T_END = flags.DEFINE_float("t_end", 1e-8, "Final SA temperature.")
_GIBBS_MIX = flags.DEFINE_float("gibbs_uniform_mix", 0.1, "Uniform-move probability in (c).")
_EXACT_MIX = flags.DEFINE_float("exact_uniform_mix", 0.5, "Uniform-move probability in (d).")
_EXACT_STRIDE = flags.DEFINE_integer(
    "exact_stride", 4, "(d) scores every k-th observed transition (1 = all; 4 loses no accuracy)."
)
_OBS_FRAMES = flags.DEFINE_integer("obs_frames", 49, "Observed frames of a test task.")
_P = flags.DEFINE_integer("p", 10, "Rollout length of the energy.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "Edge/node module width (3 layers).")
_PROPOSAL_HIDDEN = flags.DEFINE_integer("proposal_hidden", 64, "Proposal network width.")
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", None, "Module + proposal training steps on the true graph (3000; quick 800)."
)
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 50, "Training tasks per step.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Module learning rate.")
_PROPOSAL_LR = flags.DEFINE_float("proposal_learning_rate", 1e-3, "Proposal learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of training and search.")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Only train (or load) and cache the models.")
_META_COMPARE = flags.DEFINE_bool(
    "meta_train_compare", False, "Also time meta-training (springs) with proposal on vs off."
)
_META_STEPS = flags.DEFINE_integer("meta_train_steps", 3000, "Meta-training step budget.")
_META_SA_STEPS = flags.DEFINE_integer("meta_sa_steps", 5, "SA steps per meta-training step.")
_META_EVAL_EVERY = flags.DEFINE_integer("meta_eval_every", 50, "Accuracy check interval.")

NUM_MODULES = 2  # Both systems have two relation types.
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


def _train_steps() -> int:
    return _setting(_TRAIN_STEPS, 3000, 800)


def _sync(tree):
    return jax.block_until_ready(tree)


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


def _cache_path(system: str) -> str:
    name = (
        f"{system}_n5_K{NUM_MODULES}_h{_HIDDEN.value}_ph{_PROPOSAL_HIDDEN.value}"
        f"_steps{_train_steps()}_b{_TRAIN_BATCH.value}_lr{_LR.value:g}"
        f"_plr{_PROPOSAL_LR.value:g}_p{_P.value}_seed{_SEED.value}"
        f"_data{_NUM_TRAIN.value}-{_DATA_SEED.value}.msgpack"
    )
    return os.path.join(_CACHE_DIR.value, name)


def train_or_load(system: str, train: datasets.Split) -> Trained:
    """Modules and proposal trained on the true training structures (or the cached ones)."""
    n = train.num_particles
    hidden = (_HIDDEN.value,) * 3
    bank = ModuleBank(NUM_MODULES, hidden, hidden)
    init_fn, apply_fn = proposal_net.make_proposal_network(NUM_MODULES, n, _PROPOSAL_HIDDEN.value)
    optimizer = optax.adam(_LR.value)
    p_optimizer = optax.adam(_PROPOSAL_LR.value)
    key = jax.random.PRNGKey(_SEED.value)
    example = jnp.asarray(train.states[:1, : _OBS_FRAMES.value])
    state = bouncegrad.init_train_state(
        key,
        bank,
        optimizer,
        train.num_tasks,
        n,
        proposal_params=init_fn(jax.random.fold_in(key, 1), example),
        proposal_optimizer=p_optimizer,
    )
    path = _cache_path(system)
    template = {"params": state.params, "proposal_params": state.proposal_params}
    if os.path.exists(path):
        with open(path, "rb") as f:
            restored = flax.serialization.from_bytes(template, f.read())
        print(f"[{system}] loaded trained modules + proposal from {path}")
        return Trained(
            bank, restored["params"], restored["proposal_params"], apply_fn, 0.0, path, True
        )

    print(f"[{system}] training modules + proposal on the true structures: {path}")
    config = bouncegrad.BounceGradConfig(p=_P.value, sa_steps=0, proposal="uniform")
    step_fn = jax.jit(
        bouncegrad.make_bouncegrad_step(bank, optimizer, config, n, apply_fn, p_optimizer),
        donate_argnums=(0,),
    )
    state = state.replace(structures=jnp.asarray(train.labels))
    batch_size = _TRAIN_BATCH.value
    per_epoch = train.num_tasks // batch_size
    num_steps = _train_steps()
    start = time.perf_counter()
    window = []
    for step in range(num_steps):
        epoch, offset = divmod(step, per_epoch)
        ids = datasets.task_batches(train.num_tasks, batch_size, _SEED.value, epoch)[offset]
        batch = bouncegrad.Batch(
            task_ids=jnp.asarray(ids),
            states=jnp.asarray(train.states[ids]),
            labels=jnp.asarray(train.labels[ids]),
        )
        state, metrics = step_fn(state, batch)
        window.append(metrics)
        if (step + 1) % 200 == 0 or step + 1 == num_steps:
            m = jax.device_get(window)
            print(
                f"[{system}] train step {step + 1}/{num_steps}: "
                f"loss {np.mean([x['loss'] for x in m]):.3e}, proposal xent "
                f"{np.mean([x['proposal_loss'] for x in m]):.4f} "
                f"({time.perf_counter() - start:.0f} s, {_load_avg()})",
                flush=True,
            )
            window = []
    train_seconds = time.perf_counter() - start
    os.makedirs(_CACHE_DIR.value, exist_ok=True)
    out = {"params": state.params, "proposal_params": state.proposal_params}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(out)))
    os.replace(tmp, path)
    return Trained(bank, state.params, state.proposal_params, apply_fn, train_seconds, path, False)


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


def _energy_fn(bank, params, states):
    return lambda s: gnn.rollout_loss(bank, params, states, s, _P.value)


def _make_search_fns(bank: ModuleBank, proposal_apply, kind: str, uniform_mix: float, n: int):
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
            aux = gnn.incoming_config_losses(bank, params, states, configs, _EXACT_STRIDE.value)
            s = structure_lib.exact_best_structure(aux, n, bank.num_modules)
        return s, k_anneal, aux

    def start(params, states, s, k_anneal):
        """The annealing state of initial structures ``s``: their energies evaluated."""
        energy = _energy_fn(bank, params, states)(s)
        return annealing.AnnealState(s, energy, k_anneal, jnp.float32(_T_START.value))

    def chunk(params, states, state, aux, temps):
        state, _ = annealing.anneal(
            state, _energy_fn(bank, params, states), proposal_fn, temps, aux
        )
        return state

    def one_step(params, states, state, temperature):
        state, _ = annealing.anneal_step(
            state.replace(temperature=temperature),
            _energy_fn(bank, params, states),
            proposal_fn,
            None,
        )
        return state

    return init, start, chunk, one_step


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def run_batched(trained: Trained, method: str, states, labels, temps) -> Curve:
    """Methods (b), (c), (d): all tasks' chains advance chunk by chunk."""
    kind, mix = {
        "b": ("uniform", 0.0),
        "c": ("blocked_gibbs", _GIBBS_MIX.value),
        "d": ("exact_local", _EXACT_MIX.value),
    }[method]
    n = states.shape[2]
    init, start_fn, chunk, _ = _make_search_fns(trained.bank, trained.proposal_apply, kind, mix, n)
    bsz = min(_SEARCH_BATCH.value, states.shape[0])
    if states.shape[0] % bsz:
        raise ValueError(f"num_tasks {states.shape[0]} must be a multiple of search_batch {bsz}")
    batches = [jnp.asarray(states[i : i + bsz]) for i in range(0, states.shape[0], bsz)]
    c = _CHUNK.value
    pparams = trained.proposal_params if kind == "blocked_gibbs" else None
    key = jax.random.fold_in(jax.random.PRNGKey(_SEED.value), 1000 + ord(method))
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


def run_loop(trained: Trained, states, labels, temps, num_total: int) -> Curve:
    """Method (a): one task at a time, a Python loop of jitted one-task SA steps.

    Accuracy is measured on ``len(states)`` tasks; seconds are extrapolated linearly to
    ``num_total`` tasks (per-task init time + per-step time, both measured).
    """
    n = states.shape[2]
    init, start_fn, _, one_step = _make_search_fns(trained.bank, None, "uniform", 0.0, n)
    tasks = [jnp.asarray(states[i : i + 1]) for i in range(states.shape[0])]
    key = jax.random.fold_in(jax.random.PRNGKey(_SEED.value), 1000 + ord("a"))

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


def benchmark_system(system: str) -> dict:
    data = datasets.ensure_dataset(
        _DATA_DIR.value,
        system,
        num_train=_NUM_TRAIN.value,
        num_valid=_NUM_VALID.value,
        num_test=_NUM_TEST.value,
        seed=_DATA_SEED.value,
        num_particles=5,
    )
    trained = train_or_load(system, data.train)
    if _TRAIN_ONLY.value:
        return {"setup": {"train_seconds": trained.train_seconds, "cache": trained.cache_path}}
    num_tasks = _setting(_NUM_TASKS, 1000, 200)
    loop_tasks = _setting(_LOOP_TASKS, 100, 50)
    sa_steps = _setting(_SA_STEPS, 400, 200)
    if sa_steps % _CHUNK.value:
        raise ValueError(f"sa_steps {sa_steps} must be a multiple of chunk {_CHUNK.value}")
    test = data.test
    num_tasks = min(num_tasks, test.num_tasks)
    states = test.states[:num_tasks, : _OBS_FRAMES.value]
    labels = test.labels[:num_tasks]
    temps = annealing.geometric_temperatures(_T_START.value, _T_END.value, sa_steps)
    print(
        f"[{system}] {num_tasks} test tasks, {sa_steps} SA steps, chunks of {_CHUNK.value}; "
        f"(a) on {loop_tasks} tasks; {_load_avg()}",
        flush=True,
    )
    curves = {}
    curves["a"] = run_loop(
        trained, states[:loop_tasks], labels[:loop_tasks], temps, num_total=num_tasks
    )
    for method in ("b", "c", "d"):
        curves[method] = run_batched(trained, method, states, labels, temps)
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
        "search_batch": _SEARCH_BATCH.value,
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


def meta_train_compare() -> dict:
    """Meta-trains from scratch on springs twice (same seed and budget): proposal off / on."""
    data = datasets.ensure_dataset(
        _DATA_DIR.value,
        "springs",
        num_train=_NUM_TRAIN.value,
        num_valid=_NUM_VALID.value,
        num_test=_NUM_TEST.value,
        seed=_DATA_SEED.value,
        num_particles=5,
    )
    train = data.train
    n = train.num_particles
    hidden = (_HIDDEN.value,) * 3
    out = {}
    for on in (False, True):
        bank = ModuleBank(NUM_MODULES, hidden, hidden)
        init_fn, apply_fn = proposal_net.make_proposal_network(
            NUM_MODULES, n, _PROPOSAL_HIDDEN.value
        )
        optimizer = optax.adam(_LR.value)
        p_optimizer = optax.adam(_PROPOSAL_LR.value) if on else None
        key = jax.random.PRNGKey(_SEED.value)
        pparams = init_fn(jax.random.fold_in(key, 1), jnp.asarray(train.states[:1])) if on else None
        config = bouncegrad.BounceGradConfig(
            p=_P.value,
            sa_steps=_META_SA_STEPS.value,
            proposal="blocked_gibbs" if on else "uniform",
            uniform_mix=_GIBBS_MIX.value if on else 0.0,
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
            bank, optimizer, config, n, apply_fn if on else None, p_optimizer
        )
        bsz = _TRAIN_BATCH.value
        per_epoch = train.num_tasks // bsz

        def batch_at(i, bsz=bsz, per_epoch=per_epoch):
            epoch, offset = divmod(i, per_epoch)
            ids = datasets.task_batches(train.num_tasks, bsz, _SEED.value, epoch)[offset]
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
                counts = structure_lib.confusion(state.structures, labels, NUM_MODULES, 2)
                acc = float(
                    structure_lib.mapped_accuracy(
                        state.structures, labels, structure_lib.best_mapping(counts)
                    )
                )
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
    del argv
    print(f"structure-search benchmark: {os.cpu_count()} CPUs, {_load_avg()}", flush=True)
    all_results = {}
    for system in _SYSTEMS.value:
        all_results[system] = benchmark_system(system)
        if _TRAIN_ONLY.value:
            continue
        print(format_table(system, all_results[system]), flush=True)
    if _META_COMPARE.value:
        all_results["meta_train"] = meta_train_compare()
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
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(all_results, f, indent=2)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
