"""Runs one cell of the benchmark grid for S training seeds and records each run.

  python experiments/run_cell.py --flagfile_used=experiments/flags/springs_cpu.flags \\
      --seeds=0,1,2 [--run=springs_cpu] [--load="idle"]

The data stay fixed (the flagfile's --data_seed); only the model seed varies. For each seed
k whose record docs/results/<cell>/<run>/seed<k>.json does not exist yet, it runs the
system's experiment script (experiments/<system>.py --flagfile=... --seed=k
--workdir=<runs_dir>/<run>_seed<k>; an interrupted run resumes from its checkpoint), then
writes the run's record (experiments/record_run.py: flags, commit, machine and load, wall,
metrics). Seeds already recorded are skipped, so a study spread over sessions (or
machines) goes on where it stopped. Finally it re-renders the README's results table
(experiments/render_results.py). A run from a tree with uncommitted changes is refused: its
record's commit would not be the code that ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _define_flags() -> None:
    """The command's flags (defined only when run: tests import this module's functions
    beside other scripts' flags)."""
    flags.DEFINE_string("flagfile_used", None, "The cell's flagfile.", required=True)
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds to run.")
    flags.DEFINE_string("run", None, "The run's name in the records (default: flagfile stem).")
    flags.DEFINE_string("runs_dir", "runs", "Where the workdirs go.")
    flags.DEFINE_string("results_dir", os.path.join(REPO, "docs", "results"), "The records' root.")
    flags.DEFINE_string("load", "idle", "The machine's load while the runs ran.")
    flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")


def flagfile_values(path: str) -> dict[str, str]:
    """``{flag: value}`` of a flagfile's ``--name=value`` lines."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


def cell_of(values: dict[str, str]) -> str:
    """``<system><objects>`` (e.g. ``springs5``) of a flagfile's values."""
    system = values.get("system")
    if not system:
        raise ValueError("the flagfile has no --system: run_cell runs the benchmark grid's cells")
    return f"{system}{values.get('num_particles', '5')}"


def commands(flagfile: str, seeds: list[int], run: str, runs_dir: str, results_dir: str):
    """``[(seed, record path, train command, workdir)]`` of the seeds not yet recorded."""
    values = flagfile_values(flagfile)
    cell = cell_of(values)
    script = os.path.join(REPO, "experiments", f"{values['system']}.py")
    todo = []
    for seed in seeds:
        record = os.path.join(results_dir, cell, run, f"seed{seed}.json")
        if os.path.exists(record):
            continue
        workdir = os.path.join(runs_dir, f"{run}_seed{seed}")
        train = [
            sys.executable,
            script,
            f"--flagfile={flagfile}",
            f"--seed={seed}",
            f"--workdir={workdir}",
        ]
        todo.append((seed, record, train, workdir))
    return todo


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def run_seed(seed, record, train, workdir, commit, flagfile, load) -> bool:
    """Runs one seed's training (resuming its checkpoint) and records it; False when the
    run stopped before it finished (preempted: a checkpoint, exit code 0), so there is
    nothing to record yet."""
    print(f"seed {seed}: {' '.join(train)}", flush=True)
    start = time.time()
    subprocess.run(train, cwd=REPO, check=True)
    wall = time.time() - start
    if not os.path.exists(os.path.join(REPO, workdir, "results.json")):
        print(
            f"seed {seed}: stopped before it finished (checkpoint in {workdir}); rerun this "
            "command to resume it",
            flush=True,
        )
        return False
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "experiments", "record_run.py"),
            f"--workdir={workdir}",
            f"--flagfile_used={flagfile}",
            f"--extra_flags=--seed={seed},--workdir={workdir}",
            f"--commit={commit}",
            f"--load={load}",
            f"--out={record}",
        ],
        cwd=REPO,
        check=True,
    )
    print(f"seed {seed}: {wall / 60:.1f} min; recorded in {record}", flush=True)
    return True


def main(argv):
    del argv
    flagfile = flags.FLAGS.flagfile_used
    run = flags.FLAGS.run or os.path.splitext(os.path.basename(flagfile))[0]
    seeds = [int(s) for s in flags.FLAGS.seeds]
    todo = commands(flagfile, seeds, run, flags.FLAGS.runs_dir, flags.FLAGS.results_dir)
    done = sorted(set(seeds) - {seed for seed, *_ in todo})
    print(f"{run}: seeds {done} recorded already; to run: {[seed for seed, *_ in todo]}")
    if flags.FLAGS.dry_run:
        for _, record, train, _ in todo:
            print(" ".join(train), "->", record)
        return
    if todo and _git("status", "--porcelain", "--untracked-files=no"):
        raise RuntimeError(
            "the tree has uncommitted changes: commit them first (a record names the commit "
            "that ran)"
        )
    commit = _git("rev-parse", "--short=7", "HEAD") if todo else ""
    for seed, record, train, workdir in todo:
        if not run_seed(seed, record, train, workdir, commit, flagfile, flags.FLAGS.load):
            return
    subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "render_results.py")],
        cwd=REPO,
        check=True,
    )


if __name__ == "__main__":
    from nri_modular import cli

    _define_flags()

    cli.run_main(main)
