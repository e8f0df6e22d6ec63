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
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nri_modular import atomic, graph
from nri_modular.data import kuramoto, physics

SPLITS = ("train", "valid", "test")
# The one list of the systems we simulate (config's flags and the generator read it).
SYSTEMS = (*physics.SYSTEMS, kuramoto.NAME)
# Files of a split, per system layout: the first kind holds the states (its first axis is
# the number of simulations).
_KINDS = {"springs": ("loc", "vel", "edges"), "charged": ("loc", "vel", "edges")}
_KINDS[kuramoto.NAME] = ("feat", "edges")
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


def file_name(kind: str, split: str, system: str, num_particles: int) -> str:
    """``"{kind}_{split}_{system}{n}.npy"``, e.g. ``loc_train_springs5.npy``."""
    return f"{kind}_{split}_{system}{num_particles}.npy"


def meta_file_name(system: str, num_particles: int) -> str:
    """``"meta_{system}{n}.json"``: the generation arguments of a dataset we wrote."""
    return f"meta_{system}{num_particles}.json"


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")


def kinds(system: str) -> tuple[str, ...]:
    """The file kinds of one split: ``("loc", "vel", "edges")`` (springs, charged) or
    ``("feat", "edges")`` (Kuramoto); the first holds the states."""
    _check_system(system)
    return _KINDS[system]


def split_file_names(split: str, system: str, num_particles: int) -> list[str]:
    """The ``.npy`` names of one split of a dataset, states first."""
    return [file_name(k, split, system, num_particles) for k in kinds(system)]


def dataset_file_names(system: str, num_particles: int) -> list[str]:
    """Every ``.npy`` name of a dataset's three splits."""
    return [n for split in SPLITS for n in split_file_names(split, system, num_particles)]


def _check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {tuple(splits)}")
    return tuple(splits)


# ----------------------------------------------------------------------------------------
# Normalisation.


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel min/max of the training states; maps each channel's range to [-1, 1].

    Kipf's normalisation is one min/max for every position channel and one for every
    velocity channel (:meth:`positions_velocities`, :meth:`from_arrays`); features of
    one's own data get a min/max each (:meth:`from_channels`). Works on numpy arrays
    (returns numpy) and on JAX arrays / tracers (returns JAX).

    Attributes:
      minimum, maximum: ``[state_dim]`` floats, ``maximum > minimum`` per channel.
    """

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self):
        lo, hi = (tuple(float(v) for v in np.ravel(x)) for x in (self.minimum, self.maximum))
        object.__setattr__(self, "minimum", lo)
        object.__setattr__(self, "maximum", hi)
        if not lo or len(lo) != len(hi):
            raise ValueError(f"minimum {lo} and maximum {hi} must be non-empty, of one length")
        for c, (a, b) in enumerate(zip(lo, hi, strict=True)):
            if not (np.isfinite(a) and np.isfinite(b) and b > a):
                raise ValueError(
                    f"channel {c}'s range must be finite with max > min, got [{a}, {b}]"
                )

    @classmethod
    def positions_velocities(
        cls, loc_min: float, loc_max: float, vel_min: float, vel_max: float, dim: int = 2
    ) -> Normalization:
        """Kipf's: one range for the ``dim`` position channels, one for the velocities."""
        return cls((loc_min,) * dim + (vel_min,) * dim, (loc_max,) * dim + (vel_max,) * dim)

    @classmethod
    def from_arrays(cls, loc: np.ndarray, vel: np.ndarray) -> Normalization:
        """Statistics of (training) positions and velocities in Kipf's layout
        ``[..., D, n]`` (D position channels)."""
        return cls.positions_velocities(
            float(loc.min()), float(loc.max()), float(vel.min()), float(vel.max()), loc.shape[-2]
        )

    @classmethod
    def from_channels(cls, states: np.ndarray) -> Normalization:
        """A range per channel of (training) states ``[..., S]``; a constant channel gets
        the range ``[c - 1, c + 1]`` (it normalises to 0)."""
        flat = np.asarray(states, np.float64).reshape(-1, states.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        constant = hi == lo
        return cls(np.where(constant, lo - 1, lo), np.where(constant, hi + 1, hi))

    @property
    def state_dim(self) -> int:
        return len(self.minimum)

    def to_dict(self) -> dict[str, list[float]]:
        return {"minimum": list(self.minimum), "maximum": list(self.maximum)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Normalization:
        """Reads :meth:`to_dict`, and the ``loc_min, loc_max, vel_min, vel_max`` of runs
        saved before per-channel ranges (2-D positions and velocities)."""
        if "minimum" in d:
            return cls(tuple(d["minimum"]), tuple(d["maximum"]))
        return cls.positions_velocities(*(float(d[k]) for k in _LEGACY_KEYS))

    def _lo_span(self, states):
        xp = np if isinstance(states, np.ndarray) else jnp
        lo, hi = np.array(self.minimum), np.array(self.maximum)
        shape = (1,) * (states.ndim - 1) + (len(lo),)
        return xp.asarray(lo.reshape(shape), states.dtype), xp.asarray(
            (hi - lo).reshape(shape), states.dtype
        )

    def normalise(self, states):
        """Physical ``[..., S]`` states -> [-1, 1] on the training range."""
        self._check_last_axis(states)
        lo, span = self._lo_span(states)
        return (states - lo) * 2 / span - 1

    def denormalise(self, states):
        """Inverse of :meth:`normalise`: ``[..., S]`` normalised states -> physical units."""
        self._check_last_axis(states)
        lo, span = self._lo_span(states)
        return (states + 1) * span / 2 + lo

    def _check_last_axis(self, states) -> None:
        if states.ndim < 1 or states.shape[-1] != self.state_dim:
            raise ValueError(
                f"states must be [..., {self.state_dim}] (the channels this normalisation "
                f"was made for), got shape {states.shape}"
            )


_LEGACY_KEYS = ("loc_min", "loc_max", "vel_min", "vel_max")

# Kuramoto's features are scaled to [-1, 1] when generated: their normalisation maps
# [-1, 1] to itself (exactly, in float64).
IDENTITY = Normalization.positions_velocities(-1.0, 1.0, -1.0, 1.0)


# ----------------------------------------------------------------------------------------
# Datasets in memory.


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split's tasks.

    Attributes:
      states: float32 ``[sims, frames, n, 4]`` normalised (x, y, vx, vy); a
        :class:`TaskRows` when this host loaded only its shard of the tasks.
      labels: int32 ``[sims, n(n-1)]`` relation type of each directed edge j -> i; None
        for unlabelled data (one's own, without an ``edges`` file).
    """

    states: np.ndarray | TaskRows
    labels: np.ndarray | None

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
    _check_system(system)
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
    _check_system(system)
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
            f"{out_dir} already holds our {system}{num_particles} dataset ({_listing(existing)}); "
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


def _load_array(path: str, mmap: bool = False) -> np.ndarray:
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
    loc, vel = (_load_array(paths[k], mmap) for k in ("loc", "vel"))
    edges = _load_array(paths["edges"])
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
        _check_finite(array, paths[kind])


def _load_raw_features(data_dir: str, split: str, num_particles: int, mmap: bool):
    """:func:`_load_raw` of NRI's Kuramoto layout (``feat`` ``[sims, n, frames, 4]``)."""
    system = kuramoto.NAME
    paths = {
        k: os.path.join(data_dir, file_name(k, split, system, num_particles)) for k in kinds(system)
    }
    feat = _load_array(paths["feat"], mmap)
    edges = _load_array(paths["edges"])
    if feat.ndim != 4 or feat.shape[3] != 4:
        raise ValueError(
            f"{paths['feat']}: expected shape [sims, n, frames, 4] (NRI's Kuramoto layout), "
            f"got {feat.shape}"
        )
    sims, n, frames, _ = feat.shape
    arrays = {"feat": feat, "edges": edges}
    _check_split(paths, arrays, sims, frames, n, num_particles, "oscillators (axis 1")
    return (feat,), _edges_to_labels(edges, system, paths["edges"])


def _check_finite(array: np.ndarray, path: str, chunk: int = 4096) -> None:
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
    _check_system(system)
    splits = _check_splits(splits)
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
        entry["ours"] = os.path.exists(meta_path) and _read_meta(meta_path) is not None
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
        array = _load_array(os.path.join(data_dir, name), mmap=True)
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
        if match is None or _read_meta(os.path.join(data_dir, name)) is None:
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


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
        raise ValueError(
            f"{data_dir} holds files we did not write: {_listing(foreign)}{datasets_held}; "
            "refusing to write a dataset into it: generate into another (new or empty) folder "
            "(--data_dir / --out_dir)"
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


def _read_meta(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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
    _check_system(system)
    chunk_size = generate_kwargs.pop("chunk_size", 4096)
    wanted = generation_meta(
        system, num_train, num_valid, num_test, seed, num_particles, **generate_kwargs
    )
    names = dataset_file_names(system, num_particles)
    have_all = all(os.path.exists(os.path.join(data_dir, f)) for f in names)
    meta_path = os.path.join(data_dir, meta_file_name(system, num_particles))
    meta = _read_meta(meta_path) if os.path.exists(meta_path) else None
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
                    f"{_listing(missing)}: pass --regenerate_data to write it again, or restore "
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
