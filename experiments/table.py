"""The paper's Tables 1-2: every method on the same tasks, beside the published numbers.

  python experiments/table.py --system=springs --flagfile=experiments/flags/table_cpu.flags
  python experiments/table.py --system=charged --flagfile=experiments/flags/table_cpu.flags

Data, sizes and ``modular``'s settings are the usual Config flags (``--num_train``,
``--edge_hidden``, ``--num_epochs``, ...); every baseline trains ``--num_epochs`` epochs
too (same tasks, same MLP sizes). Each method's run is kept in ``<out>/<method>``: a rerun
loads finished methods instead of retraining. Writes ``<out>/table.json``
(``{method: {"mse_1", "mse_10", "mse_20", "edge_accuracy", "train_seconds"}}``) and
``<out>/table.md``.
"""

import os
import time

from absl import flags

from nri_modular import cli
from nri_modular import config as config_lib

config_lib.define_flags(flags)
flags.DEFINE_list(
    "methods",
    "static,modular,nri_vae,supervised,corr_data,lstm_single,corr_lstm,lstm_joint,"
    "nri_full_graph,nri_true_graph",
    "Methods to run, in this order (see nri_modular.baselines.METHODS).",
)
flags.DEFINE_string(
    "out", "runs/table_{system}", "Output folder ('{system}' is replaced by --system)."
)
flags.DEFINE_float("baseline_learning_rate", 5e-4, "Adam step size of the baselines.")
flags.DEFINE_integer("lr_decay_epochs", 200, "Baselines' step size halves every this many epochs.")
flags.DEFINE_integer("mapping_tasks", 1000, "Training tasks choosing the module->relation map.")


def main(argv):
    cli.start(argv)
    from nri_modular import checkpoints
    from nri_modular.baselines import tables
    from nri_modular.loading import load_data

    config = config_lib.config_from_flags(flags.FLAGS)
    settings = tables.baseline_settings(
        config,
        flags.FLAGS.baseline_learning_rate,
        flags.FLAGS.lr_decay_epochs,
        flags.FLAGS.mapping_tasks,
    )
    out = flags.FLAGS.out.format(system=config.system)
    start, load_start = time.time(), os.getloadavg()
    results = tables.run_table(config, settings, flags.FLAGS.methods, out, load_data(config))
    text = tables.format_tables(results, config.system)
    footer = (
        f"\n\n{config.num_train} training tasks, {config.num_test} test tasks, "
        f"{config.num_epochs} epochs for every method; wall {time.time() - start:.0f} s; "
        f"load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end."
    )
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + footer + "\n")
    checkpoints.write_json_atomic(
        os.path.join(out, "run.json"),
        {
            "config": checkpoints.config_json(config),
            "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "methods": list(flags.FLAGS.methods),
            "wall_seconds": time.time() - start,
            "load_average_start_end": [load_start[0], os.getloadavg()[0]],
        },
    )
    print(text + footer)


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
