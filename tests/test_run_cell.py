"""experiments/run_cell.py: which seeds of a grid cell still need a run, and their commands."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "experiments"))
import run_cell  # noqa: E402

sys.path.pop(0)


def test_commands_skip_recorded_seeds(tmp_path):
    flagfile = os.path.join(REPO, "experiments", "flags", "kuramoto10_cpu.flags")
    values = run_cell.flagfile_values(flagfile)
    assert run_cell.cell_of(values) == "kuramoto10"
    recorded = tmp_path / "kuramoto10" / "kuramoto10_cpu" / "seed1.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text("{}")
    todo = run_cell.commands(flagfile, [0, 1, 2], "kuramoto10_cpu", "runs", str(tmp_path))
    assert [seed for seed, *_ in todo] == [0, 2]
    seed, record, train, workdir = todo[1]
    assert record == str(tmp_path / "kuramoto10" / "kuramoto10_cpu" / "seed2.json")
    assert train[1].endswith(os.path.join("experiments", "kuramoto.py"))
    assert train[2:] == [
        f"--flagfile={flagfile}",
        "--seed=2",
        "--workdir=runs/kuramoto10_cpu_seed2",
    ]
    assert workdir == "runs/kuramoto10_cpu_seed2"


def test_default_objects_and_own_data_refused(tmp_path):
    assert run_cell.cell_of({"system": "charged"}) == "charged5"
    own = os.path.join(REPO, "experiments", "flags", "own_demo.flags")
    with pytest.raises(ValueError, match="no --system"):
        run_cell.cell_of(run_cell.flagfile_values(own))


def test_a_preempted_seed_is_not_recorded(tmp_path, monkeypatch):
    calls = []

    def fake_run(args, **kwargs):  # training "preempted": exit 0, no results.json
        calls.append(args)

    monkeypatch.setattr(run_cell.subprocess, "run", fake_run)
    record = tmp_path / "seed0.json"
    done = run_cell.run_seed(
        0, str(record), ["python", "train"], str(tmp_path / "w"), "abc1234", "f.flags", "idle"
    )
    assert done is False and calls == [["python", "train"]]  # record_run never called
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "results.json").write_text("{}")
    assert run_cell.run_seed(
        0, str(record), ["python", "train"], str(tmp_path / "w"), "abc1234", "f.flags", "idle"
    )
    assert calls[-1][1].endswith("record_run.py") and f"--out={record}" in calls[-1]


def test_scripts_define_their_flags_only_when_run(subprocess_env):
    """Tests import these scripts' functions beside every Config flag (one pytest worker):
    importing them must define no flag (a DuplicateFlagError otherwise, as CI saw)."""
    import subprocess

    scripts = [
        "examples/particles3d.py",
        "experiments/choose_k.py",
        "experiments/run_cell.py",
        "experiments/export_pretrained.py",
    ]
    code = (
        "import importlib.util, sys\n"
        "from absl import flags\n"
        "from nri_modular import config\n"
        "config.define_flags(flags)\n"
        "flags.DEFINE_string('load', 'x', 'as record_run.py')\n"
        "for path in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location('m' + str(hash(path)), path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *scripts],
        env=subprocess_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
