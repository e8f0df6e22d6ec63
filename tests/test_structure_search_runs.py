"""benchmarks/structure_search.py takes its modules and proposal from a meta-training run: a
missing run is an error naming the command that makes it, and settings that belong to the
run (or to one system) are errors instead of silently ignored flags."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "structure_search.py")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--systems=springs", "--springs_workdir={missing}"],
            "python experiments/springs.py --flagfile=experiments/flags/springs_demo.flags "
            "--test_proposal=blocked_gibbs --workdir={missing}",
        ),
        (
            ["--systems=charged", "--workdir={missing}"],
            "--flagfile=experiments/flags/charged_demo.flags --test_proposal=blocked_gibbs "
            "--workdir={missing}",
        ),
        (["--systems=springs,charged", "--workdir={missing}"], "for one system: --systems="),
        (["--systems=", "--edge_hidden=32"], "--edge_hidden (the model's settings come from"),
        (["--systems=", "--meta_regimes=exact"], "unknown --meta_regimes ['exact']"),
    ],
)
def test_run_errors_name_the_fix(tmp_path, args, message):
    missing = str(tmp_path / "no_run")
    args = [a.format(missing=missing) for a in args]
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert message.format(missing=missing) in proc.stderr
