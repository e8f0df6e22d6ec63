"""The start every command line shares (:func:`start`) and its one-line errors
(:func:`run_main`); it imports nothing else of the package, so any module's ``__main__`` may
use it. The train-and-evaluate entry point is :mod:`nri_modular.experiment`."""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging


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
