"""The absl entry point shared by ``experiments/springs.py`` and ``experiments/charged.py``."""

from __future__ import annotations

from absl import app, flags, logging

from nri_modular import config as config_lib


def run(system: str) -> None:
    """Defines the flags (``--system`` defaulting to ``system``) and runs train + meta-test."""
    config_lib.define_flags(flags, system_default=system)

    def main(argv):
        from nri_modular import train  # Imported after flag parsing (keeps --help fast).

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.INFO)
        train.quiet_library_logs()
        config = config_lib.config_from_flags(flags.FLAGS)
        workdir = flags.FLAGS.workdir or f"runs/{config.system}"
        results = train.train_and_evaluate(config, workdir)
        print(train.format_results(results))

    app.run(main)
