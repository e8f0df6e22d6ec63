"""The README's results table is the committed records, rendered (STYLE.md 17): the
committed README agrees with the committed records; a changed record makes ``--check`` fail
until the table is rerendered; mean ± std is what a hand computation gives; missing markers
and bad records are errors that name the problem."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "render_results.py")
README = os.path.join(REPO, "README.md")
RESULTS = os.path.join(REPO, "docs", "results")

_spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
rr = importlib.util.module_from_spec(_spec)
sys.modules["render_results"] = rr  # dataclasses look their module up
_spec.loader.exec_module(rr)


def _record(accuracy, seed, commit="abc1234", wall=600.0, system="springs", n=5, **metrics):
    """A minimal record of the shape experiments/record_run.py writes."""
    return {
        "flagfile": "experiments/flags/demo.flags",
        "config": {"system": system, "num_particles": n, "seed": seed},
        "commit": commit,
        "wall_seconds": wall,
        "metrics": {"edge_accuracy": accuracy, **metrics},
    }


def _write(results_dir, cell, run, seed, record):
    path = os.path.join(results_dir, cell, run, f"seed{seed}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f)  # allow_nan: a bad record is what some tests need
    return path


def _readme(path, block=""):
    text = f"# title\n\nintro\n\n{rr.BEGIN}{block}{rr.END}\n\nafter the table\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _row(text, start):
    """The one table row of ``text`` that starts with ``start``."""
    rows = [line for line in text.splitlines() if line.startswith(start)]
    assert len(rows) == 1, (start, text)
    return rows[0]


# ----------------------------------------------------------------------------------------
# (a) The committed README and the committed records agree.


def test_committed_readme_table_is_the_committed_records_rendered():
    diff = rr.check(README, RESULTS)
    assert diff == "", "README.md's results table differs from docs/results:\n" + diff
    with open(README, encoding="utf-8") as f:
        _, block, _ = rr.split_readme(f.read())
    # Every committed record is in the table: one row per (cell, run).
    runs = {(cell, run) for cell, run, _, _ in rr.find_records(RESULTS)}
    assert runs, "no committed records"
    for cell, run in runs:
        _row(block, f"| {cell} | ours, `{run}` |")


# ----------------------------------------------------------------------------------------
# (b) A changed record makes --check fail; a rerender fixes it, touching only the block.


def test_a_changed_record_fails_check_until_rerendered(tmp_path, capsys):
    results = str(tmp_path / "results")
    shutil.copytree(RESULTS, results)
    readme = str(tmp_path / "README.md")
    shutil.copy(README, readme)
    args = ["--readme", readme, "--results_dir", results]
    assert rr.main(["--check", *args]) == 0

    records = rr.find_records(results)
    cell, run = records[0][:2]
    for other_cell, other_run, _, path in records:  # every seed of that row: its mean is 50%
        if (other_cell, other_run) != (cell, run):
            continue
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record["metrics"]["edge_accuracy"] = 0.5
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)

    assert rr.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "+| " + cell in out and "50.00 ± " in out  # the diff shows the new row

    with open(readme, encoding="utf-8") as f:
        before, _, after = rr.split_readme(f.read())
    assert rr.main(args) == 0
    assert rr.main(["--check", *args]) == 0
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    new_before, block, new_after = rr.split_readme(text)
    assert (new_before, new_after) == (before, after)
    assert f"| {cell} | ours, `{run}` | " in block and "| 50.00 ± " in block


# ----------------------------------------------------------------------------------------
# (c) mean ± std, MSE means, wall, seeds and commits of known records.


def test_two_seeds_render_as_computed_by_hand(tmp_path):
    results = str(tmp_path / "results")
    _write(
        results,
        "springs5",
        "demo",
        0,
        _record(0.9, 0, "abc1234", 600.0, mse_1=1e-3, mse_10=2e-2, mse_20=0.5),
    )
    _write(
        results,
        "springs5",
        "demo",
        1,
        _record(0.8, 1, "def5678", 1200.0, mse_1=3e-3, mse_10=4e-2, mse_20=0.25),
    )
    # By hand: mean (90 + 80) / 2 = 85; std (ddof=1) = sqrt((5^2 + 5^2) / 1) = 7.0711;
    # MSE means 2e-3, 3e-2, 0.375; wall (10 + 20) / 2 = 15 minutes.
    assert math.isclose(math.sqrt(50.0), 7.0710678, rel_tol=1e-7)
    table = rr.render_table(rr.read_summaries(results), published=())
    assert _row(table, "| springs5 |") == (
        "| springs5 | ours, `demo` | 2 | 85.00 ± 7.07 | 2.00e-3 | 3.00e-2 | 3.75e-1 "
        "| 15.0 min | abc1234, def5678 |"
    )
    assert table.splitlines()[0] == (
        "| cell | method | seeds | edge acc. % | MSE 1 | MSE 10 | MSE 20 | wall / seed | commits |"
    )


def test_one_seed_has_no_std_and_auroc_gets_a_column(tmp_path):
    results = str(tmp_path / "results")
    _write(results, "charged5", "one", 0, _record(0.90055, 0, system="charged", auroc=0.95))
    table = rr.render_table(rr.read_summaries(results), published=rr.PUBLISHED)
    assert _row(table, "| charged5 | ours") == (
        "| charged5 | ours, `one` | 1 | 90.05 ± — | 0.950 ± — | — | — | — | 10.0 min | abc1234 |"
    )
    # The published rows come after ours in their cell, with their footnote mark.
    assert _row(table, "| charged5 | Alet") == (
        "| charged5 | Alet et al. 2019 (a) | — | 88.4 | — | 1.03e-3 | 3.11e-3 | — | — | — |"
    )
    lines = table.splitlines()
    assert lines.index(_row(table, "| charged5 | ours")) < lines.index(
        _row(table, "| charged5 | Alet")
    )
    assert "- (a) Alet et al. 2019" in table


def test_format_helpers():
    assert rr.format_mean_std([0.9, 0.8]) == "85.00 ± 7.07"
    assert rr.format_mean_std([0.5]) == "50.00 ± —"
    assert rr.format_sig3(0.0016591066122055053) == "1.66e-3"
    assert rr.format_sig3(3.25e-6) == "3.25e-6"
    assert rr.format_sig3(0.375) == "3.75e-1"
    assert rr.format_sig3(None) == "—"
    cells = ["kuramoto5", "charged10", "springs10", "charged5", "springs5"]
    assert sorted(cells, key=rr.cell_sort_key) == [
        "springs5",
        "springs10",
        "charged5",
        "charged10",
        "kuramoto5",
    ]


# ----------------------------------------------------------------------------------------
# (d) Missing or duplicated markers and bad records are errors naming the problem.


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{rr.BEGIN}\nonly the begin\n",
        f"only the end\n{rr.END}\n",
        f"{rr.BEGIN}\n{rr.END}\n{rr.BEGIN}\n{rr.END}\n",
        f"{rr.END}\n{rr.BEGIN}\n",
    ],
    ids=["none", "no_end", "no_begin", "twice", "reversed"],
)
def test_bad_markers_are_refused_and_the_readme_is_untouched(tmp_path, text):
    readme = str(tmp_path / "README.md")
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(rr.MarkerError, match="results:"):
        rr.main(["--readme", readme, "--results_dir", RESULTS])
    with pytest.raises(rr.MarkerError):
        rr.main(["--check", "--readme", readme, "--results_dir", RESULTS])
    with open(readme, encoding="utf-8") as f:
        assert f.read() == text


@pytest.mark.parametrize(
    "accuracy, message",
    [
        (float("nan"), "edge_accuracy is nan"),
        (float("inf"), "edge_accuracy is inf"),
        (1.5, "edge_accuracy is 1.5"),
        ("0.9", "edge_accuracy is '0.9'"),
        (None, "edge_accuracy is missing"),
    ],
    ids=["nan", "inf", "above_one", "string", "missing"],
)
def test_a_bad_edge_accuracy_names_the_file(tmp_path, accuracy, message):
    results = str(tmp_path / "results")
    _write(results, "springs5", "good", 0, _record(0.9, 0))
    record = _record(accuracy, 1)
    if accuracy is None:
        del record["metrics"]["edge_accuracy"]
    bad = _write(results, "springs5", "bad", 1, record)
    readme = _readme(str(tmp_path / "README.md"))
    with pytest.raises(rr.RecordError) as err:
        rr.main(["--readme", readme, "--results_dir", results])
    assert bad in str(err.value) and message in str(err.value)


def test_other_bad_records_are_errors(tmp_path):
    results = str(tmp_path / "results")
    path = _write(results, "springs5", "run", 0, _record(0.9, 0, mse_1=float("nan")))
    with pytest.raises(rr.RecordError, match=r"seed0\.json: metrics\.mse_1 is nan"):
        rr.read_summaries(results)
    _write(results, "springs5", "run", 0, _record(0.9, 0, system="charged"))
    with pytest.raises(rr.RecordError, match="its config is charged5, but its folder says"):
        rr.read_summaries(results)
    _write(results, "springs5", "run", 0, _record(0.9, 3))
    with pytest.raises(rr.RecordError, match="seed is 3, not 0"):
        rr.read_summaries(results)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{not json")
    with pytest.raises(rr.RecordError, match="not a readable JSON record"):
        rr.read_summaries(results)
    # Some seeds of a run with a metric, others without: the mean would mislead.
    _write(results, "springs5", "run", 0, _record(0.9, 0, mse_1=1e-3))
    _write(results, "springs5", "run", 1, _record(0.9, 1))
    with pytest.raises(rr.RecordError, match="springs5/run: metrics.mse_1 is in some"):
        rr.read_summaries(results)


def test_a_record_at_the_wrong_depth_is_refused(tmp_path):
    """E.g. the first record's old place, docs/results/charged5/seed0.json."""
    results = str(tmp_path / "results")
    _write(results, "charged5", "charged_cpu", 0, _record(0.9, 0, system="charged"))
    stray = os.path.join(results, "charged5", "seed0.json")
    with open(stray, "w", encoding="utf-8") as f:
        json.dump(_record(0.9, 0, system="charged"), f)
    with pytest.raises(rr.RecordError, match="not a record path") as err:
        rr.read_summaries(results)
    assert stray in str(err.value)


def test_the_command_line_prints_an_error_and_exits_2(tmp_path):
    readme = str(tmp_path / "README.md")
    with open(readme, "w", encoding="utf-8") as f:
        f.write("no markers\n")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--check", "--readme", readme],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: the README holds 0 '<!-- results:begin -->'")
