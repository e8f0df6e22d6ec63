"""Datasets of simulated trajectories: generate, save and load (Kipf's layout).

On disk (the layout of Kipf et al.'s released files, which load as they are)::

    {out_dir}/loc_{split}_{system}{n}.npy    [sims, frames, 2, n]
    {out_dir}/vel_{split}_{system}{n}.npy    [sims, frames, 2, n]
    {out_dir}/edges_{split}_{system}{n}.npy  [sims, n, n]
    {out_dir}/meta_{system}{n}.json          generation arguments (ours only)

with ``split`` in train / valid / test and ``system`` in springs / charged (so the
charged files are ``*_charged5.npy``). ``edges[s, i, j]`` is the relation of ``j -> i``:
springs 0/1 (symmetric, zero diagonal), charged ``q_i q_j`` in ``{-1, +1}`` (the
diagonal is 1, as in the released files, and unused).

Kuramoto oscillators (:mod:`nri_modular.data.kuramoto`) are stored in NRI's Kuramoto
layout, which other codebases read::

    {out_dir}/feat_{split}_kuramoto{n}.npy   [sims, n, frames, 4]  float32
    {out_dir}/edges_{split}_kuramoto{n}.npy  [sims, n, n]  k_ij in {0, 1}: j drives i

(directed: ``edges[s, i, j]`` and ``edges[s, j, i]`` are independent). Its four features
(dphi/dt, sin phi, phi, omega) are already scaled to [-1, 1] per trajectory, so its
normalisation is the identity (:data:`IDENTITY`).

In memory a split is ``states`` float32 ``[sims, frames, n, 4]`` (x, y, vx, vy),
normalised to [-1, 1] with the *training* split's scalar min/max of positions and of
velocities (Kipf: ``(x - min) * 2 / (max - min) - 1``), and ``labels`` int32
``[sims, n(n-1)]`` in the receiver-major edge order of :mod:`nri_modular.graph`
(springs: 0 none / 1 spring; charged: 0 opposite charges / 1 like charges).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from nri_modular import atomic, graph
from nri_modular.data import kuramoto, physics
from nri_modular.data.files import (
    SPLITS,
    SYSTEMS,
    check_files_match_meta,
    check_finite,
    check_splits,
    check_system,
    check_writable,
    dataset_file_names,
    describe_datasets,
    file_name,
    fingerprint,
    folder_datasets,
    kinds,
    listing,
    load_array,
    meta_file_name,
    read_meta,
    split_file_names,
)
from nri_modular.data.normalization import IDENTITY, Normalization

# Relation types of each system (springs: none / spring; charged: opposite / like charges;
# Kuramoto: not coupled / j drives i): module -> relation maps are chosen among them.
NUM_RELATION_TYPES = dict.fromkeys(SYSTEMS, 2)
# The relation type that means "no relation", where a system has one (edge existence, and
# its AUROC, are defined there; charged particles always interact).
NO_RELATION = {"springs": 0, kuramoto.NAME: 0}
_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}  # default_rng([seed, id]) per split
_META_VERSION = 1

# Signature: progress(split: str, sims_done: int, num_sims: int) -> None
SplitProgressFn = Callable[[str, int, int], None]

# ----------------------------------------------------------------------------------------
# Datasets in memory.


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split's tasks.

    Attributes:
      states: float32 ``[sims, frames, n, 4]`` normalised (x, y, vx, vy); a
        :class:`TaskRows` when this host loaded only its shard of the tasks.
      labels: int32 ``[sims, n(n-1)]`` relation type of each directed edge j -> i; None
        for unlabelled data (one's own, without an ``edges`` file). In a ragged split
        an edge touching a padded object holds ``-1`` ("no edge here: padding"); real
        edges hold codes ``>= 0``.
      sizes: int32 ``[sims]``, the number of real objects of each system (``2 <= size
        <= n``) when systems of different sizes share the split (one's own data with
        ``sizes_{split}_NAME.npy``): objects ``size .. n-1`` are padding, their states
        exactly 0.0 and their edges labelled ``-1`` (:func:`nri_modular.graph.node_mask`,
        :func:`~nri_modular.graph.edge_mask`). None: every system has ``num_particles`` objects.
    """

    states: np.ndarray | TaskRows
    labels: np.ndarray | None
    sizes: np.ndarray | None = None

    @property
    def num_tasks(self) -> int:
        return self.states.shape[0]

    @property
    def num_frames(self) -> int:
        return self.states.shape[1]

    @property
    def num_particles(self) -> int:
        return self.states.shape[2]


class TaskRows:
    """Some rows of a ``[num_tasks, ...]`` array, indexed by global task id.

    What one host of a multi-host run holds of the training states when every host loads
    only its shard of tasks (:func:`load_dataset` with ``train_rows``). ``shape`` is the
    global shape; indexing with task ids that this host does not hold is an error naming
    them (never a silent wrong row).

    Attributes:
      data: ``[len(rows), ...]`` the held rows, in the order of ``rows``.
      rows: int ``[R]`` sorted, distinct global task ids of ``data``.
      num_tasks: the global number of tasks.
    """

    def __init__(self, data: np.ndarray, rows: np.ndarray, num_tasks: int):
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or len(rows) != len(data):
            raise ValueError(f"rows {rows.shape} must be 1-D and match data {data.shape}")
        if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= num_tasks):
            raise ValueError(f"rows must be sorted, distinct and in [0, {num_tasks})")
        self.data, self.rows, self.num_tasks = data, rows, num_tasks

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_tasks, *self.data.shape[1:])

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        return self.num_tasks

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"TaskRows holds {len(self.rows)} of {self.num_tasks} tasks: index it with task "
            "ids (or use .data for the held rows) instead of converting it to an array"
        )

    def __iter__(self):
        raise TypeError("TaskRows is not iterable: index it with task ids")

    def __getitem__(self, task_ids) -> np.ndarray:
        ids = np.asarray(task_ids)
        if ids.dtype.kind not in "iu":  # floats, booleans, slices: not task ids
            raise TypeError(
                f"index TaskRows with integer task ids, got {type(task_ids).__name__} "
                f"of dtype {ids.dtype}"
            )
        ids = ids.astype(np.int64)
        pos = np.clip(np.searchsorted(self.rows, ids), 0, max(len(self.rows) - 1, 0))
        missing = ids[self.rows[pos] != ids] if len(self.rows) else ids
        if missing.size:
            raise IndexError(
                f"tasks {np.unique(missing)[:8].tolist()} are not held by this host (it holds "
                f"{len(self.rows)} of {self.num_tasks} tasks); the batch order and the "
                "host's shard disagree"
            )
        return self.data[pos]


@dataclasses.dataclass(frozen=True)
class Relations:
    """What a dataset's relation labels mean.

    Attributes:
      num_types: ``R``: labels are the integer codes ``0 .. R-1``.
      none: the code of "no relation" where there is one (edge existence, and its AUROC,
        are defined there), else None.
    """

    num_types: int
    none: int | None = None

    def __post_init__(self):
        if self.num_types < 1:
            raise ValueError(f"num_types must be >= 1, got {self.num_types}")
        if self.none is not None and not 0 <= self.none < self.num_types:
            raise ValueError(f"no-relation code {self.none} is not in [0, {self.num_types})")


def system_relations(system: str) -> Relations:
    """The relation types of a simulated system (:data:`NUM_RELATION_TYPES`,
    :data:`NO_RELATION`)."""
    check_system(system)
    return Relations(NUM_RELATION_TYPES[system], NO_RELATION.get(system))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Loaded splits with their (training) normalisation.

    Attributes:
      system: ``"springs"``, ``"charged"``, ``"kuramoto"``, or ``""`` for one's own data.
      num_particles: ``n``.
      normalization: the train-split statistics used for every split.
      splits: split name -> :class:`Split`, for the splits that were loaded.
      name: the file names' suffix: ``{system}{n}`` or one's own dataset's name.
      relations: what the labels mean; None when no split has labels.
    """

    system: str
    num_particles: int
    normalization: Normalization
    splits: Mapping[str, Split]
    name: str = ""
    relations: Relations | None = None

    @property
    def state_dim(self) -> int:
        return self.normalization.state_dim

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not loaded; have {tuple(self.splits)}")
        return self.splits[split]

    @property
    def ragged_splits(self) -> list[str]:
        """The loaded splits whose systems have different sizes (a ``sizes`` array)."""
        return [name for name, split in self.splits.items() if split.sizes is not None]

    @property
    def train(self) -> Split:
        return self["train"]

    @property
    def valid(self) -> Split:
        return self["valid"]

    @property
    def test(self) -> Split:
        return self["test"]


# ----------------------------------------------------------------------------------------
# Writing.


def generation_meta(
    system: str,
    num_train: int,
    num_valid: int,
    num_test: int,
    seed: int,
    num_particles: int = 5,
    *,
    train_steps: int = 5000,
    test_steps: int = 10000,
    sample_freq: int = 100,
    dtype=np.float32,
    **overrides,
) -> dict:
    """The arguments that determine a generated dataset, as stored in ``meta_*.json``.

    Kuramoto datasets record their frames and integrator instead of the particle systems'
    step counts (which they do not take)."""
    meta = {
        "version": _META_VERSION,
        "system": system,
        "num_particles": int(num_particles),
        "num_sims": {"train": int(num_train), "valid": int(num_valid), "test": int(num_test)},
        "seed": int(seed),
        "dtype": np.dtype(dtype).name,
        "overrides": {k: v for k, v in sorted(overrides.items()) if v is not None},
    }
    if system == kuramoto.NAME:
        if overrides or np.dtype(dtype) != np.float32:
            raise ValueError(
                f"the kuramoto generator takes no overrides or dtype, got {overrides}, {dtype}"
            )
        return meta | {
            "frames": dict(kuramoto.SPLIT_FRAMES),
            "simulated_frames": kuramoto.SIMULATED_FRAMES,
            "substeps": kuramoto.default_substeps(int(num_particles)),
        }
    return meta | {
        "train_steps": int(train_steps),
        "test_steps": int(test_steps),
        "sample_freq": int(sample_freq),
    }


def _simulate_split(
    system: str,
    seed: int,
    split: str,
    num_sims: int,
    num_particles: int,
    steps: int,
    sample_freq: int,
    dtype,
    chunk_size: int,
    progress,
    overrides: dict,
) -> dict[str, np.ndarray]:
    """One split's arrays, ``{kind: array}`` in :func:`kinds` order."""
    if system == kuramoto.NAME:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), _SPLIT_IDS[split])
        feat, edges = kuramoto.generate_split(
            key,
            num_sims,
            num_particles,
            kuramoto.SPLIT_FRAMES[split],
            chunk_size=chunk_size,
            progress=progress,
        )
        return {"feat": feat, "edges": edges}
    loc, vel, edges = physics.simulate(
        system,
        _split_rng(seed, split),
        num_sims,
        num_particles,
        steps,
        sample_freq,
        dtype=dtype,
        chunk_size=chunk_size,
        progress=progress,
        **overrides,
    )
    return {"loc": loc, "vel": vel, "edges": edges}


def generate_dataset(
    system: str,
    out_dir: str,
    num_train: int,
    num_valid: int,
    num_test: int,
    seed: int,
    num_particles: int = 5,
    *,
    train_steps: int = 5000,
    test_steps: int = 10000,
    sample_freq: int = 100,
    dtype=np.float32,
    chunk_size: int = 4096,
    progress: SplitProgressFn | None = None,
    overwrite: bool = False,
    **overrides,
) -> dict[str, str]:
    """Simulates the three splits and writes them in Kipf's layout (atomically).

    Writes only into a folder holding nothing but our own datasets (:func:`check_writable`),
    and replaces our dataset of the same system and size only with ``overwrite``.

    Split ``s`` samples its initial states from ``np.random.default_rng([seed, id])`` with
    ``id = {train: 0, valid: 1, test: 2}[s]``, so the splits are independent and each is
    reproducible on its own. train/valid run
    ``train_steps`` (49 frames by default), test ``test_steps`` (99 frames). Each file is
    written to a temporary name and renamed; ``meta_{system}{n}.json`` is written last.

    Args:
      system: ``"springs"`` or ``"charged"``.
      out_dir: created if missing.
      num_train, num_valid, num_test: simulations per split (each > 0).
      seed: integer seed.
      num_particles: ``n``.
      train_steps, test_steps, sample_freq: trajectory lengths, see ``physics.simulate``.
      dtype: on-disk float dtype (float32 default; float64 as the released files).
      chunk_size: simulations integrated at once.
      progress: called as ``progress(split, sims_done, num_sims)`` when a split starts
        (``sims_done = 0``) and after each chunk.
      overwrite: replace our own dataset of this system and size if the folder holds one.
      **overrides: ``physics.SystemConfig`` fields (box_size, interaction_strength, ...).

    Returns:
      ``{file name: path}`` of the files written.
    """
    check_system(system)
    steps = {"train": train_steps, "valid": train_steps, "test": test_steps}
    sizes = {"train": num_train, "valid": num_valid, "test": num_test}
    for split in SPLITS:  # validate everything before simulating anything
        if not isinstance(sizes[split], int | np.integer) or sizes[split] <= 0:
            raise ValueError(f"num_{split} must be a positive integer, got {sizes[split]!r}")
        if system != kuramoto.NAME:
            physics.num_frames(steps[split], sample_freq)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if system == kuramoto.NAME:
        generation_meta(system, 1, 1, 1, 0, dtype=dtype, **overrides)  # raises on overrides
    else:
        physics.system_config(system, **overrides)
    check_writable(out_dir)
    existing = [
        name
        for name in (
            meta_file_name(system, num_particles),
            *dataset_file_names(system, num_particles),
        )
        if os.path.exists(os.path.join(out_dir, name))
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds our {system}{num_particles} dataset ({listing(existing)}); "
            "it is replaced only when asked (--overwrite for nri_modular.data.generate, "
            "--regenerate_data for a run): or use another folder"
        )
    logging.info(
        "generating the %s%d dataset (train/valid/test: %d/%d/%d simulations, seed %d) in %s",
        system,
        num_particles,
        num_train,
        num_valid,
        num_test,
        seed,
        out_dir,
    )
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, meta_file_name(system, num_particles))
    if os.path.exists(meta_path):  # the files are about to change: the old meta is stale
        os.remove(meta_path)
    written = {}
    for split in SPLITS:
        split_progress = None
        if progress is not None:
            progress(split, 0, sizes[split])
            split_progress = lambda done, total, split=split: progress(split, done, total)  # noqa: E731
        arrays = _simulate_split(
            system,
            seed,
            split,
            sizes[split],
            num_particles,
            steps[split],
            sample_freq,
            dtype,
            chunk_size,
            split_progress,
            overrides,
        )
        for kind, array in arrays.items():
            name = file_name(kind, split, system, num_particles)
            path = os.path.join(out_dir, name)
            atomic.save_npy_atomic(path, array)
            written[name] = path
    meta = generation_meta(
        system,
        num_train,
        num_valid,
        num_test,
        seed,
        num_particles,
        train_steps=train_steps,
        test_steps=test_steps,
        sample_freq=sample_freq,
        dtype=dtype,
        **overrides,
    )
    # What the files were when we wrote them: a later copy over them is seen, not trusted.
    meta["fingerprints"] = {
        split: fingerprint(out_dir, system, num_particles, split) for split in SPLITS
    }
    atomic.write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True))
    written[os.path.basename(meta_path)] = meta_path
    logging.info(
        "wrote the %s%d dataset (%d files) to %s in %.1f s",
        system,
        num_particles,
        len(written),
        out_dir,
        time.perf_counter() - start,
    )
    return written


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """Independent generator per split: ``default_rng([seed, split_id])``."""
    return np.random.default_rng([seed, _SPLIT_IDS[split]])


# ----------------------------------------------------------------------------------------
# Reading.


def _load_raw(data_dir: str, split: str, system: str, num_particles: int, mmap: bool = False):
    """Reads and checks one split's files (see the module docstring).

    With ``mmap`` the (large) state files are memory-mapped, not read: the checks stream
    through them in chunks.

    Returns:
      ``(arrays, labels)``: ``arrays`` the state files (``(loc, vel)`` ``[sims, frames, 2,
      n]`` each, or ``(feat,)`` ``[sims, n, frames, 4]``) for :func:`_states`, ``labels``
      int32 ``[sims, n(n-1)]``.
    """
    if system == kuramoto.NAME:
        return _load_raw_features(data_dir, split, num_particles, mmap)
    paths = {
        k: os.path.join(data_dir, file_name(k, split, system, num_particles))
        for k in ("loc", "vel", "edges")
    }
    loc, vel = (load_array(paths[k], mmap) for k in ("loc", "vel"))
    edges = load_array(paths["edges"])
    if loc.ndim != 4 or loc.shape[2] != 2:
        raise ValueError(f"{paths['loc']}: expected shape [sims, frames, 2, n], got {loc.shape}")
    if vel.shape != loc.shape:
        raise ValueError(
            f"{paths['vel']}: shape {vel.shape} does not match {paths['loc']} shape {loc.shape} "
            "([sims, frames, 2, n])"
        )
    sims, frames, _, n = loc.shape
    arrays = {"loc": loc, "vel": vel, "edges": edges}
    _check_split(paths, arrays, sims, frames, n, num_particles, "particles (last axis")
    return (loc, vel), _edges_to_labels(edges, system, paths["edges"])


def _check_split(paths, arrays, sims, frames, n, num_particles, counted: str) -> None:
    """The checks every layout shares: the object count, non-empty, ``edges`` of shape
    ``[sims, n, n]``, every value finite (``arrays`` states first, ``edges`` last)."""
    states_kind = next(iter(arrays))
    shape = arrays[states_kind].shape
    if n != num_particles:
        raise ValueError(
            f"{paths[states_kind]}: has {n} {counted} of {shape}) but num_particles={num_particles}"
        )
    if sims == 0 or frames == 0:
        raise ValueError(f"{paths[states_kind]}: empty array of shape {shape}")
    if arrays["edges"].shape != (sims, n, n):
        raise ValueError(
            f"{paths['edges']}: expected shape [sims, n, n] = {(sims, n, n)} to match "
            f"{paths[states_kind]} {shape}, got {arrays['edges'].shape}"
        )
    for kind, array in arrays.items():
        check_finite(array, paths[kind])


def _load_raw_features(data_dir: str, split: str, num_particles: int, mmap: bool):
    """:func:`_load_raw` of NRI's Kuramoto layout (``feat`` ``[sims, n, frames, 4]``)."""
    system = kuramoto.NAME
    paths = {
        k: os.path.join(data_dir, file_name(k, split, system, num_particles)) for k in kinds(system)
    }
    feat = load_array(paths["feat"], mmap)
    edges = load_array(paths["edges"])
    if feat.ndim != 4 or feat.shape[3] != 4:
        raise ValueError(
            f"{paths['feat']}: expected shape [sims, n, frames, 4] (NRI's Kuramoto layout), "
            f"got {feat.shape}"
        )
    sims, n, frames, _ = feat.shape
    arrays = {"feat": feat, "edges": edges}
    _check_split(paths, arrays, sims, frames, n, num_particles, "oscillators (axis 1")
    return (feat,), _edges_to_labels(edges, system, paths["edges"])


def _edges_to_labels(edges: np.ndarray, system: str, path: str) -> np.ndarray:
    """``[sims, n, n]`` relation matrices -> int32 ``[sims, n(n-1)]`` labels.

    Springs and charged relations are symmetric (checked); Kuramoto couplings are directed
    (``edges[s, i, j] = k_ij``, j drives i: label 1 on edge ``j -> i``)."""
    asymmetric = (
        np.zeros((0, 3), np.int64)
        if system == kuramoto.NAME
        else np.argwhere(edges != np.swapaxes(edges, 1, 2))
    )
    if len(asymmetric):
        sim, i, j = (int(v) for v in asymmetric[0])
        raise ValueError(
            f"{path}: {system} relations are symmetric (edges[s, i, j] == edges[s, j, i]), but "
            f"{len(asymmetric) // 2} pairs differ, first simulation {sim}, pair ({i}, {j})"
        )
    directed = graph.matrix_to_edges(edges)
    allowed = (-1.0, 1.0) if system == "charged" else (0.0, 1.0)
    bad = ~np.isin(directed, allowed)
    if bad.any():
        values = np.unique(directed[bad])[:5]
        raise ValueError(
            f"{path}: {system} relations must be in {allowed} off the diagonal, found {values}"
        )
    return (directed > 0).astype(np.int32)


def _statistics(system: str, arrays: tuple[np.ndarray, ...]) -> Normalization:
    """The normalisation a training split's raw arrays give (Kuramoto: :data:`IDENTITY`)."""
    return IDENTITY if system == kuramoto.NAME else Normalization.from_arrays(*arrays)


def _states(arrays: tuple[np.ndarray, ...], norm: Normalization, chunk: int = 4096):
    """Raw state files (``(loc, vel)`` or ``(feat,)``) -> normalised float32
    ``[sims, frames, n, 4]``."""
    if len(arrays) == 1:  # feat [sims, n, frames, 4]
        (feat,) = arrays
        sims, n, frames, dim = feat.shape
        states = np.empty((sims, frames, n, dim), np.float32)
        for start in range(0, sims, chunk):
            raw = np.swapaxes(feat[start : start + chunk], 1, 2).astype(np.float64)
            states[start : start + chunk] = norm.normalise(raw)
        return states
    return _normalise_split(*arrays, norm, chunk)


def _normalise_split(loc: np.ndarray, vel: np.ndarray, norm: Normalization, chunk: int = 4096):
    """``[sims, frames, 2, n]`` loc/vel -> normalised float32 ``[sims, frames, n, 4]``."""
    sims, frames, _, n = loc.shape
    states = np.empty((sims, frames, n, 4), np.float32)
    for start in range(0, sims, chunk):  # float64 arithmetic, bounded temporary memory
        sl = slice(start, start + chunk)
        raw = np.concatenate([loc[sl], vel[sl]], axis=2).astype(np.float64)  # [s, f, 4, n]
        states[sl] = norm.normalise(np.swapaxes(raw, 2, 3))
    return states


def load_dataset(
    data_dir: str,
    system: str,
    num_particles: int = 5,
    splits: Sequence[str] = SPLITS,
    normalization: Normalization | None = None,
    train_rows: np.ndarray | None = None,
) -> Dataset:
    """Loads splits written by :func:`generate_dataset` or released by Kipf et al.

    Args:
      data_dir: directory with the ``.npy`` files (see the module docstring).
      system: ``"springs"`` or ``"charged"``.
      num_particles: ``n``; must match the files.
      splits: which of train / valid / test to load.
      normalization: statistics to use; by default computed on the train split, which
        must then be among ``splits``.
      train_rows: int ``[R]`` training tasks to hold (one host's shard): the train split's
        ``states`` become a :class:`TaskRows` of those rows; the files are memory-mapped,
        so the statistics and checks stream through them and only ``R`` rows are read
        into memory. ``labels`` stay whole (``[sims, n(n-1)]`` int32, small). Default: all.

    Returns:
      A :class:`Dataset`; each split's ``states`` float32 ``[sims, frames, n, 4]``
      normalised with the train statistics, ``labels`` int32 ``[sims, n(n-1)]``.

    Raises:
      FileNotFoundError: a file is missing (the message names it).
      ValueError: unknown system / split, shapes that disagree, particle count
        different from ``num_particles``, NaN/inf, relation values outside the system's
        set (the message names the file and the problem).
    """
    check_system(system)
    splits = check_splits(splits)
    if normalization is None and "train" not in splits:
        raise ValueError(
            "the normalisation comes from the train split: load 'train' or pass normalization="
        )
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset directory {data_dir} does not exist")
    order = sorted(splits, key=lambda s: s != "train")  # train first: it gives the stats
    loaded = {}
    for split in order:
        rows = train_rows if split == "train" else None
        arrays, labels = _load_raw(data_dir, split, system, num_particles, rows is not None)
        if normalization is None:
            normalization = _statistics(system, arrays)
        if rows is None:
            loaded[split] = Split(_states(arrays, normalization), labels)
            continue
        num_sims = arrays[0].shape[0]
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"train_rows must be integer task ids, got dtype {rows.dtype}")
        rows = np.unique(rows.astype(np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= num_sims):
            raise ValueError(f"train_rows must be in [0, {num_sims}), got {rows[[0, -1]]}")
        states = _states(tuple(a[rows] for a in arrays), normalization)
        loaded[split] = Split(TaskRows(states, rows, num_sims), labels)
    return Dataset(
        system=system,
        num_particles=num_particles,
        normalization=normalization,
        splits={s: loaded[s] for s in splits},
        name=f"{system}{num_particles}",
        relations=system_relations(system),
    )


def ensure_dataset(
    data_dir: str,
    system: str,
    num_train: int,
    num_valid: int,
    num_test: int,
    seed: int,
    num_particles: int = 5,
    *,
    regenerate: bool = False,
    progress: SplitProgressFn | None = None,
    train_rows: np.ndarray | None = None,
    **generate_kwargs,
) -> Dataset:
    """Loads the dataset in ``data_dir``, generating it first if the folder has none.

    * our ``meta_{system}{n}.json`` equal to the requested arguments and its files as we
      wrote them: load.
    * our meta with other arguments (sizes, seed, settings), or files changed since we
      wrote them: ``ValueError`` naming the difference, unless ``regenerate`` (then our
      dataset is replaced). Nothing is regenerated behind the caller's back.
    * the dataset asked for absent, and the folder missing, empty or holding only our own
      datasets (of other systems or sizes): generate, then load.
    * all files present but no meta (e.g. Kipf's released files): load them if their
      simulation counts match the request, else ``ValueError``; never written.
    * anything else we did not write in the folder (some splits of a dataset, a user's own
      files under other names, a typo'd folder holding something else): ``ValueError``
      naming what it holds; nothing is written (see :func:`check_writable`).

    Args:
      data_dir, system, num_train, num_valid, num_test, seed, num_particles: as in
        :func:`generate_dataset`.
      regenerate: replace our own dataset when it differs from the request (never files
        we did not write).
      progress: passed to :func:`generate_dataset`.
      train_rows: load only these training tasks' states (see :func:`load_dataset`).
      **generate_kwargs: other :func:`generate_dataset` arguments (steps, dtype, ...).

    Returns:
      The :class:`Dataset` of all three splits.
    """
    check_system(system)
    chunk_size = generate_kwargs.pop("chunk_size", 4096)
    wanted = generation_meta(
        system, num_train, num_valid, num_test, seed, num_particles, **generate_kwargs
    )
    names = dataset_file_names(system, num_particles)
    have_all = all(os.path.exists(os.path.join(data_dir, f)) for f in names)
    meta_path = os.path.join(data_dir, meta_file_name(system, num_particles))
    meta = read_meta(meta_path) if os.path.exists(meta_path) else None
    asked = (system, num_particles)
    foreign = {k: e for k, e in folder_datasets(data_dir).items() if not e["ours"]}
    generate = False
    if meta is not None:  # ours
        made = {k: v for k, v in meta.items() if k != "fingerprints"}
        if made != wanted:
            differ = [k for k in wanted if made.get(k) != wanted[k]]
            if not regenerate:
                raise ValueError(
                    f"{data_dir} holds our {system}{num_particles} dataset made with other "
                    + ", ".join(f"{k} ({made.get(k)!r}, asked {wanted[k]!r})" for k in differ)
                    + ": pass --regenerate_data to replace it, or point --data_dir at another "
                    "folder (it is never regenerated unasked)"
                )
            generate = True
        elif not have_all:
            missing = [f for f in names if not os.path.exists(os.path.join(data_dir, f))]
            if not regenerate:
                raise ValueError(
                    f"{data_dir} holds our {system}{num_particles} dataset but lacks "
                    f"{listing(missing)}: pass --regenerate_data to write it again, or restore "
                    "the files"
                )
            generate = True
        elif regenerate:
            generate = True
        else:  # read (and check each file) first: a damaged file's own error comes first
            data = load_dataset(data_dir, system, num_particles, train_rows=train_rows)
            check_files_match_meta(data_dir, meta)
            return data
    elif asked in foreign and have_all:  # e.g. Kipf's released files: read, never written
        if regenerate:
            check_writable(data_dir)  # raises: these files are not ours to replace
        requested = {"train": num_train, "valid": num_valid, "test": num_test}
        for split in SPLITS:
            path = os.path.join(data_dir, split_file_names(split, system, num_particles)[0])
            sims = np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
            if sims != requested[split]:
                raise ValueError(
                    f"{path} has {sims} simulations but num_{split}={requested[split]}, and "
                    f"{data_dir} has no {meta_file_name(system, num_particles)} (not written "
                    "by us): it is read as it is, never rewritten; set --num_"
                    f"{split}={sims} or use another --data_dir"
                )
    else:
        generate = True
    if generate:
        others = {key: entry for key, entry in foreign.items() if key != asked}
        try:
            check_writable(data_dir)  # raises, naming what we did not write
        except ValueError as e:
            if others:
                raise ValueError(
                    f"{e}; to use a dataset it holds set --system / --num_particles to match "
                    f"(asked: {system}, num_particles={num_particles})"
                ) from None
            raise
        beside = {k: e for k, e in folder_datasets(data_dir).items() if k != asked}
        if beside:
            logging.info("%s also holds %s", data_dir, describe_datasets(beside))
        generate_dataset(
            system,
            data_dir,
            num_train,
            num_valid,
            num_test,
            seed,
            num_particles,
            chunk_size=chunk_size,
            progress=progress,
            overwrite=True,  # our own dataset, replaced only when regenerate says so
            **generate_kwargs,
        )
    return load_dataset(data_dir, system, num_particles, train_rows=train_rows)


def gather(split: Split, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """States and labels of a batch of tasks.

    Args:
      split: a loaded :class:`Split`.
      indices: int ``[...]`` task indices, e.g. one row of
        :func:`~nri_modular.data.batching.task_batches`.

    Returns:
      ``(states float32 [..., frames, n, 4], labels int32 [..., n(n-1)])``.
    """
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() >= split.num_tasks):
        raise ValueError(
            f"task indices must be in [0, {split.num_tasks}), got range "
            f"[{indices.min()}, {indices.max()}]"
        )
    return split.states[indices], None if split.labels is None else split.labels[indices]
