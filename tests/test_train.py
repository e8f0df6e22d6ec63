"""End-to-end: the CI flagfile through ``train_and_evaluate``, and exact resumption after
SIGKILL / SIGTERM (the final state equals an uninterrupted run's)."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import REFERENCE_FLAGS, REPO, cli, final_state, reference_config, run_cli

from nri_modular import reporting

TIMING_KEYS = ("wall_seconds", "train_seconds", "test_search_seconds")


def test_ci_flagfile_smoke_run(trained_workdir):
    with open(os.path.join(trained_workdir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    # Accuracies are counts of correct edges: 8 test / 40 training tasks of 4 * 3 edges (a
    # per-batch mean or a wrong denominator would not be a multiple of one edge).
    for key, edges in (("edge_accuracy", 8 * 12), ("train_edge_accuracy", 40 * 12)):
        assert results[key] * edges == pytest.approx(round(results[key] * edges)), key
    for key in ("mse_1", "wall_seconds"):
        assert np.isfinite(results[key]) and results[key] >= 0
    assert "mse_10" in results and "mse_20" in results  # None: horizon 5 in the CI flags
    assert results["num_test_tasks"] == 8
    table = reporting.format_run_results(results)
    assert f"| edge accuracy (test) | {100 * results['edge_accuracy']:.2f}% |" in table
    assert "| MSE 10 steps | n/a (horizon too short) |" in table
    with open(os.path.join(trained_workdir, "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [m["step"] for m in lines] == [2, 4, 6, 8]
    assert all(np.isfinite(m["loss"]) for m in lines)
    assert sorted(os.listdir(os.path.join(trained_workdir, "checkpoints"))) == ["4", "8"]


def _steps(workdir):
    """Finalised checkpoint steps (Orbax renames a complete save to its step number)."""
    path = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _start(workdir, data_dir, env):
    return subprocess.Popen(
        cli(workdir, data_dir, *REFERENCE_FLAGS),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint_after(proc, workdir, after, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [s for s in _steps(workdir) if s > after]
        if steps:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"run ended before a checkpoint after step {after}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def _results(workdir):
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMING_KEYS}


def test_sigkill_then_sigterm_then_resume_equals_uninterrupted_run(
    tmp_path, reference_run, tiny_data_dir, subprocess_env
):
    workdir = str(tmp_path / "run")
    total = 60

    # 1. SIGKILL right after the first checkpoint (mid-training, mid-async-save at worst).
    proc = _start(workdir, tiny_data_dir, subprocess_env)
    first = _wait_for_checkpoint_after(proc, workdir, 0)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _steps(workdir)[-1]
    assert first <= killed_at < total

    # 2. Resume; SIGTERM after its next checkpoint: checkpoint at the next step, exit 0.
    proc = _start(workdir, tiny_data_dir, subprocess_env)
    _wait_for_checkpoint_after(proc, workdir, killed_at)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted: checkpoint at step" in err
    stopped_at = _steps(workdir)[-1]
    assert killed_at < stopped_at
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    # 3. Resume to the end: same results, metrics and final state as without interruption.
    run_cli(subprocess_env, workdir, tiny_data_dir, *REFERENCE_FLAGS)
    assert _steps(workdir)[-1] == total
    assert _results(workdir) == _results(reference_run)

    def metric_lines(w):
        with open(os.path.join(w, "metrics.jsonl"), encoding="utf-8") as f:
            return [
                {k: v for k, v in json.loads(line).items() if k != "tasks_per_second"} for line in f
            ]

    assert metric_lines(workdir) == metric_lines(reference_run)
    config = reference_config(tiny_data_dir)
    resumed, reference = final_state(workdir, config), final_state(reference_run, config)
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    assert int(resumed.step) == total
