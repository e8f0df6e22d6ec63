"""Training curves of finished (or running) runs, from their saved files only.

  python experiments/training_curves.py --workdirs=runs/charged_cpu,runs/springs_cpu \
      --out=docs/training_curves_cpu.png

Reads each run's ``metrics.jsonl`` (one record per logged step), its config (``run.json`` or
an older run's ``config.json``: the batch size) and, when the run has finished, its
``results.json``; prints, per run, the edge accuracy of the training structures BounceGrad
holds and the training loss at evenly spaced points of training wall time, how much the
accuracy still rose over the last fifth of training (where the curve flattens), and the test
edge accuracy; ``--out`` draws both curves against wall time (a star: the test accuracy).
Nothing is trained or evaluated.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run folders to read.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "One label per run (default: folder names).")
_OUT = flags.DEFINE_string("out", None, "PNG to draw (default: print only).")
_POINTS = flags.DEFINE_integer("points", 8, "Rows printed per run.")


def run_curve(workdir: str) -> dict:
    """One run's curve: minutes, steps, epochs, edge accuracy, loss, and its test result.

    Raises:
      FileNotFoundError / ValueError: not a run's folder, or unreadable records (named).
    """
    from nri_modular import evaluate_saved, writers

    config, _ = evaluate_saved.run_config(workdir)
    batch_size = config.batch_size
    records = writers.read_metrics(workdir)
    if not records:
        raise ValueError(f"{workdir}: {writers.METRICS_FILE} holds no record yet")
    seconds = writers.training_seconds(records, batch_size)
    curve = {
        "minutes": [s / 60 for s in seconds],
        "step": [r["step"] for r in records],
        "epoch": [r.get("epoch") for r in records],
        "edge_accuracy": [_train_structure_accuracy(workdir, r) for r in records],
        "loss": [r["loss"] for r in records],
    }
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
        curve["test_edge_accuracy"] = results.get("edge_accuracy")
        curve["wall_seconds"] = results.get("wall_seconds")
    return curve


def _train_structure_accuracy(workdir: str, record: dict) -> float:
    """The training structures' edge accuracy of a record (one map over all training tasks).

    Raises:
      ValueError: a record written before it was logged: its ``edge_accuracy`` chose the
        module -> relation map per batch, which reads above chance on structures at chance.
    """
    if "train_edge_accuracy" not in record:
        raise ValueError(
            f"{workdir}: metrics.jsonl (step {record['step']}) predates the training structures' "
            "accuracy (train_edge_accuracy); its edge_accuracy chose the module -> relation map "
            "per batch and is not comparable: rerun the run to draw its curve"
        )
    return record["train_edge_accuracy"]


def late_rise(curve: dict, fraction: float = 0.2) -> tuple[float, float]:
    """``(points of training-structure accuracy gained, minutes)`` over the last ``fraction``
    of the run's training time: how flat the curve is where it ends."""
    minutes, acc = curve["minutes"], curve["edge_accuracy"]
    cut = minutes[-1] * (1 - fraction)
    first = next(i for i, m in enumerate(minutes) if m >= cut)
    return 100 * (acc[-1] - acc[first]), minutes[-1] - minutes[first]


def format_curve(label: str, curve: dict, points: int) -> str:
    """A markdown table of ``points`` evenly spaced records (the last included)."""
    n = len(curve["minutes"])
    picks = sorted({round(i * (n - 1) / max(points - 1, 1)) for i in range(points)})
    lines = [
        f"{label}",
        "| training min | step | epoch | edge acc, training structures | training loss |",
        "|---|---|---|---|---|",
    ]
    for i in picks:
        epoch = curve["epoch"][i]
        lines.append(
            f"| {curve['minutes'][i]:.1f} | {curve['step'][i]} | "
            f"{'' if epoch is None else f'{epoch:.1f}'} | "
            f"{100 * curve['edge_accuracy'][i]:.2f}% | {curve['loss'][i]:.3e} |"
        )
    rise, span = late_rise(curve)
    lines.append(f"last fifth of training: {rise:+.2f} points in {span:.1f} min")
    if curve.get("test_edge_accuracy") is not None:
        lines.append(
            f"test edge accuracy {100 * curve['test_edge_accuracy']:.2f}% "
            f"({curve['wall_seconds']:.0f} s wall for the whole run)"
        )
    else:
        lines.append("no results.json: the run has not finished")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    labels = _LABELS.value or [os.path.basename(os.path.normpath(w)) for w in _WORKDIRS.value]
    if len(labels) != len(_WORKDIRS.value):
        raise app.UsageError(f"{len(labels)} labels for {len(_WORKDIRS.value)} workdirs")
    if _OUT.value is not None and not _OUT.value.endswith(".png"):
        raise app.UsageError(f"--out must name a .png file, got {_OUT.value!r}")
    curves = {label: run_curve(w) for label, w in zip(labels, _WORKDIRS.value, strict=True)}
    for label, curve in curves.items():
        print(format_curve(label, curve, _POINTS.value), end="\n\n")
    if _OUT.value is not None:
        from nri_modular import plots

        plots.training_curves(curves, _OUT.value)
        print(f"figure: {_OUT.value}")


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
