"""experiments/training_curves.py: a run's curves against wall time, from its saved files."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from nri_modular import writers

_spec = importlib.util.spec_from_file_location(
    "training_curves", os.path.join(REPO, "experiments", "training_curves.py")
)
tc = sys.modules["training_curves"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tc)


def _records(tps=(100.0, 50.0, 200.0), steps=(10, 20, 25), acc=(0.5, 0.7, 0.8)):
    return [
        {
            "step": s,
            "tasks_per_second": t,
            "train_edge_accuracy": a,
            "loss": 1.0 / s,
            "epoch": s / 10,
        }
        for s, t, a in zip(steps, tps, acc, strict=True)
    ]


def test_training_seconds_add_up_each_window():
    # windows of 10, 10, 5 steps of 4 tasks at 100, 50, 200 tasks/s: 0.4, 0.8, 0.1 s
    seconds = writers.training_seconds(_records(), batch_size=4)
    assert seconds == pytest.approx([0.4, 1.2, 1.3])
    with pytest.raises(ValueError, match="step 20 has no positive tasks_per_second"):
        writers.training_seconds(_records(tps=(1.0, 0.0, 1.0)), batch_size=4)


def test_read_metrics_sorts_and_names_bad_lines(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no metrics.jsonl"):
        writers.read_metrics(workdir)
    path = os.path.join(workdir, writers.METRICS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"step": 20, "loss": 1}\n\n{"step": 10, "loss": 2}\n')
    assert [r["step"] for r in writers.read_metrics(workdir)] == [10, 20]
    with open(path, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match="line 4: not JSON"):
        writers.read_metrics(workdir)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"loss": 1}\n')
    with pytest.raises(ValueError, match="line 1: a record needs a 'step'"):
        writers.read_metrics(workdir)


def test_late_rise_and_table():
    curve = {
        "minutes": [1.0, 2.0, 3.0, 4.0, 5.0],
        "step": [1, 2, 3, 4, 5],
        "epoch": [0.1, 0.2, 0.3, 0.4, 0.5],
        "edge_accuracy": [0.5, 0.6, 0.7, 0.75, 0.76],
        "loss": [1.0, 0.5, 0.4, 0.3, 0.2],
    }
    rise, span = tc.late_rise(curve)  # the last fifth of 5 min: from minute 4
    assert rise == pytest.approx(1.0) and span == pytest.approx(1.0)
    text = tc.format_curve("run", curve, points=3)
    assert "| 1.0 | 1 | 0.1 | 50.00% | 1.000e+00 |" in text
    assert "| 3.0 | 3 | 0.3 | 70.00% | 4.000e-01 |" in text
    assert "| 5.0 | 5 | 0.5 | 76.00% | 2.000e-01 |" in text
    assert "last fifth of training: +1.00 points in 1.0 min" in text
    assert "has not finished" in text


def test_cli_on_a_trained_run(trained_workdir, tmp_path, subprocess_env):
    run = str(tmp_path / "run")
    shutil.copytree(trained_workdir, run)
    with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    out = str(tmp_path / "curves.png")
    cmd = [sys.executable, os.path.join(REPO, "experiments", "training_curves.py")]
    proc = subprocess.run(
        cmd + [f"--workdirs={run}", "--labels=tiny", f"--out={out}"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"test edge accuracy {100 * results['edge_accuracy']:.2f}%" in proc.stdout
    curve = tc.run_curve(run)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        cmd + [f"--workdirs={run}", f"--out={tmp_path / 'curves.txt'}"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "--out must name a .png file" in bad.stderr
    os.remove(os.path.join(run, "run.json"))  # an older run: its config.json still serves
    assert tc.run_curve(run)["minutes"] == curve["minutes"]
    os.remove(os.path.join(run, "config.json"))
    with pytest.raises(FileNotFoundError, match="holds no run: neither run.json nor config.json"):
        tc.run_curve(run)
