"""Renders the README's results table from the committed run records.

  python experiments/render_results.py           # rewrite the README's table in place
  python experiments/render_results.py --check   # exit 1 and print a diff if it differs

A reported number is a file (STYLE.md 17): every seed of every run is one record,
``docs/results/<cell>/<run>/seed<k>.json`` (``<cell>`` the system and its object count,
e.g. ``charged5``; ``<run>`` the flagfile's stem, e.g. ``charged_cpu``), written by
``experiments/record_run.py``. This script reads every record, checks it, and renders one
row per (cell, run): edge accuracy mean ± std over the seeds (std with ddof=1; "—" for one
seed), AUROC when the records hold it, MSE 1 / 10 / 20 steps (mean), wall time per seed,
the number of seeds and the commits; beside them the published figures of
:data:`PUBLISHED`, each with its citation. Only the block between the README's markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` is written; a README without
exactly one of each is refused. ``tests/test_results_tables.py`` fails when the committed
README and the committed records disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
# Systems in the order the table shows them; others follow alphabetically.
SYSTEM_ORDER = ("springs", "charged", "kuramoto")
# Metrics a record may hold besides edge accuracy, rendered as a mean over the seeds.
MSE_KEYS = ("mse_1", "mse_10", "mse_20")
RECORD_NAME = re.compile(r"^seed(\d+)\.json$")
CELL_NAME = re.compile(r"^([a-z]+)(\d+)$")


class RecordError(ValueError):
    """A record that cannot be rendered (its path names it)."""


class MarkerError(ValueError):
    """A README without exactly one begin and one end marker, in that order."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One publication the published rows cite (a footnote under the table)."""

    key: str  # the footnote's mark, e.g. "a"
    citation: str


@dataclasses.dataclass(frozen=True)
class Published:
    """A published figure: test edge accuracy (%) and, where given, MSE (normalised)."""

    cell: str
    method: str
    edge_accuracy: float
    mse_1: float | None
    mse_10: float | None
    source: Source


ALET = Source(
    "a",
    "Alet et al. 2019, *Neural relational inference with fast modular meta-learning*, "
    "NeurIPS 2019, section 5.1: edge accuracy from its Table 2, MSE (1 and 10 steps) from "
    "its Table 1.",
)
KIPF_IN_ALET = Source(
    "b",
    "NRI, Kipf et al. 2018, *Neural relational inference for interacting systems*, ICML "
    "2018; the figures as Alet et al. 2019 re-report them (its Table 2 for accuracy, "
    'Table 1 for MSE, rows "(Kipf et al., 2018)").',
)
# Only figures read in their source. Not here because they could not be checked against
# the paper's own table: NRI's Kuramoto and 10-object accuracies (Kipf et al. 2018,
# Table 1) and NRI-MPM's (Chen et al. 2021, AAAI).
PUBLISHED = (
    Published("springs5", "Alet et al. 2019", 99.9, 3.13e-8, 3.25e-6, ALET),
    Published("springs5", "NRI, Kipf et al. 2018", 99.9, 3.12e-8, 3.29e-6, KIPF_IN_ALET),
    Published("charged5", "Alet et al. 2019", 88.4, 1.03e-3, 3.11e-3, ALET),
    Published("charged5", "NRI, Kipf et al. 2018", 82.1, 1.05e-3, 3.21e-3, KIPF_IN_ALET),
)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One (cell, run) over its seeds, as the table shows it."""

    cell: str
    run: str
    seeds: tuple[int, ...]
    edge_accuracy: tuple[float, ...]  # per seed, fraction in [0, 1]
    auroc: tuple[float, ...] | None  # per seed, or None when no record holds it
    mse: dict[str, float | None]  # mean over seeds; None when no record holds it
    wall_minutes: float  # mean over seeds
    commits: tuple[str, ...]  # in seed order, each once


# ----------------------------------------------------------------------------------------
# Reading and checking records.


def _finite_number(value) -> bool:
    """True for an int or float (not a bool) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def find_records(results_dir: str) -> list[tuple[str, str, int, str]]:
    """Every record under ``results_dir``, as ``(cell, run, seed, path)``, sorted.

    Raises:
      FileNotFoundError: ``results_dir`` does not exist.
      RecordError: a file under it is not ``<cell>/<run>/seed<k>.json`` (e.g. a record
        left at the old depth ``<cell>/seed<k>.json``), or a cell is not ``<system><n>``.
    """
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"no records folder {results_dir}")
    found = []
    for root, _, files in os.walk(results_dir):
        for name in files:
            path = os.path.join(root, name)
            parts = os.path.relpath(path, results_dir).split(os.sep)
            match = RECORD_NAME.match(name)
            if len(parts) != 3 or not match:
                raise RecordError(
                    f"{path}: not a record path; expected {results_dir}/<cell>/<run>/seed<k>.json"
                )
            if not CELL_NAME.match(parts[0]):
                raise RecordError(
                    f"{path}: cell {parts[0]!r} is not <system><objects> (e.g. charged5)"
                )
            found.append((parts[0], parts[1], int(match.group(1)), path))
    return sorted(found)


def load_record(path: str, cell: str, seed: int) -> dict:
    """Reads one record and checks what the table needs from it.

    Args:
      path: the record's file.
      cell: the cell its folder names (must match its config's system and object count).
      seed: the seed its file name gives (must match its config's seed).

    Returns:
      The record as parsed.

    Raises:
      RecordError: naming the file: not JSON; edge accuracy missing, non-finite or outside
        [0, 1]; an optional metric (MSE, AUROC) non-finite; no finite wall time; no
        commit; folder or file name not matching the config.
    """
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable JSON record ({err})") from err
    metrics = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(metrics, dict):
        raise RecordError(f"{path}: no 'metrics' object")
    accuracy = metrics.get("edge_accuracy")
    if accuracy is None:
        raise RecordError(f"{path}: metrics.edge_accuracy is missing")
    if not _finite_number(accuracy) or not 0.0 <= accuracy <= 1.0:
        raise RecordError(
            f"{path}: metrics.edge_accuracy is {accuracy!r}, not a finite fraction in [0, 1]"
        )
    for key in (*MSE_KEYS, "auroc"):
        value = metrics.get(key)
        if value is not None and not _finite_number(value):
            raise RecordError(f"{path}: metrics.{key} is {value!r}, not a finite number")
    if not _finite_number(record.get("wall_seconds")) or record["wall_seconds"] < 0:
        raise RecordError(f"{path}: wall_seconds is {record.get('wall_seconds')!r}")
    if not isinstance(record.get("commit"), str) or not record["commit"]:
        raise RecordError(f"{path}: no commit")
    config = record.get("config") or {}
    named = f"{config.get('system')}{config.get('num_particles')}"
    if named != cell:
        raise RecordError(f"{path}: its config is {named}, but its folder says {cell}")
    if config.get("seed") != seed:
        raise RecordError(f"{path}: its config's seed is {config.get('seed')!r}, not {seed}")
    return record


def _optional_per_seed(records, key, cell, run) -> tuple[float, ...] | None:
    """``metrics[key]`` of every seed, None if no seed holds it; some but not all: error."""
    values = [r["metrics"].get(key) for r in records]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise RecordError(
            f"{cell}/{run}: metrics.{key} is in some seeds' records but not all; "
            "rerun or record the rest"
        )
    return tuple(values)


def summarize(cell: str, run: str, seeds: list[int], records: list[dict]) -> RunSummary:
    """One run's seeds, reduced to what the table shows."""
    mse = {}
    for key in MSE_KEYS:
        values = _optional_per_seed(records, key, cell, run)
        mse[key] = None if values is None else statistics.fmean(values)
    commits = tuple(dict.fromkeys(r["commit"] for r in records))
    return RunSummary(
        cell=cell,
        run=run,
        seeds=tuple(seeds),
        edge_accuracy=tuple(r["metrics"]["edge_accuracy"] for r in records),
        auroc=_optional_per_seed(records, "auroc", cell, run),
        mse=mse,
        wall_minutes=statistics.fmean(r["wall_seconds"] for r in records) / 60.0,
        commits=commits,
    )


def read_summaries(results_dir: str) -> list[RunSummary]:
    """Every (cell, run) under ``results_dir``, summarised (see :func:`find_records`)."""
    runs: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for cell, run, seed, path in find_records(results_dir):
        runs.setdefault((cell, run), []).append((seed, load_record(path, cell, seed)))
    return [
        summarize(cell, run, [s for s, _ in items], [r for _, r in items])
        for (cell, run), items in runs.items()
    ]


# ----------------------------------------------------------------------------------------
# Formatting.


def format_mean_std(values, scale: float = 100.0, decimals: int = 2) -> str:
    """``mean ± std`` of ``values * scale`` (std with ddof=1; "—" for one value).

    A mean that rounds to the scale without being it gets one more decimal each time (one
    wrong edge in 20,000 is 99.995, never "100.00").

    >>> format_mean_std([0.9, 0.8])
    '85.00 ± 7.07'
    >>> format_mean_std([0.99995])
    '99.995 ± —'
    """
    scaled = [v * scale for v in values]
    mean_value = statistics.fmean(scaled)
    while (
        decimals < 6
        and mean_value != scale
        and f"{mean_value:.{decimals}f}" == f"{scale:.{decimals}f}"
    ):
        decimals += 1
    mean = f"{mean_value:.{decimals}f}"
    std = f"{statistics.stdev(scaled):.{decimals}f}" if len(scaled) > 1 else "—"
    return f"{mean} ± {std}"


def format_sig3(value: float | None) -> str:
    """3 significant figures in the README's style (``1.66e-3``); "—" for None."""
    if value is None:
        return "—"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def cell_sort_key(cell: str) -> tuple:
    """springs, charged, kuramoto (then others alphabetically), each by object count."""
    system, objects = CELL_NAME.match(cell).groups()
    order = SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER)
    return (order, system, int(objects))


def render_table(summaries: list[RunSummary], published=PUBLISHED) -> str:
    """The markdown table (ours and the published rows, by cell) and its footnotes."""
    with_auroc = any(s.auroc is not None for s in summaries)
    header = ["cell", "method", "seeds", "edge acc. %"]
    header += ["AUROC"] if with_auroc else []
    header += ["MSE 1", "MSE 10", "MSE 20", "wall / seed", "commits"]
    rows = []
    cells = sorted({s.cell for s in summaries} | {p.cell for p in published}, key=cell_sort_key)
    for cell in cells:
        for s in sorted((s for s in summaries if s.cell == cell), key=lambda s: s.run):
            row = [cell, f"ours, `{s.run}`", str(len(s.seeds))]
            row += [format_mean_std(s.edge_accuracy)]
            if with_auroc:
                row += [format_mean_std(s.auroc, 1.0, 3) if s.auroc else "—"]
            row += [format_sig3(s.mse[k]) for k in MSE_KEYS]
            row += [f"{s.wall_minutes:.1f} min", ", ".join(s.commits)]
            rows.append(row)
        for p in (p for p in published if p.cell == cell):
            row = [cell, f"{p.method} ({p.source.key})", "—", f"{p.edge_accuracy:.1f}"]
            row += ["—"] if with_auroc else []
            row += [format_sig3(p.mse_1), format_sig3(p.mse_10), "—", "—", "—"]
            rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    sources = sorted({p.source for p in published}, key=lambda s: s.key)
    lines.append("")
    lines += [f"- ({s.key}) {s.citation}" for s in sources]
    return "\n".join(lines)


def render_block(results_dir: str) -> str:
    """What belongs between the README's markers (markers excluded), newline-framed."""
    note = (
        "<!-- Rendered by `python experiments/render_results.py` from "
        "docs/results/<cell>/<run>/seed<k>.json: edit the records, never this table. -->"
    )
    return f"\n{note}\n\n{render_table(read_summaries(results_dir))}\n\n"


# ----------------------------------------------------------------------------------------
# The README's block.


def split_readme(text: str) -> tuple[str, str, str]:
    """``(before, block, after)`` around the one pair of markers (markers kept outside).

    Raises:
      MarkerError: a marker is missing or appears more than once, or end precedes begin.
    """
    for marker in (BEGIN, END):
        count = text.count(marker)
        if count != 1:
            raise MarkerError(
                f"the README holds {count} {marker!r} markers; it needs exactly one "
                f"{BEGIN!r} followed by one {END!r} around the results table"
            )
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    if stop < start:
        raise MarkerError(f"{END!r} comes before {BEGIN!r} in the README")
    return text[:start], text[start:stop], text[stop:]


def check(readme: str, results_dir: str) -> str:
    """A unified diff from the README's block to the rendered one; empty when equal."""
    with open(readme, encoding="utf-8") as f:
        _, block, _ = split_readme(f.read())
    rendered = render_block(results_dir)
    return "".join(
        difflib.unified_diff(
            block.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{readme} (results block)",
            tofile=f"rendered from {results_dir}",
        )
    )


def rewrite(readme: str, results_dir: str) -> bool:
    """Writes the rendered block into the README; True if it changed."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    before, block, after = split_readme(text)
    rendered = render_block(results_dir)
    if rendered == block:
        return False
    with open(readme, "w", encoding="utf-8") as f:
        f.write(before + rendered + after)
    return True


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the README's block is (now) the rendered one, 1 when
    ``--check`` finds it differs. Errors in records or markers raise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Diff only; exit 1 if it differs.")
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    parser.add_argument("--results_dir", default=os.path.join(REPO, "docs", "results"))
    args = parser.parse_args(argv)
    if args.check:
        diff = check(args.readme, args.results_dir)
        if diff:
            print(diff, end="")
            print(
                f"{args.readme}: the results table differs from the records; "
                "run python experiments/render_results.py",
                file=sys.stderr,
            )
            return 1
        return 0
    changed = rewrite(args.readme, args.results_dir)
    print(f"{args.readme}: results table {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RecordError, MarkerError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
