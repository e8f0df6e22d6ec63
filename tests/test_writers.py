"""Metric writers: JSONL with resume truncation, TensorBoard only when asked."""

import glob
import json
import os
import sys

import pytest

from nri_modular import writers


def _steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f]


def test_jsonl_appends_and_a_resumed_run_drops_lines_after_its_checkpoint(tmp_path):
    workdir = str(tmp_path)
    with writers.MetricWriter(workdir) as w:
        for step in (2, 4, 6, 8):
            w.write({"loss": 1.0 / step, "step": step})
    assert _steps(workdir) == [2, 4, 6, 8]
    with writers.MetricWriter(workdir, resume_step=4) as w:  # checkpoint 4: redo 6 and 8
        assert _steps(workdir) == [2, 4]
        w.write({"loss": 0.5, "step": 6})
    assert _steps(workdir) == [2, 4, 6]


def test_a_record_without_step_is_refused(tmp_path):
    with writers.MetricWriter(str(tmp_path)) as w, pytest.raises(ValueError, match="'step'"):
        w.write({"loss": 1.0})


def test_tensorboard_missing_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"optional extra \[tensorboard\]"):
        writers.MetricWriter(str(tmp_path), tensorboard=True)


def test_tensorboard_events_written_when_asked(tmp_path):
    pytest.importorskip("tensorboardX")
    workdir = str(tmp_path)
    with writers.MetricWriter(workdir) as w:
        w.write({"loss": 1.0, "step": 1})
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))
    with writers.MetricWriter(workdir, tensorboard=True) as w:
        w.write({"grad_norm_tb": 2.5, "step": 3})
    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    with open(events, "rb") as f:
        assert b"grad_norm_tb" in f.read()
    assert _steps(workdir) == [1, 3]
