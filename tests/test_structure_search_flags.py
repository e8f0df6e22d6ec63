"""benchmarks/structure_search.py reads Config flags: an old flag name is an error naming the new
one, and a Config flag it would ignore is an error too (never a silently unused setting):
settings only meta-training reads (its stride, loss) are errors without --meta_train_compare,
since the searches take them from meta-test's settings of the searched run."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "structure_search.py")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--hidden=64", "--hidden was renamed: use --edge_hidden and --node_hidden"),
        ("--sa_steps=400", "the search's steps are --test_sa_steps"),
        ("--test_proposal=exact_local", "not read by this benchmark: --test_proposal"),
        # Method (d) scores at meta-test's stride; --exact_stride is meta-training's only.
        ("--exact_stride=4", "method (d) scores with meta-test's stride"),
        # The searches use the run's own loss; --loss is meta-training's only.
        ("--loss=huber", "--loss is only read by --meta_train_compare; the searches use"),
    ],
)
def test_old_and_unused_flags_are_errors(flag, message):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--systems=", flag], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert message in proc.stderr
