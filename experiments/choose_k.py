"""How many modules? Fits K = 1..4 on one's own data and picks K on the valid prediction loss.

  python experiments/choose_k.py --flagfile=experiments/flags/own_demo.flags \\
      --data_dir=DIR --dataset=NAME --ks=1,2,3,4 --workdir=runs/choose_k

(--flagfile first: the flags after it override its values.)

For unlabelled data the number of relation types is the question itself. Each K is
meta-trained with the flagfile's settings into <workdir>/K<k> (resumable; a finished K is
not retrained), then scored on the **valid** split only (the test split is never read for
the choice): every valid system's structure is searched on its first
`frames - valid_horizon - 1` frames and its last `valid_horizon` frames are predicted from
them (held-out frames: a larger K cannot win by fitting the frames it searched). The valid
prediction loss is the mean MSE over those steps. K = 1 is one module for every pair (no
structure). The pick is the smallest K whose loss is within --tolerance (relative) of the
best: more modules that buy less than that are not kept. Prints the curve, writes
<workdir>/choose_k.json and, with matplotlib, choose_k.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags

from nri_modular import cli, experiment
from nri_modular import config as config_lib


def _define_flags() -> None:
    """The command's flags (defined only when run: tests import this module's functions
    beside other scripts' flags)."""
    flags.DEFINE_list("ks", ["1", "2", "3", "4"], "Numbers of modules K to fit.")
    flags.DEFINE_integer(
        "valid_horizon", 10, "Valid frames held out and predicted (the choice's loss)."
    )
    flags.DEFINE_float(
        "tolerance", 0.05, "Pick the smallest K within this relative loss of the best."
    )


def pick(curve: list[dict], tolerance: float) -> int:
    """The smallest K whose ``valid_loss`` is within ``tolerance`` (relative) of the best."""
    best = min(row["valid_loss"] for row in curve)
    return min(row["K"] for row in curve if row["valid_loss"] <= best * (1 + tolerance))


def format_curve(curve: list[dict], chosen: int) -> str:
    """The curve as a Markdown table, the chosen K marked."""
    lines = [
        "| K | valid loss (mean MSE, held-out frames) | 1-step MSE | edges per module | "
        "train wall |",
        "|---|---|---|---|---|",
    ]
    for row in curve:
        usage = ", ".join(f"{100 * u:.0f}%" for u in row["module_usage"])
        mark = " **chosen**" if row["K"] == chosen else ""
        lines.append(
            f"| {row['K']}{mark} | {row['valid_loss']:.4e} | {row['mse_1']:.3e} | {usage} | "
            f"{row['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv):
    from nri_modular import evaluate_saved, plots, train
    from nri_modular.atomic import write_json_atomic
    from nri_modular.data import own

    cli.start(argv)
    base = config_lib.config_from_flags(flags.FLAGS)
    if not base.dataset:
        raise ValueError("choose_k is for one's own data: give --dataset=NAME and --data_dir")
    base = experiment.own_data_config(base, flags.FLAGS)
    workdir = flags.FLAGS.workdir or f"runs/choose_k_{base.dataset}"
    os.makedirs(workdir, exist_ok=True)
    ks = sorted({int(k) for k in flags.FLAGS.ks})
    valid_frames = own.inspect(base.data_dir, base.dataset)["valid"].frames
    horizon = flags.FLAGS.valid_horizon
    obs = valid_frames - horizon - 1
    if horizon < 1 or obs < 2:
        raise ValueError(
            f"valid trajectories have {valid_frames} frames: --valid_horizon={horizon} must "
            f"be >= 1 and leave >= 2 frames to search"
        )
    curve = []
    for k in ks:
        config = dataclasses.replace(base, num_modules=k)
        run_dir = os.path.join(workdir, f"K{k}")
        start = time.time()
        done = os.path.exists(os.path.join(run_dir, "trained.json"))
        if not done:
            os.makedirs(run_dir, exist_ok=True)
            result = train.train(config, run_dir)
            write_json_atomic(
                os.path.join(run_dir, "trained.json"), {"train_seconds": result.seconds}
            )
        with open(os.path.join(run_dir, "trained.json"), encoding="utf-8") as f:
            train_seconds = json.load(f)["train_seconds"]
        scored = evaluate_saved.evaluate_run(
            run_dir,
            base.data_dir,
            split="valid",
            overrides={"obs_frames": obs, "horizon": horizon},
            num_plots=0,
        )
        row = {
            "K": k,
            "valid_loss": sum(scored["mse_per_step"]) / len(scored["mse_per_step"]),
            "mse_1": scored["mse_1"],
            "module_usage": scored["module_usage"],
            "valid_edge_accuracy": scored["edge_accuracy"],
            "train_seconds": train_seconds,
            "score_seconds": time.time() - start if done else scored["wall_seconds"],
        }
        curve.append(row)
        print(f"K={k}: valid loss {row['valid_loss']:.4e} ({train_seconds / 60:.1f} min)")
    chosen = pick(curve, flags.FLAGS.tolerance)
    summary = {
        "dataset": base.dataset,
        "data_dir": os.path.abspath(base.data_dir),
        "valid_obs_frames": obs,
        "valid_horizon": horizon,
        "tolerance": flags.FLAGS.tolerance,
        "curve": curve,
        "chosen_K": chosen,
    }
    write_json_atomic(os.path.join(workdir, "choose_k.json"), summary)
    print(format_curve(curve, chosen))
    print(f"chosen K = {chosen}; {os.path.join(workdir, 'choose_k.json')}")
    if plots.available():
        figure = os.path.join(workdir, "choose_k.png")
        plots.choose_k_figure(curve, chosen, figure)
        print(f"figure: {figure}")


if __name__ == "__main__":
    config_lib.define_flags(flags, system_default="")
    _define_flags()
    cli.run_main(main)
