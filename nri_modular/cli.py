"""The absl entry point shared by ``experiments/springs.py`` and ``experiments/charged.py``,
and the start every experiment script shares (:func:`start`)."""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging

from nri_modular import config as config_lib


def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines out of the training log (warnings still show)."""

    class _DropOrbaxInfo(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname

    for handler in std_logging.getLogger().handlers + std_logging.getLogger("absl").handlers:
        handler.addFilter(_DropOrbaxInfo())
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def start(argv) -> None:
    """An entry point's start: no stray arguments; INFO logs without Orbax's per-save lines.

    Raises:
      app.UsageError: ``argv`` holds more than the program name.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()


_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of an error (default: one line naming it)."
)

# Errors a user causes (a bad flag, file or folder; a run that diverged; a busy workdir):
# one line naming the problem and what to do. Anything else is a bug: its traceback shows.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ImportError,
    ArithmeticError,  # evaluate.NonFiniteResultError
    RuntimeError,  # checkpoints.CheckpointError, train.DivergenceError, a busy workdir
)


def run_main(main) -> None:
    """``absl.app.run(main)``, with a user's error printed as one line (exit code 1)
    instead of a traceback; ``--traceback`` shows it in full."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if _TRACEBACK.value:
                raise
            message = str(e).strip() or type(e).__name__
            sys.stderr.write(f"error: {message}\n(--traceback shows where it was raised)\n")
            sys.exit(1)

    app.run(wrapped)


def own_data_config(config: config_lib.Config, flag_values) -> config_lib.Config:
    """Fills what one's own dataset's files say into a config built from flags.

    ``num_particles`` and ``state_dim`` come from the files (a ``--num_particles`` that
    disagrees is an error); ``num_train`` / ``num_valid`` / ``num_test`` not given are the
    files' counts (given: the first ones); ``obs_frames`` not given is the training
    frames, less when the test trajectories must keep >= 1 frame to predict; ``horizon``
    not given is what the test frames leave after it, at most 20.
    """
    import dataclasses

    from nri_modular.data import own

    info = own.inspect(config.data_dir, config.dataset)
    train = info["train"]
    given = lambda name: flag_values[name].present  # noqa: E731
    if given("num_particles") and config.num_particles != train.num_particles:
        raise ValueError(
            f"--num_particles={config.num_particles} but dataset {config.dataset!r} has "
            f"{train.num_particles} objects per system (leave the flag out)"
        )
    fills = {"num_particles": train.num_particles, "state_dim": train.state_dim}
    for split, files in info.items():
        if not given(f"num_{split}"):
            fills[f"num_{split}"] = files.sims
        elif getattr(config, f"num_{split}") > files.sims:
            raise ValueError(
                f"--num_{split}={getattr(config, f'num_{split}')} but dataset "
                f"{config.dataset!r} has {files.sims} {split} simulations"
            )
    test_frames = info["test"].frames
    obs = config.obs_frames if given("obs_frames") else min(train.frames, test_frames - 2)
    fills["obs_frames"] = max(obs, 1)
    if not given("horizon"):
        fills["horizon"] = max(min(20, test_frames - fills["obs_frames"] - 1), 0)
    if not given("batch_size"):
        fills["batch_size"] = min(config.batch_size, fills.get("num_train", config.num_train))
    logging.info(
        "dataset %s in %s: %s layout, %d objects, %d state channels, train/valid/test: "
        "using %s of %s simulations, %s (obs_frames %d, horizon %d)",
        config.dataset,
        config.data_dir,
        train.layout,
        train.num_particles,
        train.state_dim,
        "/".join(str(fills.get(f"num_{s}", getattr(config, f"num_{s}"))) for s in info),
        "/".join(str(f.sims) for f in info.values()),
        ", ".join(f"{s} {'labelled' if f.labelled else 'unlabelled'}" for s, f in info.items()),
        fills["obs_frames"],
        fills.get("horizon", config.horizon),
    )
    return dataclasses.replace(config, **fills)


def run(system: str) -> None:
    """Defines the flags (``--system`` defaulting to ``system``) and runs train + meta-test;
    ``system=""``: ``--dataset=NAME`` (one's own data) or ``--system`` chooses the data."""
    config_lib.define_flags(flags, system_default=system)

    def main(argv):
        # Imported after flag parsing (keeps --help fast).
        from nri_modular import reporting, train

        start(argv)
        if not flags.FLAGS.dataset and not flags.FLAGS.system:
            raise ValueError(
                "which data? --dataset=NAME trains on one's own files in --data_dir "
                "(loc_train_NAME.npy, ...), --system=springs|charged|kuramoto on a simulated "
                "system (generated into --data_dir)"
            )
        config = config_lib.config_from_flags(flags.FLAGS)
        if config.dataset:
            config = own_data_config(config, flags.FLAGS)
        workdir = flags.FLAGS.workdir or f"runs/{config.dataset or config.system}"
        results = train.train_and_evaluate(config, workdir)
        print(reporting.format_run_results(results))

    run_main(main)
