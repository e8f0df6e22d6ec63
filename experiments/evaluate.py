"""Evaluates a trained run on any Kipf-layout data or own dataset, with the run's own constants.

  python experiments/evaluate.py --workdir=runs/springs_demo --data_dir=data
  python experiments/evaluate.py --workdir=runs/mine --data_dir=DIR --dataset=NAME

Rebuilds the model from the run's config, restores a checkpoint (default: the latest),
loads one split of --data_dir (ours, Kipf et al.'s released files, the reference
generator's output; only that split needs to exist), normalises it with the run's
training constants, searches every system's structure and predicts as at the end of
training, then prints and writes edge accuracy (the run's module -> relation map), MSE
per step (normalised and physical units), search time and a PNG of a few systems. On the
run's own test split this reproduces its results.json. The inferred structures and per-edge
scores of every system are saved beside the JSON (inferred_<split>.npz, written before any
figure; see evaluate_saved.save_inferred). Data without labels gets the structures, the
prediction error and each module's share of the edges.
"""

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's folder.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Kipf-layout data folder.", required=True)
_DATASET = flags.DEFINE_string(
    "dataset", None, "One's own dataset NAME in --data_dir (default: the run's own data)."
)
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid", "train"], "Split to evaluate.")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", 0, "Evaluate the first N systems (0: all).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Results JSON (default <workdir>/eval/...); PNG beside.")
_NUM_PLOTS = flags.DEFINE_integer("num_plots", 3, "Systems drawn in the PNG (0: no figure).")
# Search / prediction settings (default: the run's own).
_TEST_PROPOSAL = flags.DEFINE_enum(
    "test_proposal", None, ["uniform", "blocked_gibbs", "exact_local", "exact_sweep"], "Moves."
)
_TEST_SA_STEPS = flags.DEFINE_integer("test_sa_steps", None, "Annealing steps per system.")
_TEST_UNIFORM_MIX = flags.DEFINE_float("test_uniform_mix", None, "Uniform move probability.")
_TEST_T_START = flags.DEFINE_float("test_t_start", None, "Initial temperature.")
_TEST_T_END = flags.DEFINE_float("test_t_end", None, "Final temperature.")
_TEST_BATCH_SIZE = flags.DEFINE_integer("test_batch_size", None, "Systems searched together.")
_OBS_FRAMES = flags.DEFINE_integer("obs_frames", None, "Frames the search sees.")
_HORIZON = flags.DEFINE_integer("horizon", None, "Prediction steps scored (0: structures only).")
# Structure priors at meta-test only (beyond the paper; the modules stay the run's own).
_SYMMETRIC = flags.DEFINE_bool(
    "symmetric_structure", None, "Search symmetric structures (j->i and i->j share a module)."
)
_NODE_TYPES = flags.DEFINE_integer(
    "node_types", None, "Search per-node types (same type -> module 1); 0: off."
)


def main(argv):
    from nri_modular import cli

    cli.start(argv)
    from nri_modular import evaluate_saved, reporting

    overrides = {
        f.name: f.value
        for f in (
            _TEST_PROPOSAL,
            _TEST_SA_STEPS,
            _TEST_UNIFORM_MIX,
            _TEST_T_START,
            _TEST_T_END,
            _TEST_BATCH_SIZE,
            _OBS_FRAMES,
            _HORIZON,
            _SYMMETRIC,
            _NODE_TYPES,
        )
        if f.value is not None
    }
    results = evaluate_saved.evaluate_run(
        _WORKDIR.value,
        _DATA_DIR.value,
        split=_SPLIT.value,
        num_tasks=_NUM_TASKS.value,
        step=_STEP.value,
        overrides=overrides,
        out=_OUT.value,
        num_plots=_NUM_PLOTS.value,
        dataset=_DATASET.value,
    )
    print(reporting.format_evaluation(results))


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
