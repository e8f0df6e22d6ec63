r"""Meta-test structure search: the 2018 loop vs batched SA vs learned / exact blocked moves.

  python benchmarks/structure_search.py --out=runs/structure_search.json   # 1,000 tasks each
  python benchmarks/structure_search.py --supervised --out=runs/structure_search_sup.json
  python benchmarks/structure_search.py --systems= --meta_train_compare --out=runs/meta.json

The modules and the learned proposal are, by default, those of a finished **BounceGrad
meta-training run** per system (``--springs_workdir`` / ``--charged_workdir``, or
``--workdir`` with one system): the paper's setting, where no relation label is used in
training. The proposal network of such a run (``--test_proposal=blocked_gibbs``) is trained
inside the BounceGrad step with the structures annealing has just accepted as its targets
(:func:`nri_modular.bouncegrad.make_bouncegrad_step`, step 3). Modules are unlabelled, so
edge accuracy maps modules to relation types once, on the run's training structures
(:func:`nri_modular.metrics.module_mapping`), as every meta-test does. A missing or
unfinished run is an error naming the command that makes it (the demo flagfile with
``--test_proposal=blocked_gibbs``; minutes on a CPU).

``--supervised`` instead trains modules and proposal on the TRUE training relations
(:func:`nri_modular.baselines.true_edges.train_true_edges`, module ``k`` = relation type
``k``, the proposal a supervised edge classifier; saved with
:func:`nri_modular.checkpoints.save_model` under ``--cache_dir`` and reused); its rows are
labelled "supervised". It is not the paper's setting: the proposal then knows the labels.

With those modules and the same test tasks (first ``obs_frames`` frames observed), it
measures for each method the wall time to reach 99% of its own final edge accuracy, and the
final accuracy:

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
chunks of ``--chunk`` steps; accuracy and mean energy are recorded after initialisation
(step 0: the initial structures, random / the proposal's argmax / the exact one-step
optimum) and after every chunk, with a timestamp taken after ``block_until_ready``.
Evaluating the initial structures' energies (which annealing needs, the structures do not)
is charged to the first chunk of (b)-(d) and to each task's initialisation in (a).
Compilation is done ahead of time (``jit(...).lower(...).compile()``), reported separately
and excluded. Besides each method's own 99% time, ``seconds_to_a_level`` is its time to
reach 99% of (a)'s final accuracy ("to the same accuracy"), and ``seconds_to_a_energy``
its time to reach a mean energy within 1% of (a)'s final one. A profile line per method
gives the time per annealing step and the accuracy after each chunk.

``--meta_train_compare`` additionally meta-trains from scratch on springs once per training
regime of ``--meta_regimes`` (same seed, same step budget ``--meta_train_steps``,
``--sa_steps`` annealing steps per task visit): uniform single-edge moves; blocked Gibbs
from the learned proposal mixed with ``--uniform_mix`` uniform moves; exact sweeps (every
node's incoming edges set to their one-step optimum, mixed with ``--uniform_mix`` uniform
moves). The proposal network is trained in the step with the blocked-Gibbs and exact-sweep
regimes (as in the default runs above). It prints the wall time to reach 99% accuracy of
the training structures (and stops a regime there unless ``--nometa_stop_at_99``).

Settings that are :class:`nri_modular.config.Config` fields are its flags (``--num_train``,
``--edge_hidden``, ``--batch_size``, ``--num_epochs``, ``--learning_rate``,
``--test_sa_steps``, ``--test_batch_size``, ...; see ``CONFIG_FLAGS``), with this
benchmark's defaults; the other flags are the benchmark's own. The model's own settings
(``MODEL_FLAGS``) come from the run's ``config.json`` unless ``--supervised`` or
``--meta_train_compare`` trains a model. A Config flag it does not use is an error, and so
is an old flag name (e.g. ``--hidden``), naming the new one.
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

from nri_modular import annealing, bouncegrad, checkpoints, distributed, gnn, proposal_net
from nri_modular import config as config_lib
from nri_modular import metrics as metrics_lib
from nri_modular import structure as structure_lib
from nri_modular import train as train_lib
from nri_modular.baselines import true_edges
from nri_modular.data import Split, ensure_dataset, loading, task_batches
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
# Config fields that describe a trained model (sizes, data, training): read by --supervised
# and --meta_train_compare (which train one); otherwise the model is a meta-training run's
# and these come from its config.json (given here, they are an error).
MODEL_FLAGS = (
    "num_particles",
    "num_train",
    "num_valid",
    "num_test",
    "data_seed",
    "num_modules",
    "edge_hidden",
    "node_hidden",
    "batch_size",
    "num_epochs",
    "learning_rate",
    "p",
    "proposal_hidden",
    "proposal_learning_rate",
    "obs_frames",
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
_SUPERVISED = flags.DEFINE_bool(
    "supervised",
    False,
    "Modules and proposal trained on the TRUE training relations (cached in --cache_dir) "
    "instead of a BounceGrad meta-training run's.",
)
_RUN_WORKDIRS = {
    system: flags.DEFINE_string(
        f"{system}_workdir",
        f"runs/{system}_demo_gibbs",
        f"Finished BounceGrad run whose modules and learned proposal are benchmarked on {system} "
        "(made by RUN_COMMAND; --workdir overrides it when one system is benchmarked).",
    )
    for system in config_lib.SYSTEMS
}
# The run behind each default workdir: the demo with the proposal network trained in the step.
RUN_COMMAND = (
    "python experiments/{system}.py --flagfile=experiments/flags/{system}_demo.flags "
    "--test_proposal=blocked_gibbs --workdir={workdir}"
)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "runs/structure_search_cache", "Supervised modules + proposal cache."
)
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Test tasks searched (1000; quick 200).")
_LOOP_TASKS = flags.DEFINE_integer("loop_tasks", None, "Tasks run by method (a) (100; quick 50).")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Steps per timed chunk.")
_GIBBS_MIX = flags.DEFINE_float("gibbs_uniform_mix", 0.1, "Uniform-move probability in (c).")
_EXACT_MIX = flags.DEFINE_float("exact_uniform_mix", 0.5, "Uniform-move probability in (d).")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Only train (or load) and cache the models.")
_META_COMPARE = flags.DEFINE_bool(
    "meta_train_compare",
    False,
    "Also time meta-training (springs) in each of --meta_regimes.",
)
REGIMES = {
    "uniform": "uniform single-edge moves (the paper's SA)",
    "blocked_gibbs": "learned blocked-Gibbs proposal, trained in the step (the paper's)",
    "exact_sweep": "exact sweeps (+ proposal trained in the step)",
}
_META_REGIMES = flags.DEFINE_list(
    "meta_regimes",
    list(REGIMES),
    f"Meta-training regimes compared: some of {list(REGIMES)}.",
)
_META_STEPS = flags.DEFINE_integer("meta_train_steps", 3000, "Meta-training step budget.")
_META_EVAL_EVERY = flags.DEFINE_integer("meta_eval_every", 50, "Accuracy check interval.")
_META_STOP = flags.DEFINE_bool(
    "meta_stop_at_99",
    True,
    "Stop a regime once its training structures reach 99% accuracy.",
)

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
    trains = _SUPERVISED.value or _META_COMPARE.value
    if FLAGS["workdir"].present and (_SUPERVISED.value or len(_SYSTEMS.value) != 1):
        unused.append(
            "--workdir (a meta-training run to benchmark, for one system: --systems=springs "
            "--workdir=RUN; for several, --springs_workdir / --charged_workdir)"
            + ("; --supervised trains its own models (--cache_dir)" if _SUPERVISED.value else "")
        )
    if not trains:
        unused += [
            f"--{name} (the model's settings come from the run's config.json; "
            "--supervised or --meta_train_compare train one)"
            for name in MODEL_FLAGS
            if FLAGS[name].present
        ]
    if unused:
        raise app.UsageError(
            f"not read by this benchmark: {', '.join(unused)} (it reads --systems and the "
            f"Config flags {', '.join('--' + n for n in CONFIG_FLAGS)})"
        )
    bad = [r for r in _META_REGIMES.value if r not in REGIMES]
    if bad:
        raise app.UsageError(f"unknown --meta_regimes {bad}; expected some of {list(REGIMES)}")
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
# The modules and proposal searched with: a meta-training run's, or trained on true edges.


@dataclasses.dataclass
class Trained:
    """Modules + learned proposal, and how they were obtained.

    Attributes:
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
    source: str = "supervised"
    train_accuracy: float | None = None


def read_run_config(workdir: str) -> config_lib.Config:
    """The :class:`Config` a run recorded in ``<workdir>/config.json``.

    Raises:
      FileNotFoundError: no ``config.json`` (no run there).
      ValueError: unreadable, not an object, fields this version does not know, or values
        :class:`Config` rejects.
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is unreadable ({e}); it records the run's settings") from e
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    fields = {f.name for f in dataclasses.fields(config_lib.Config)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise ValueError(f"{path} has fields this version of Config does not know: {unknown}")
    return config_lib.Config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    )


def load_run(system: str, workdir: str, data_dir: str | None):
    """Modules, proposal and module -> relation map of a finished BounceGrad run.

    The model is rebuilt from ``<workdir>/config.json`` with :func:`nri_modular.train.build`
    and its last checkpoint restored; the map is chosen on the run's training structures.

    Args:
      data_dir: where the run's dataset is (``None``: the run's own ``data_dir``).

    Returns:
      ``(trained, data, run_config)``.

    Raises:
      app.UsageError: no run, an unfinished run, another system's, or one without a
        learned proposal (each names the command that makes the right one).
    """
    make = RUN_COMMAND.format(system=system, workdir=workdir)
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise app.UsageError(
            f"no meta-training run in {workdir!r} to take the {system} modules and learned "
            f"proposal from; make it (BounceGrad, no labels; minutes on a CPU) with\n  {make}\n"
            f"or pass --workdir / --{system}_workdir, or --supervised (trained on true relations)"
        )
    run_config = read_run_config(workdir)
    if run_config.system != system:
        raise app.UsageError(f"{workdir!r} holds a {run_config.system} run, not {system}")
    if not run_config.uses_proposal_network:
        raise app.UsageError(
            f"the run in {workdir!r} has no learned proposal (proposal={run_config.proposal!r}, "
            f"test_proposal={run_config.test_proposal!r}); method (c) needs one: make it with\n"
            f"  {make}"
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
        source="meta-learned",
        train_accuracy=metrics_lib.edge_accuracy(structures, data.train.labels, mapping),
    )
    print(
        f"[{system}] modules + proposal of the BounceGrad run {workdir} (training "
        f"proposal={run_config.proposal!r}, proposal network trained in the step on the "
        f"annealed structures; step {latest}; restored in {time.perf_counter() - start:.1f} s); "
        f"module->relation map {mapping.tolist()} from its training structures "
        f"({100 * trained.train_accuracy:.2f}% right)",
        flush=True,
    )
    return trained, data, run_config


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
    """Modules and proposal trained on the true training structures (or the cached ones).

    Module ``k`` is trained on relation type ``k`` (the map is the identity).
    """
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
        print(f"[{system}] loaded supervised modules + proposal from {path}")
        return Trained(
            bank,
            restored["params"],
            restored["proposal_params"],
            apply_fn,
            0.0,
            path,
            True,
            np.arange(config.num_modules),
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
        path,
        jax.device_get({"params": params, "proposal_params": proposal_params}),
        meta,
    )
    return Trained(
        bank,
        params,
        proposal_params,
        apply_fn,
        train_seconds,
        path,
        False,
        np.arange(config.num_modules),
    )


# ----------------------------------------------------------------------------------------
# Timed searches.


@dataclasses.dataclass
class Curve:
    """Accuracy (and mean energy) after step ``steps[i]`` reached at ``seconds[i]``.

    Compilation excluded; ``energy[i]`` is the mean over tasks of the annealing energy (the
    ``p``-step rollout loss) of the structures after step ``steps[i]``, ``loop_energy[i]``
    the same over only the tasks method (a) runs (the first ``--loop_tasks``), which is
    what is compared with (a)'s.
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


def run_batched(
    trained: Trained, method: str, states, labels, temps, config, loop_tasks: int
) -> Curve:
    """Methods (b), (c), (d): all tasks' chains advance chunk by chunk.

    ``loop_tasks``: how many leading tasks method (a) runs (for ``Curve.loop_energy``).
    """
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


def run_loop(trained: Trained, states, labels, temps, num_total: int, config) -> Curve:
    """Method (a): one task at a time, a Python loop of jitted one-task SA steps.

    Its ``loop_energy`` is its ``energy`` (both over the tasks it runs).

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
    snapshots, energies = (
        [],
        [],
    )  # per task: structures (energies) after step 0, c, 2c, ...
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


def run_workdir(system: str) -> str:
    """The meta-training run benchmarked on ``system`` (``--workdir`` or its default)."""
    if FLAGS["workdir"].present:
        return FLAGS.workdir
    return _RUN_WORKDIRS[system].value


def modules_for(system: str, config: config_lib.Config):
    """``(trained, data, config)``: the models searched with, their data, and the Config
    whose model fields (``MODEL_FLAGS``) are the models' (the run's, when meta-learned)."""
    if _SUPERVISED.value:
        data = _load_data(system, config)
        return train_or_load(system, data.train, config), data, config
    data_dir = FLAGS.data_dir if FLAGS["data_dir"].present else None
    trained, data, run_config = load_run(system, run_workdir(system), data_dir)
    config = dataclasses.replace(
        config,
        data_dir=run_config.data_dir,
        **{name: getattr(run_config, name) for name in MODEL_FLAGS},
    )
    return trained, data, config


def step_profile(curve: Curve, num_tasks: int, loop: bool = False) -> dict:
    """What bounds a search: time of its step 0 and per annealing step, for all tasks.

    ``seconds_per_step`` excludes the first chunk (which also evaluates the initial
    energies): ``(seconds[-1] - seconds[1]) / (steps[-1] - steps[1])``.
    """
    per_step = None
    if len(curve.steps) > 2:
        per_step = (curve.seconds[-1] - curve.seconds[1]) / (curve.steps[-1] - curve.steps[1])
    return {
        "seconds_step0": curve.seconds[0],
        "seconds_first_chunk": curve.seconds[1] - curve.seconds[0]
        if len(curve.seconds) > 1
        else None,
        "seconds_per_step": per_step,
        "ms_per_task_step": None if per_step is None else 1e3 * per_step / num_tasks,
        "extrapolated": loop,
    }


def profile_lines(results: dict) -> list[str]:
    """One line per method: step-0 and per-step time, then accuracy after some steps."""
    lines = []
    for m in METHODS:
        r = results[m]
        prof, curve = r["profile"], r["curve"]
        picks = [i for i, s in enumerate(curve["steps"]) if s in (0, 10, 20, 50, 100, 200, 400)]
        if curve["steps"][-1] not in [curve["steps"][i] for i in picks]:
            picks.append(len(curve["steps"]) - 1)
        accs = ", ".join(f"{curve['steps'][i]}: {100 * curve['accuracy'][i]:.1f}%" for i in picks)
        per_step = prof["seconds_per_step"]
        t_e = r["seconds_to_a_energy"]
        lines.append(
            f"profile ({m}): step 0 {prof['seconds_step0']:.3f} s, "
            + (
                f"{per_step:.4f} s/step ({prof['ms_per_task_step']:.3f} ms/task-step)"
                if per_step is not None
                else ""
            )
            + f"; energy {r['final_energy']:.3e}, within 1% of (a)'s after "
            + ("never" if t_e is None else f"{t_e:.3f} s")
            + f"; accuracy after steps {accs}"
        )
    return lines


def benchmark_system(system: str, config: config_lib.Config) -> dict:
    trained, data, config = modules_for(system, config)
    if _TRAIN_ONLY.value:
        return {
            "setup": {
                "train_seconds": trained.train_seconds,
                "cache": trained.cache_path,
            }
        }
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
        curves[method] = run_batched(trained, method, states, labels, temps, config, loop_tasks)
        print(f"[{system}] ({method}) done; {_load_avg()}", flush=True)

    a_level = 0.99 * curves["a"].final
    a_energy = 1.01 * curves["a"].loop_energy[-1]
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
            "final_energy": curve.energy[-1],
            "seconds_total": curve.seconds[-1],
            "seconds_to_a_level": t_a,
            "seconds_to_a_energy": curve.seconds_to_energy(a_energy),
            "compile_seconds": curve.compile_seconds,
            "profile": step_profile(curve, num_tasks, loop=method == "a"),
            "curve": {
                "steps": curve.steps,
                "seconds": curve.seconds,
                "accuracy": curve.accuracy,
                "energy": curve.energy,
                "loop_energy": curve.loop_energy,
            },
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
        "source": trained.source,
        "mapping": [int(v) for v in trained.mapping],
        "train_structure_accuracy": trained.train_accuracy,
        "p": config.p,
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
    setup = results["setup"]
    if setup["source"] == "supervised":
        origin = f"SUPERVISED: modules + proposal trained on the true relations ({setup['cache']})"
    else:
        origin = (
            f"meta-learned: modules + proposal of the BounceGrad run {setup['cache']} (no "
            f"labels; module->relation map {setup['mapping']} chosen on its training "
            f"structures, {100 * setup['train_structure_accuracy']:.2f}% right)"
        )
    tag = " [supervised]" if setup["source"] == "supervised" else ""
    lines = [
        f"== {system}: {setup['num_tasks']} test tasks, {setup['sa_steps']} SA steps; {origin}",
        "| method | s to 99% of own final | steps | final acc | init acc | speed-up vs (a) "
        "| s to 99% of (a) final | speed-up | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt, unit=""):
        return "never" if v is None else format(v, fmt) + unit

    for m in METHODS:
        r = results[m]
        lines.append(
            f"| ({m}) {r['method']}{tag} | {f(r['seconds_to_99'], '.3f')} | "
            f"{f(r['steps_to_99'], 'd')} | {100 * r['final_accuracy']:.2f}% | "
            f"{100 * r['initial_accuracy']:.2f}% | {f(r['speedup_vs_a'], '.1f', 'x')} | "
            f"{f(r['seconds_to_a_level'], '.3f')} | "
            f"{f(r['speedup_vs_a_at_a_level'], '.1f', 'x')} | "
            f"{r['compile_seconds']:.1f} |"
        )
    lines.append(f"(a): {results['a']['note']}")
    lines += profile_lines(results)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Meta-training in each regime: uniform moves, learned blocked Gibbs, exact sweeps.


def meta_train_compare(config: config_lib.Config) -> dict:
    """Meta-trains from scratch on springs once per regime (same seed, budget, settings).

    Regimes (``--meta_regimes``, see ``REGIMES``) differ only in the training move; the
    proposal network is trained in the step by the blocked-Gibbs and exact-sweep regimes.
    A timing harness of the compiled BounceGrad step (compile excluded, accuracy of the
    training structures checked every ``--meta_eval_every`` steps), not a training run.
    """
    train_split = _load_data("springs", config).train
    out = {}
    for regime in _META_REGIMES.value:
        out[regime] = _meta_train(regime, train_split, config)
    return out


def _meta_train(regime: str, train: Split, config: config_lib.Config) -> dict:
    """One regime of :func:`meta_train_compare`: seconds to 99% training-structure accuracy."""
    n = train.num_particles
    on = regime != "uniform"  # the proposal network is trained in the step
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
        proposal=regime,
        uniform_mix=config.uniform_mix if on else 0.0,
        exact_stride=config.exact_stride,
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
            jnp.asarray(ids),
            jnp.asarray(train.states[ids]),
            jnp.asarray(train.labels[ids]),
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
                f"[meta-train {regime}] step {i + 1} {elapsed:.0f} s train-structure acc "
                f"{acc:.4f} ({_load_avg()})",
                flush=True,
            )
            if t99 is not None and _META_STOP.value:
                break
            start = time.perf_counter()
    return {
        "regime": REGIMES[regime],
        "seconds_to_99_train_accuracy": t99,
        "steps_to_99_train_accuracy": s99,
        "final_train_accuracy": history[-1][2] if history else None,
        "steps_run": history[-1][0] if history else 0,
        "seconds_per_step": history[-1][1] / history[-1][0] if history else None,
        "compile_seconds": compile_s,
        "history": history,
    }


def format_meta_table(meta: dict, config: config_lib.Config) -> str:
    """The training regimes side by side (springs, same seed and budget)."""
    lines = [
        f"== meta-training on springs: {config.num_train} tasks, batches of {config.batch_size}, "
        f"{config.sa_steps} annealing steps per task visit, budget {_META_STEPS.value} steps",
        "| training regime | s to 99% train-structure acc | steps | acc at stop | steps run "
        "| s/step | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in meta.values():
        t99, s99 = v["seconds_to_99_train_accuracy"], v["steps_to_99_train_accuracy"]
        lines.append(
            f"| {v['regime']} | {'never' if t99 is None else f'{t99:.0f}'} | "
            f"{'never' if s99 is None else s99} | {100 * v['final_train_accuracy']:.2f}% | "
            f"{v['steps_run']} | {v['seconds_per_step']:.3f} | {v['compile_seconds']:.1f} |"
        )
    return "\n".join(lines)


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
        print(format_meta_table(all_results["meta_train"], config), flush=True)
    else:
        print("meta-training comparison: not run (--meta_train_compare)")
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        checkpoints.write_json_atomic(_OUT.value, all_results)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
