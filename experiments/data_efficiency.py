"""Figure 3: edge accuracy (and MSE) of ``modular`` and ``nri_vae`` against training tasks.

  python experiments/data_efficiency.py --system=springs \
      --flagfile=experiments/flags/data_efficiency_cpu.flags

Every point trains both methods from scratch for the same number of gradient steps
(``--steps``; epochs = steps / (num_train / batch_size)) on the first ``num_train`` tasks of
a dataset generated in ``<out>/data_<num_train>`` (the valid and test tasks are the same
for every point: each split has its own random stream; the normalisation is that of the
point's training tasks, for both methods). Writes ``<out>/data_efficiency.json`` (the
curves and the data-efficiency ratios: training tasks the VAE needs for the accuracy
``modular`` reaches) and ``<out>/data_efficiency.png`` (log x axis). Finished points are
loaded on a rerun.
"""

import dataclasses
import os
import time

from absl import app, flags, logging

from nri_modular import cli
from nri_modular import config as config_lib

config_lib.define_flags(flags)
flags.DEFINE_list("train_sizes", "50,100,200,500,1000,2000", "Training-set sizes (increasing).")
flags.DEFINE_integer("steps", 800, "Gradient steps of every method at every size.")
flags.DEFINE_string("out", "runs/data_efficiency_{system}", "Output folder ({system} replaced).")
flags.DEFINE_float("baseline_learning_rate", 2e-3, "Adam step size of the NRI VAE.")
flags.DEFINE_integer("mapping_tasks", 1000, "Training tasks choosing the module->relation map.")

METHODS = ("modular", "nri_vae")


def main(argv):
    cli.start(argv)
    from nri_modular import checkpoints, plots
    from nri_modular.baselines import tables
    from nri_modular.loading import load_data

    base_config = config_lib.config_from_flags(flags.FLAGS)
    out = flags.FLAGS.out.format(system=base_config.system)
    sizes = [int(s) for s in flags.FLAGS.train_sizes]
    if sorted(set(sizes)) != sizes:
        raise app.UsageError(f"--train_sizes must be increasing and distinct, got {sizes}")
    steps = flags.FLAGS.steps
    start, load_start = time.time(), os.getloadavg()
    points = {}
    for size in sizes:
        per_epoch = size // base_config.batch_size
        if per_epoch < 1 or steps % per_epoch:
            raise app.UsageError(
                f"--steps={steps} must be a multiple of num_train / batch_size = {size} / "
                f"{base_config.batch_size} (every size gets the same gradient steps)"
            )
        config = dataclasses.replace(
            base_config,
            num_train=size,
            num_epochs=steps // per_epoch,
            data_dir=os.path.join(out, f"data_{size}"),
        )
        settings = tables.baseline_settings(
            config,
            flags.FLAGS.baseline_learning_rate,
            0,  # lr_decay_epochs: constant, the same schedule at every size
            flags.FLAGS.mapping_tasks,
        )
        points[size] = tables.run_table(
            config, settings, METHODS, os.path.join(out, f"n{size}"), load_data(config)
        )
        logging.info("%d tasks: %s", size, {m: points[size][m]["edge_accuracy"] for m in METHODS})
    curves = {m: [points[s][m]["edge_accuracy"] for s in sizes] for m in METHODS}
    ratios = tables.data_efficiency_ratios(sizes, curves["modular"], curves["nri_vae"])
    vae_best = tables.vae_best_reading(sizes, curves["modular"], curves["nri_vae"])
    result = {
        "system": base_config.system,
        "train_sizes": sizes,
        "steps_per_point": steps,
        "batch_size": base_config.batch_size,
        "edge_accuracy": curves,
        "mse_10": {m: [points[s][m]["mse_10"] for s in sizes] for m in METHODS},
        "train_seconds": {m: [points[s][m]["train_seconds"] for s in sizes] for m in METHODS},
        "ratios": ratios,
        "vae_best_reading": vae_best,
        "wall_seconds": time.time() - start,
        "load_average_start_end": [load_start[0], os.getloadavg()[0]],
    }
    checkpoints.write_json_atomic(os.path.join(out, "data_efficiency.json"), result)
    png = os.path.join(out, "data_efficiency.png")
    plots.data_efficiency_figure(sizes, curves, png, base_config.system, steps)
    print(
        f"{base_config.system}: edge accuracy (%) after {steps} steps of {base_config.batch_size}"
    )
    print("| training tasks | " + " | ".join(str(s) for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for m in METHODS:
        print(f"| {m} | " + " | ".join(f"{100 * a:.1f}" for a in curves[m]) + " |")
    for r in ratios:
        needed = r["vae_tasks_needed"]
        print(
            f"modular at {r['num_train']} tasks: {100 * r['modular_accuracy']:.1f}%; the VAE "
            + (
                f"needs {needed:.0f} tasks ({r['ratio']:.1f}x)"
                if needed is not None
                else f"does not reach it with up to {sizes[-1]} tasks "
                f"(ratio > {r['ratio_at_least']:.0f}x)"
            )
        )
    print(format_vae_best(vae_best))
    print(f"figure: {png}; wall {result['wall_seconds']:.0f} s")


def format_vae_best(reading: dict) -> str:
    """One line: the tasks modular needs for the VAE's best accuracy (Figure 3 read across)."""
    head = (
        f"the VAE's best, {100 * reading['vae_best_accuracy']:.1f}% at "
        f"{reading['vae_tasks']} tasks: modular "
    )
    needed = reading["modular_tasks_needed"]
    if needed is None:
        return head + "does not reach it"
    if not reading["exact"]:
        return head + (
            f"reaches it with its fewest, {needed:.0f} tasks (ratio >= {reading['ratio']:.0f}x)"
        )
    return head + f"needs {needed:.0f} tasks ({reading['ratio']:.1f}x)"


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
