"""Writes a finished run's small record (flags, commit, machine and load, wall, metrics).

  python experiments/record_run.py --workdir=runs/charged_cpu \
      --flagfile_used=experiments/flags/charged_cpu.flags --commit=a82a28b \
      --load="niced, beside the test suite" \
      --out=docs/results/charged5/charged_cpu/seed0.json

Reads only the run's folder (results.json, run.json) and the flagfile it ran with; never
overwrites an existing record.
"""

import json
import os
import platform

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "The finished run's folder.", required=True)
_FLAGFILE = flags.DEFINE_string("flagfile_used", None, "The flagfile it ran with.", required=True)
_EXTRA = flags.DEFINE_list("extra_flags", [], "Flags given beside the flagfile.")
_COMMIT = flags.DEFINE_string("commit", None, "The commit it ran at.", required=True)
_LOAD = flags.DEFINE_string("load", "idle", "The machine's load while it ran.")
_WALL = flags.DEFINE_float("wall_seconds", None, "Measured wall time (default: results').")
_OUT = flags.DEFINE_string("out", None, "The record's path (.json).", required=True)
_SCORES = flags.DEFINE_string(
    "scores", None, "A JSON of further numbers measured on the run (e.g. an example's score)."
)


def main(argv):
    del argv
    if os.path.exists(_OUT.value):
        raise FileExistsError(f"{_OUT.value} exists: a record is never overwritten")
    with open(os.path.join(_WORKDIR.value, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    with open(os.path.join(_WORKDIR.value, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    with open(_FLAGFILE.value, encoding="utf-8") as f:
        flag_lines = [ln.strip() for ln in f if ln.strip().startswith("--")]
    record = {
        "flagfile": _FLAGFILE.value,
        "flags": flag_lines + list(_EXTRA.value),
        "config": run["config"],
        "commit": _COMMIT.value,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "load": _LOAD.value,
        "wall_seconds": _WALL.value if _WALL.value is not None else results["wall_seconds"],
        "metrics": {k: v for k, v in results.items() if k != "mse_per_step"},
        "mse_per_step": results.get("mse_per_step"),
    }
    if _SCORES.value:
        with open(_SCORES.value, encoding="utf-8") as f:
            record["scores"] = json.load(f)
        record["scores_file"] = _SCORES.value
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, allow_nan=False)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
