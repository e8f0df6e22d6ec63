"""Meta-train modular NRI on the charged-particles system and meta-test it (Kipf et al.'s protocol).

  python experiments/charged.py --flagfile=experiments/flags/charged_demo.flags

Generates the dataset into --data_dir if missing, trains with BounceGrad (resuming from
the latest checkpoint in --workdir), and prints edge accuracy and k-step MSE.
"""

from absl import app, flags, logging

from nri_modular import config as config_lib
from nri_modular import train

FLAGS = flags.FLAGS
config_lib.define_flags(flags, system_default="charged")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    train.quiet_library_logs()
    config = config_lib.config_from_flags(FLAGS)
    workdir = FLAGS.workdir or f"runs/{config.system}"
    results = train.train_and_evaluate(config, workdir)
    print(train.format_results(results))


if __name__ == "__main__":
    app.run(main)
