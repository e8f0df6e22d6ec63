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

Every method searches with meta-test's settings of the searched model's run
(:func:`nri_modular.evaluate.search_config` of the run's config, read with
:func:`nri_modular.evaluate_saved.run_config`): the annealing energy is the ``p``-step
rollout penalty of the run's training loss (MSE, or Huber with the run's ``huber_delta`` for
a ``--loss=huber`` run such as ``charged_demo.flags``'s), exact scores and the exact
one-step start are :func:`nri_modular.evaluate.exact_scores` at meta-test's stride (1); the
table and the setup lines name each method's energy and stride. Every method runs
``--test_sa_steps`` steps with the same geometric temperature schedule (``--test_t_start``
to ``--test_t_end``), in chunks of ``--chunk`` steps; accuracy and mean energy are recorded
after initialisation (step 0: the initial structures, random / the proposal's argmax / the
exact one-step optimum) and after every chunk, with a timestamp taken after
``block_until_ready``. Evaluating the initial structures' energies (which annealing needs,
the structures do not) is charged to the first chunk of (b)-(d) and to each task's
initialisation in (a). Compilation is done ahead of time
(``jit(...).lower(...).compile()``), reported separately and excluded. Besides each method's
own 99% time, ``seconds_to_a_level`` is its time to reach 99% of (a)'s final accuracy ("to
the same accuracy"), and ``seconds_to_a_energy`` its time to reach a mean energy within 1%
of (a)'s final one. A profile line per method gives the time per annealing step and the
accuracy after each chunk.

``--meta_train_compare`` additionally meta-trains from scratch on springs once per training
regime of ``--meta_regimes`` (same seed, same step budget ``--meta_train_steps``,
``--sa_steps`` annealing steps per task visit): uniform single-edge moves; blocked Gibbs
from the learned proposal mixed with ``--uniform_mix`` uniform moves; exact sweeps (every
node's incoming edges set to their one-step optimum, mixed with ``--uniform_mix`` uniform
moves). The proposal network is trained in the step with the blocked-Gibbs and exact-sweep
regimes (as in the default runs above). Each regime's state and step are the trainer's own
(:func:`nri_modular.train.build` of the benchmark's Config with the regime's move: its loss,
step-size schedule, exact stride, initial temperature and structure priors, which are flags
read only with ``--meta_train_compare``; see ``META_TRAIN_ONLY``). It prints the wall time
to reach 99% accuracy of the training structures (and stops a regime there unless
``--nometa_stop_at_99``).

Settings that are :class:`nri_modular.config.Config` fields are its flags (``--num_train``,
``--edge_hidden``, ``--batch_size``, ``--num_epochs``, ``--learning_rate``,
``--test_sa_steps``, ``--test_batch_size``, ...; see ``CONFIG_FLAGS``), with this
benchmark's defaults; the other flags are the benchmark's own. The model's own settings
(``MODEL_FLAGS``), and its loss, come from the run's config unless ``--supervised`` or
``--meta_train_compare`` trains a model. A Config flag it does not use is an error, and so
is an old flag name (e.g. ``--hidden``), naming the new one.
"""

from __future__ import annotations

import dataclasses
import os

import search_bench_lib as lib
from absl import app, flags

from nri_modular import checkpoints
from nri_modular import config as config_lib
from nri_modular.data import ensure_dataset
from nri_modular.structure import EXACT_KINDS

config_lib.define_flags(flags)
FLAGS = flags.FLAGS
# Config fields this benchmark reads, and its defaults where they differ from Config's.
CONFIG_FLAGS = tuple(
    "data_dir num_particles num_train num_valid num_test data_seed num_modules edge_hidden "
    "node_hidden seed batch_size num_epochs learning_rate p sa_steps uniform_mix exact_stride "
    "loss huber_delta final_learning_rate initial_temperature temperature_decay_steps "
    "refresh_energy symmetric_structure node_types "
    "proposal_hidden proposal_learning_rate test_sa_steps test_t_start test_t_end "
    "test_batch_size obs_frames".split()
)
# Config fields that describe a trained model (sizes, data, training): read by --supervised
# and --meta_train_compare (which train one); otherwise the model is a meta-training run's
# and these, like every other setting of the run (its loss), come from its config (given
# here, they are an error).
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
    # Meta-training's exact sweeps score every 4th transition (docs/speed.md's table); the
    # searches' exact scores use meta-test's stride (evaluate.search_config: 1).
    "exact_stride": 4,
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
_RUNS_OWN = "the searches use the searched run's own (its config; --supervised: MSE)"
META_TRAIN_ONLY = {
    "sa_steps": "the search's steps are --test_sa_steps (this benchmark's old --sa_steps)",
    "uniform_mix": "the uniform-move probabilities of the searches are --gibbs_uniform_mix "
    "and --exact_uniform_mix",
    "exact_stride": "method (d) scores with meta-test's stride (evaluate.search_config: 1)",
    **{
        name: _RUNS_OWN
        for name in (
            "loss",
            "huber_delta",
            "final_learning_rate",
            "initial_temperature",
            "temperature_decay_steps",
            "refresh_energy",
            "symmetric_structure",
            "node_types",
        )
    },
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
REGIMES = lib.REGIMES
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

METHODS = lib.METHODS
DESCRIPTIONS = lib.DESCRIPTIONS


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
            f"--{name} (the model's settings come from the run's config; "
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


def _log(line: str) -> None:
    print(f"{line} ({_load_avg()})", flush=True)


def run_workdir(system: str) -> str:
    """The meta-training run benchmarked on ``system`` (``--workdir`` or its default)."""
    if FLAGS["workdir"].present:
        return FLAGS.workdir
    return _RUN_WORKDIRS[system].value


def modules_for(system: str, config: config_lib.Config):
    """``(trained, data)``: the models searched with and their data. ``trained.config`` is
    the Config every method searches with (:func:`search_bench_lib.method_settings`): the
    run's own (its loss, ``p``, sizes, ...) with this benchmark's search flags, when
    meta-learned; the benchmark's (MSE) for ``--supervised``."""
    if _SUPERVISED.value:
        data = _load_data(system, config)
        return lib.train_or_load(system, data.train, config, _CACHE_DIR.value, _log), data
    data_dir = FLAGS.data_dir if FLAGS["data_dir"].present else None
    workdir = run_workdir(system)
    make = RUN_COMMAND.format(system=system, workdir=workdir)
    trained, data, _ = lib.load_run(system, workdir, data_dir, make, bench=config)
    return trained, data


def step_profile(curve: lib.Curve, num_tasks: int, loop: bool = False) -> dict:
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
    trained, data = modules_for(system, config)
    config = trained.config  # the searched run's (its loss), with this benchmark's search flags
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
    settings = {
        m: lib.method_settings(m, config, _GIBBS_MIX.value, _EXACT_MIX.value) for m in METHODS
    }
    print(
        f"[{system}] {num_tasks} test tasks, {sa_steps} SA steps, chunks of {_CHUNK.value}; "
        f"(a) on {loop_tasks} tasks; {_load_avg()}",
        flush=True,
    )
    for m in METHODS:
        print(f"[{system}] ({m}) searches with {lib.settings_note(settings[m])}", flush=True)
    curves = {}
    curves["a"] = lib.run_loop(
        trained, settings["a"], states[:loop_tasks], labels[:loop_tasks], num_tasks, _CHUNK.value
    )
    for method in ("b", "c", "d"):
        curves[method] = lib.run_batched(
            trained, method, settings[method], states, labels, _CHUNK.value, loop_tasks
        )
        print(f"[{system}] ({method}) done; {_load_avg()}", flush=True)

    a_level = 0.99 * curves["a"].final
    a_energy = 1.01 * curves["a"].loop_energy[-1]
    results = {}
    for method, curve in curves.items():
        t99 = curve.seconds_to(0.99 * curve.final)
        t_a = curve.seconds_to(a_level)
        exact = settings[method].proposal in EXACT_KINDS
        results[method] = {
            "method": DESCRIPTIONS[method],
            "energy": lib.energy_name(settings[method]),
            "huber_delta": settings[method].huber_delta,
            "exact_stride": settings[method].exact_stride if exact else None,
            "searched_with": lib.settings_note(settings[method]),
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
        "loss": config.loss,
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
        "| s to 99% of (a) final | speed-up | compile s | searched with |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"{r['compile_seconds']:.1f} | {r['searched_with']} |"
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
    Each regime's state and step are the trainer's (:func:`search_bench_lib.meta_train`).
    """
    train_split = _load_data("springs", config).train
    out = {}
    for regime in _META_REGIMES.value:
        out[regime] = lib.meta_train(
            regime,
            train_split,
            config,
            _META_STEPS.value,
            _META_EVAL_EVERY.value,
            _META_STOP.value,
            _log,
        )
    return out


def format_meta_table(meta: dict, config: config_lib.Config) -> str:
    """The training regimes side by side (springs, same seed and budget)."""
    lines = [
        f"== meta-training on springs: {config.num_train} tasks, batches of {config.batch_size}, "
        f"{config.sa_steps} annealing steps per task visit, budget {_META_STEPS.value} steps",
        "| training regime | s to 99% train-structure acc | steps | acc at stop | steps run "
        "| s/step | compile s | trained with |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in meta.values():
        t99, s99 = v["seconds_to_99_train_accuracy"], v["steps_to_99_train_accuracy"]
        lines.append(
            f"| {v['regime']} | {'never' if t99 is None else f'{t99:.0f}'} | "
            f"{'never' if s99 is None else s99} | {100 * v['final_train_accuracy']:.2f}% | "
            f"{v['steps_run']} | {v['seconds_per_step']:.3f} | {v['compile_seconds']:.1f} | "
            f"{v['trained_with']} |"
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
