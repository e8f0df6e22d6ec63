"""The files of a dataset on disk: their names, reading them safely, what a folder holds,
and whether we may write into it.

Names (Kipf et al.'s layout; NRI's Kuramoto one): ``{kind}_{split}_{system}{n}.npy`` with
``kind`` in :func:`kinds` (``loc`` / ``vel`` / ``edges``, or ``feat`` / ``edges``) and
``meta_{system}{n}.json`` beside the datasets we wrote. A folder holding anything we did not
write is never written into (:func:`check_writable`); a dataset we wrote is recognised by
its meta file and by sample hashes of its files (:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from nri_modular.data import kuramoto, physics

SPLITS = ("train", "valid", "test")
# The one list of the systems we simulate (config's flags and the generator read it).
SYSTEMS = (*physics.SYSTEMS, kuramoto.NAME)
# Files of a split, per system layout: the first kind holds the states (its first axis is
# the number of simulations).
_KINDS = {"springs": ("loc", "vel", "edges"), "charged": ("loc", "vel", "edges")}
_KINDS[kuramoto.NAME] = ("feat", "edges")


def file_name(kind: str, split: str, system: str, num_particles: int) -> str:
    """``"{kind}_{split}_{system}{n}.npy"``, e.g. ``loc_train_springs5.npy``."""
    return f"{kind}_{split}_{system}{num_particles}.npy"


def meta_file_name(system: str, num_particles: int) -> str:
    """``"meta_{system}{n}.json"``: the generation arguments of a dataset we wrote."""
    return f"meta_{system}{num_particles}.json"


def check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")


def kinds(system: str) -> tuple[str, ...]:
    """The file kinds of one split: ``("loc", "vel", "edges")`` (springs, charged) or
    ``("feat", "edges")`` (Kuramoto); the first holds the states."""
    check_system(system)
    return _KINDS[system]


def split_file_names(split: str, system: str, num_particles: int) -> list[str]:
    """The ``.npy`` names of one split of a dataset, states first."""
    return [file_name(k, split, system, num_particles) for k in kinds(system)]


def dataset_file_names(system: str, num_particles: int) -> list[str]:
    """Every ``.npy`` name of a dataset's three splits."""
    return [n for split in SPLITS for n in split_file_names(split, system, num_particles)]


def check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {tuple(splits)}")
    return tuple(splits)


# ----------------------------------------------------------------------------------------
# Reading.


def load_array(path: str, mmap: bool = False) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"missing dataset file {path}; generate it with `python -m "
            "nri_modular.data.generate` or use ensure_dataset()"
        )
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot be read ({type(e).__name__}: {e}); a file is damaged or "
            "truncated: delete it (or the directory) to regenerate"
        ) from e
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"{path}: expected a real-valued (float or integer) array, got dtype {array.dtype}"
        )
    return array


def check_finite(array: np.ndarray, path: str, chunk: int = 4096) -> None:
    """Raises naming the file, the count and the first index of NaN/inf values."""
    for start in range(0, array.shape[0], chunk):
        bad = ~np.isfinite(array[start : start + chunk])
        if bad.any():
            first = np.argwhere(bad)[0]
            first[0] += start
            total = int(bad.sum()) + sum(
                int((~np.isfinite(array[s : s + chunk])).sum())
                for s in range(start + chunk, array.shape[0], chunk)
            )
            raise ValueError(
                f"{path}: {total} non-finite values (NaN/inf), "
                f"first at index {tuple(int(i) for i in first)}"
            )


# Kipf's layout: {kind}_{split}_{system}{n}.npy (ours, the released files, the reference
# NRI generator's output).
_KIPF_FILE = re.compile(r"^(loc|vel|feat|edges)_(train|valid|test)_([A-Za-z_]+?)(\d+)\.npy$")


def folder_datasets(data_dir: str) -> dict[tuple[str, int], dict]:
    """The Kipf-layout datasets a folder holds, whoever wrote them.

    Args:
      data_dir: any directory (missing: empty result).

    Returns:
      ``{(system, n): {"splits": {split: sims or None}, "kinds": {split: kinds},
      "ours": bool}}``: ``sims`` is the ``loc`` file's first axis (None when it is
      missing or unreadable); ``ours`` means ``meta_{system}{n}.json`` is present and
      readable, i.e. :func:`generate_dataset` wrote the files.
    """
    if not os.path.isdir(data_dir):
        return {}
    found: dict[tuple[str, int], dict] = {}
    for name in sorted(os.listdir(data_dir)):
        match = _KIPF_FILE.match(name)
        if match is None:
            continue
        kind, split, system, n = match.groups()
        entry = found.setdefault((system, int(n)), {"splits": {}, "kinds": {}})
        entry["kinds"].setdefault(split, []).append(kind)
        if kind in ("loc", "feat"):  # the states: their first axis counts simulations
            try:
                shape = np.load(os.path.join(data_dir, name), mmap_mode="r").shape
                entry["splits"][split] = int(shape[0]) if shape else None
            except (EOFError, OSError, ValueError):
                entry["splits"][split] = None
        else:
            entry["splits"].setdefault(split, None)
    for (system, n), entry in found.items():
        meta_path = os.path.join(data_dir, meta_file_name(system, n))
        entry["ours"] = os.path.exists(meta_path) and read_meta(meta_path) is not None
    return found


def describe_datasets(datasets_found: Mapping[tuple[str, int], dict]) -> str:
    """One line per dataset of :func:`folder_datasets`, e.g.
    ``springs10 (train 50000, valid 10000 simulations; no meta file: not written by us)``."""
    parts = []
    for (system, n), entry in sorted(datasets_found.items()):
        splits = ", ".join(
            f"{split} {'?' if sims is None else sims}"
            for split, sims in sorted(entry["splits"].items(), key=lambda kv: SPLITS.index(kv[0]))
        )
        origin = "ours" if entry["ours"] else f"no {meta_file_name(system, n)}: not written by us"
        parts.append(f"{system}{n} ({splits} simulations; {origin})")
    return "; ".join(parts)


def fingerprint(
    data_dir: str, system: str, num_particles: int, split: str = "train", sample_rows: int = 16
) -> dict:
    """What identifies a split's data wherever its folder is: file names, shapes, a hash.

    The hash (SHA-256) covers ``sample_rows`` rows at fixed, evenly spaced indices of each
    of the split's ``loc`` / ``vel`` / ``edges`` files (memory-mapped: cheap at any size),
    so another seed, size, system or particle count changes it, and moving or copying the
    folder does not.

    Returns:
      ``{"files": {name: shape}, "sample_rows": [...], "sha256": hex}``.
    """
    return fingerprint_files(data_dir, split_file_names(split, system, num_particles), sample_rows)


def fingerprint_files(data_dir: str, names: Sequence[str], sample_rows: int = 16) -> dict:
    """:func:`fingerprint` of the files ``names`` (the first one's rows are sampled)."""
    files, digest = {}, hashlib.sha256()
    rows = None
    for name in names:
        array = load_array(os.path.join(data_dir, name), mmap=True)
        files[name] = list(array.shape)
        if rows is None:
            count = min(sample_rows, array.shape[0])
            rows = np.unique(np.linspace(0, array.shape[0] - 1, count).astype(np.int64))
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array[rows], np.float64).tobytes())
    return {"files": files, "sample_rows": rows.tolist(), "sha256": digest.hexdigest()}


def our_files(data_dir: str) -> set[str]:
    """The names in ``data_dir`` that :func:`generate_dataset` wrote: each readable
    ``meta_{system}{n}.json`` and the ``.npy`` files of its dataset (nine; Kuramoto six)."""
    if not os.path.isdir(data_dir):
        return set()
    ours = set()
    for name in os.listdir(data_dir):
        match = re.fullmatch(r"meta_([A-Za-z_]+?)(\d+)\.json", name)
        if match is None or read_meta(os.path.join(data_dir, name)) is None:
            continue
        system, n = match.group(1), int(match.group(2))
        ours.add(name)
        names = _KINDS.get(system, _KINDS["springs"])
        ours.update(file_name(k, sp, system, n) for sp in SPLITS for k in names)
    return ours


def foreign_files(data_dir: str) -> list[str]:
    """What ``data_dir`` holds that we did not write (files and folders), sorted."""
    if not os.path.isdir(data_dir):
        return []
    ours = our_files(data_dir)
    return sorted(name for name in os.listdir(data_dir) if name not in ours)


def listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# Any dataset's files, ours or one's own: {kind}_{split}_{name}.npy (nri_modular.data.own).
ANY_FILE = re.compile(r"^(loc|vel|feat|edges)_(train|valid|test)_(.+)\.npy$")


def folder_names(data_dir: str) -> dict[str, dict[str, list[str]]]:
    """The datasets a folder holds by name: ``{name: {split: [kinds]}}``."""
    found: dict[str, dict[str, list[str]]] = {}
    if not os.path.isdir(data_dir):
        return found
    for entry in sorted(os.listdir(data_dir)):
        match = ANY_FILE.match(entry)
        if match:
            kind, split, name = match.groups()
            found.setdefault(name, {}).setdefault(split, []).append(kind)
    return found


def check_writable(data_dir: str) -> None:
    """Raises unless every entry of ``data_dir`` was written by us (or it is empty/missing).

    A folder holding anything without our ``meta_{system}{n}.json`` naming it (Kipf's
    released files, the reference generator's output, a user's own ``loc_train_mydata.npy``,
    a notes file) is never written into.

    Raises:
      ValueError: naming the folder and what it holds.
      NotADirectoryError: ``data_dir`` is a file, or a link to nothing (a dangling or
        looping symlink).
    """
    if os.path.lexists(data_dir) and not os.path.isdir(data_dir):
        what = "a symlink to nothing" if os.path.islink(data_dir) else "not a directory"
        raise NotADirectoryError(f"data_dir {data_dir!r} is {what}: cannot write a dataset there")
    foreign = foreign_files(data_dir)
    if foreign:
        held = {k: e for k, e in folder_datasets(data_dir).items() if not e["ours"]}
        datasets_held = f" ({describe_datasets(held)})" if held else ""
        named = sorted(folder_names(data_dir))
        hint = (
            f". It holds datasets named {', '.join(named)}: to train on one, run "
            f"experiments/train.py --data_dir={data_dir} --dataset=NAME"
            if named
            else ""
        )
        raise ValueError(
            f"{data_dir} holds files we did not write: {listing(foreign)}{datasets_held}; "
            "refusing to write a dataset into it: generate into another (new or empty) folder "
            f"(--data_dir / --out_dir){hint}"
        )


def check_files_match_meta(data_dir: str, meta: dict) -> None:
    """Raises unless our dataset's files are still the ones we wrote (sizes; fingerprints
    when the meta holds them: a file copied over ours is another dataset).

    Raises:
      ValueError: naming the split, what the meta says and what the files hold.
    """
    system, n = meta["system"], meta["num_particles"]
    for split in SPLITS:
        path = os.path.join(data_dir, split_file_names(split, system, n)[0])
        sims = np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
        if sims != meta["num_sims"][split]:
            raise ValueError(
                f"{path} has {sims} simulations but {meta_file_name(system, n)} says we wrote "
                f"{meta['num_sims'][split]}: the files changed since they were generated; "
                "restore them, or pass --regenerate_data to replace them"
            )
        saved = meta.get("fingerprints", {}).get(split)
        if saved is not None and saved != fingerprint(data_dir, system, n, split):
            raise ValueError(
                f"the {split} files of {system}{n} in {data_dir} differ from the ones we "
                f"generated (sample hash {saved['sha256'][:12]} when written): they were "
                "replaced; use them from a folder of their own, or pass --regenerate_data"
            )


def read_meta(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
