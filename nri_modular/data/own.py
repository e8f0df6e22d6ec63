"""One's own trajectories: a named dataset in a folder, with or without relation labels.

For each split in train / valid / test and a ``NAME`` of one's choosing, ``data_dir`` holds
either positions (velocities optional)::

    loc_{split}_NAME.npy    [sims, frames, D, n]   any D (2-D, 3-D, ...)
    vel_{split}_NAME.npy    [sims, frames, D, n]   optional

or features (NRI's Kuramoto layout)::

    feat_{split}_NAME.npy   [sims, n, frames, F]   any F

and, optionally, per split::

    edges_{split}_NAME.npy  [sims, n, n]   integer relation codes 0..R-1;
                                           edges[s, i, j] is the relation of j -> i
    sizes_{split}_NAME.npy  [sims]         integer, the number of objects of each
                                           simulation (2 <= size <= n)

Nothing is assumed: D, F, n and R are read from the files; relations are directed (no
symmetry asked) and the diagonal is ignored. A split without ``edges`` is unlabelled:
training and structure inference use no labels anyway, and scores that need them (edge
accuracy, AUROC) are reported only where they exist.

Systems of different sizes (ragged) share a dataset through ``sizes`` files: the other
arrays are padded to the largest ``n``, and objects ``size .. n-1`` of a simulation are
padding, whose values are ignored whatever they hold (even NaN): the finiteness and
relation-code checks and the training statistics look at real objects only, padded
objects' states are exactly 0.0 after normalisation, and an edge touching a padded object
is labelled ``-1`` ("no edge here: padding"; real codes stay ``>= 0``). The ``sizes``
file is optional per split: if the train split has one the whole dataset is ragged and
every loaded split gets :attr:`~nri_modular.data.datasets.Split.sizes` (a split without
a ``sizes`` file has every system at full ``n``); masks:
:func:`~nri_modular.data.graph.node_mask`, :func:`~nri_modular.data.graph.edge_mask`.

States in memory are float32 ``[sims, frames, n, S]``:

* positions: ``S = 2D`` channels ``(x_1..x_D, v_1..v_D)``; without ``vel`` files the
  velocities are the positions' finite differences per frame (``np.gradient`` over frames:
  central inside, one-sided at the ends). Normalised as Kipf's: one training min/max for
  every position channel, one for every velocity channel (isotropic).
* features: ``S = F``, each feature normalised with its own training min/max.

(Ragged data: the min/max are over real objects only; velocities from finite differences
are those of the real objects.)

We never write into such a folder (:func:`nri_modular.data.files.check_writable`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from nri_modular import graph
from nri_modular.data import datasets
from nri_modular.data import files as disk
from nri_modular.data.normalization import Normalization

SPLITS = datasets.SPLITS
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
EXPECTED = (
    "loc_{split}_NAME.npy [sims, frames, D, n] (+ optional vel_{split}_NAME.npy of the same "
    "shape), or feat_{split}_NAME.npy [sims, n, frames, F]; optional edges_{split}_NAME.npy "
    "[sims, n, n] integer codes; optional sizes_{split}_NAME.npy [sims] integer object "
    "counts (systems of different sizes, padded to n); for split in train, valid, test"
)
# Object counts of ragged systems (not one of the state/label kinds of files.ANY_FILE).
_SIZES_FILE = re.compile(r"^sizes_(train|valid|test)_(.+)\.npy$")


class DataError(ValueError):
    """A problem with one's own data files (the message names the file and the fix)."""


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """What one split's files hold.

    Attributes:
      layout: ``"loc"`` (positions, optional velocities) or ``"feat"`` (features).
      sims, frames, num_particles: the states' sizes.
      dim: D (positions) or F (features).
      has_vel: velocities are in a file (else finite differences of positions).
      labelled: an ``edges`` file exists.
      has_sizes: a ``sizes`` file exists (systems of different sizes, padded to
        ``num_particles``).
    """

    layout: str
    sims: int
    frames: int
    num_particles: int
    dim: int
    has_vel: bool
    labelled: bool
    has_sizes: bool = False

    @property
    def state_dim(self) -> int:
        return 2 * self.dim if self.layout == "loc" else self.dim


def file_name(kind: str, split: str, name: str) -> str:
    """``"{kind}_{split}_{name}.npy"``."""
    return f"{kind}_{split}_{name}.npy"


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataError(
            f"dataset name {name!r} must be letters, digits, '_', '.' or '-' (the NAME of "
            "loc_train_NAME.npy)"
        )


def describe_folder(data_dir: str) -> str:
    """One line: the named datasets of a folder and how many other entries it holds."""
    if not os.path.isdir(data_dir):
        return f"{data_dir} does not exist"
    named = disk.folder_names(data_dir)
    for entry in sorted(os.listdir(data_dir)):
        match = _SIZES_FILE.match(entry)
        if match:
            split, name = match.groups()
            named.setdefault(name, {}).setdefault(split, []).append("sizes")
    parts = []
    for name, splits in sorted(named.items()):
        held = ", ".join(f"{split}: {'+'.join(kinds)}" for split, kinds in sorted(splits.items()))
        parts.append(f"{name} ({held})")
    others = [
        e for e in os.listdir(data_dir) if not (disk.ANY_FILE.match(e) or _SIZES_FILE.match(e))
    ]
    if others:
        parts.append(f"{len(others)} other entries ({', '.join(sorted(others)[:5])})")
    return "; ".join(parts) if parts else "nothing"


def _split_files(data_dir: str, name: str, split: str) -> SplitFiles:
    """Reads the shapes of one split's files (memory-mapped) and checks they agree."""
    path = lambda kind: os.path.join(data_dir, file_name(kind, split, name))  # noqa: E731
    has = {k: os.path.exists(path(k)) for k in ("loc", "vel", "feat", "edges", "sizes")}
    if has["loc"] and has["feat"]:
        raise DataError(
            f"{data_dir} holds both {file_name('loc', split, name)} and "
            f"{file_name('feat', split, name)}: keep one layout per dataset"
        )
    if not (has["loc"] or has["feat"]):
        raise DataError(
            f"{data_dir} has no {file_name('loc', split, name)} or "
            f"{file_name('feat', split, name)} (dataset {name!r}, split {split}); the folder "
            f"holds: {describe_folder(data_dir)}; expected {EXPECTED}"
        )
    if has["vel"] and not has["loc"]:
        raise DataError(f"{path('vel')} has no {file_name('loc', split, name)} beside it")
    layout = "loc" if has["loc"] else "feat"
    states = disk.load_array(path(layout), mmap=True)
    if states.ndim != 4:
        raise DataError(
            f"{path(layout)}: expected 4 axes "
            f"({'[sims, frames, D, n]' if layout == 'loc' else '[sims, n, frames, F]'}), got "
            f"shape {states.shape}"
        )
    if layout == "loc":
        sims, frames, dim, n = states.shape
    else:
        sims, n, frames, dim = states.shape
    if min(sims, frames, dim) == 0 or n < 2:
        raise DataError(
            f"{path(layout)}: shape {states.shape} needs >= 1 simulation, frame and channel "
            "and >= 2 objects"
        )
    if has["vel"]:
        vel = disk.load_array(path("vel"), mmap=True)
        if vel.shape != states.shape:
            raise DataError(
                f"{path('vel')}: shape {vel.shape} differs from {path('loc')} {states.shape}"
            )
    if has["edges"]:
        edges = disk.load_array(path("edges"), mmap=True)
        if edges.shape != (sims, n, n):
            raise DataError(
                f"{path('edges')}: expected [sims, n, n] = {(sims, n, n)} to match "
                f"{path(layout)} {states.shape}, got {edges.shape}"
            )
    if has["sizes"]:
        _read_sizes(path("sizes"), path(layout), sims, n)
    return SplitFiles(layout, sims, frames, n, dim, has["vel"], has["edges"], has["sizes"])


def _read_sizes(path: str, states_path: str, sims: int, n: int) -> np.ndarray:
    """A ``sizes`` file, checked against its split's states: int32 ``[sims]``."""
    try:
        sizes = disk.load_array(path)
    except ValueError as e:
        raise DataError(f"{e} (sizes: integer object counts [sims])") from None
    if sizes.ndim != 1:
        raise DataError(
            f"{path}: expected one object count per simulation, shape [sims] = ({sims},), "
            f"got shape {sizes.shape}"
        )
    if len(sizes) != sims:
        raise DataError(
            f"{path} holds {len(sizes)} sizes but {states_path} holds {sims} simulations: "
            "write one object count per simulation, in the same order"
        )
    fix = f"write each simulation's number of real objects, an integer in [2, {n}]"
    if not np.issubdtype(sizes.dtype, np.integer):
        bad = np.flatnonzero(~np.isfinite(sizes))
        if bad.size:
            raise DataError(
                f"{path}: {bad.size} sizes are NaN/inf, first at simulation {int(bad[0])}: {fix}"
            )
        bad = np.flatnonzero(sizes != np.round(sizes))
        if bad.size:
            raise DataError(
                f"{path}: sizes must be integers, simulation {int(bad[0])} has "
                f"{float(sizes[bad[0]])} ({bad.size} non-integer): {fix}"
            )
    bad = np.flatnonzero(sizes < 2)
    if bad.size:
        raise DataError(
            f"{path}: simulation {int(bad[0])} has size {sizes[bad[0]]} ({bad.size} below 2): "
            f"a system needs >= 2 objects; {fix}"
        )
    bad = np.flatnonzero(sizes > n)
    if bad.size:
        raise DataError(
            f"{path}: simulation {int(bad[0])} has size {sizes[bad[0]]} but {states_path} "
            f"holds n = {n} objects ({bad.size} sizes above n): pad the arrays to the "
            f"largest size, or {fix}"
        )
    return sizes.astype(np.int32)


def inspect(data_dir: str, name: str, splits: Sequence[str] = SPLITS) -> dict[str, SplitFiles]:
    """What a named dataset's splits hold, checked to agree (layout, n, D or F, velocities).

    Raises:
      DataError: a missing folder or file (naming what the folder holds and what was
        expected), shapes that disagree, or splits of different layouts or sizes.
    """
    check_name(name)
    if not os.path.isdir(data_dir):
        parent = os.path.dirname(os.path.abspath(data_dir))
        raise DataError(
            f"data_dir {data_dir!r} does not exist"
            + (
                f" (its parent holds: {', '.join(sorted(os.listdir(parent))[:8])})"
                if os.path.isdir(parent)
                else ""
            )
        )
    info = {split: _split_files(data_dir, name, split) for split in splits}
    first_split, first = next(iter(info.items()))
    for split, files in info.items():
        for field in ("layout", "num_particles", "dim", "has_vel"):
            if getattr(files, field) != getattr(first, field):
                raise DataError(
                    f"dataset {name!r} in {data_dir}: split {split} has {field}="
                    f"{getattr(files, field)} but {first_split} has {getattr(first, field)}; "
                    "every split must share the layout, object count and dimension"
                )
    return info


def _check_finite(array: np.ndarray, path: str, real: np.ndarray | None = None) -> None:
    """Raises naming the file and the first NaN/inf; with ``real`` (a bool mask that
    broadcasts to ``array``) only real objects' values are looked at."""
    if real is None:
        try:
            disk.check_finite(array, path)
        except ValueError as e:
            raise DataError(str(e)) from None
        return
    bad = ~np.isfinite(array) & real
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: {int(bad.sum())} non-finite values (NaN/inf) in real objects (padding, "
            f"objects >= size, is ignored), first at index {first}"
        )


def _labels(
    path: str, edges: np.ndarray, num_types: int | None, sizes: np.ndarray | None = None
) -> np.ndarray:
    """``[sims, n, n]`` integer codes -> int32 ``[sims, n(n-1)]`` (j -> i), checked; with
    ``sizes`` the edges touching padded objects are ignored and labelled ``-1``."""
    edges = np.asarray(edges)
    real = None
    if sizes is not None:
        nodes = graph.node_mask(sizes, edges.shape[-1])
        _check_finite(edges, path, nodes[:, :, None] & nodes[:, None, :])
        real = graph.edge_mask(sizes, edges.shape[-1])
    else:
        _check_finite(edges, path)
    directed = graph.matrix_to_edges(edges)
    wrong = (directed != np.round(directed)) | (directed < 0)
    if real is not None:
        wrong &= real
    if np.any(wrong):
        bad = np.unique(directed[wrong])[:5]
        raise DataError(
            f"{path}: relation codes must be non-negative integers off the diagonal, found "
            f"{bad.tolist()} (charged particles' -1/+1 products: use --system=charged)"
        )
    labels = (directed if real is None else np.where(real, directed, -1)).astype(np.int32)
    if num_types is not None and labels.size and labels.max() >= num_types:
        raise DataError(
            f"{path}: relation code {int(labels.max())} but the run was trained with "
            f"{num_types} relation types (codes 0..{num_types - 1})"
        )
    return labels


def _states(
    data_dir: str,
    name: str,
    split: str,
    files: SplitFiles,
    rows: slice,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """One split's raw float64 states ``[sims, frames, n, S]`` (rows ``rows``); with
    ``sizes`` only real objects are checked, and padded objects' values are set to 0."""
    path = lambda kind: os.path.join(data_dir, file_name(kind, split, name))  # noqa: E731
    real = None if sizes is None else graph.node_mask(sizes, files.num_particles)
    if files.layout == "feat":
        feat = disk.load_array(path("feat"), mmap=True)[rows]
        if real is None:
            _check_finite(feat, path("feat"))
            return np.swapaxes(np.asarray(feat, np.float64), 1, 2)
        real = real[:, :, None, None]  # [s, n, frames, F]
        _check_finite(feat, path("feat"), real)
        return np.swapaxes(np.where(real, np.asarray(feat, np.float64), 0.0), 1, 2)
    real = None if real is None else real[:, None, None, :]  # [s, frames, D, n]
    loc = np.asarray(disk.load_array(path("loc"), mmap=True)[rows], np.float64)
    _check_finite(loc, path("loc"), real)
    if real is not None:
        loc = np.where(real, loc, 0.0)
    if files.has_vel:
        vel = np.asarray(disk.load_array(path("vel"), mmap=True)[rows], np.float64)
        _check_finite(vel, path("vel"), real)
        if real is not None:
            vel = np.where(real, vel, 0.0)
    elif files.frames < 2:
        raise DataError(f"{path('loc')}: velocities from positions need >= 2 frames")
    else:
        vel = np.gradient(loc, axis=1)  # per frame: central inside, one-sided at the ends
    return np.swapaxes(np.concatenate([loc, vel], axis=2), 2, 3)  # [s, f, n, 2D]


def _statistics(states: np.ndarray, layout: str, sizes: np.ndarray | None = None) -> Normalization:
    """The training normalisation (see the module docstring): over real objects only."""
    if sizes is not None:  # [real objects, frames, S]
        states = np.swapaxes(states, 1, 2)[graph.node_mask(sizes, states.shape[2])]
    if layout == "feat":
        return Normalization.from_channels(states)
    d = states.shape[-1] // 2
    lo_hi = [(states[..., sl].min(), states[..., sl].max()) for sl in (slice(0, d), slice(d, None))]
    (loc_min, loc_max), (vel_min, vel_max) = lo_hi
    if loc_max == loc_min or vel_max == vel_min:
        raise DataError(
            "the training positions or velocities are constant (every value "
            f"{loc_min if loc_max == loc_min else vel_min}): nothing moves"
        )
    return Normalization.positions_velocities(loc_min, loc_max, vel_min, vel_max, d)


def load(
    data_dir: str,
    name: str,
    splits: Sequence[str] = SPLITS,
    normalization: Normalization | None = None,
    num_sims: Mapping[str, int] | None = None,
    num_relation_types: int | None = None,
    no_relation: int | None = None,
) -> datasets.Dataset:
    """Loads one's own named dataset (see the module docstring).

    Args:
      data_dir: the folder.
      name: the dataset's NAME.
      splits: which splits to load.
      normalization: the run's own (evaluation); by default computed on train, which must
        then be among ``splits``.
      num_sims: ``{split: k}``: only the first ``k`` simulations of a split (0 or
        missing: all).
      num_relation_types: ``R`` of a trained run (labels must be below it); by default
        one more than the largest code of the loaded labels.
      no_relation: the code that means "no relation" (for edge existence and AUROC).

    Returns:
      A :class:`~nri_modular.data.datasets.Dataset` with ``system=""``, ``name=name``,
      float32 states ``[sims, frames, n, S]``, labels int32 ``[sims, n(n-1)]`` or None per
      split, and ``relations`` (None when no loaded split has labels). Ragged data
      (``sizes`` files): each split's ``sizes`` int32 ``[sims]`` (where the split has a
      ``sizes`` file, and every split when train has one), padded objects' states 0.0
      and their edges' labels ``-1``.
    """
    splits = disk.check_splits(splits)
    if normalization is None and "train" not in splits:
        raise ValueError(
            "the normalisation comes from the train split: load 'train' or pass normalization="
        )
    info = inspect(data_dir, name, splits)
    num_sims = dict(num_sims or {})
    ragged = os.path.exists(os.path.join(data_dir, file_name("sizes", "train", name)))
    order = sorted(splits, key=lambda s: s != "train")
    loaded = {}
    for split in order:
        files = info[split]
        want = int(num_sims.get(split) or files.sims)
        if want > files.sims:
            raise DataError(
                f"num_{split}={want} but {file_name(files.layout, split, name)} holds "
                f"{files.sims} simulations"
            )
        rows = slice(0, want)
        sizes = None
        if files.has_sizes:
            path = os.path.join(data_dir, file_name("sizes", split, name))
            states_path = os.path.join(data_dir, file_name(files.layout, split, name))
            sizes = _read_sizes(path, states_path, files.sims, files.num_particles)[rows]
        elif ragged:
            sizes = np.full(want, files.num_particles, np.int32)
        raw = _states(data_dir, name, split, files, rows, sizes)
        if normalization is None:
            normalization = _statistics(raw, files.layout, sizes)
        if normalization.state_dim != raw.shape[-1]:
            raise DataError(
                f"dataset {name!r} has {raw.shape[-1]} state channels per object but the "
                f"normalisation has {normalization.state_dim}: a run trained on other data"
            )
        labels = None
        if files.labelled:
            path = os.path.join(data_dir, file_name("edges", split, name))
            edges = disk.load_array(path, mmap=True)[rows]
            labels = _labels(path, edges, num_relation_types, sizes)
        states = normalization.normalise(raw).astype(np.float32)
        if sizes is not None:  # padded objects: exactly 0
            real = graph.node_mask(sizes, files.num_particles)[:, None, :, None]
            states = np.where(real, states, np.float32(0.0))
        loaded[split] = datasets.Split(states, labels, sizes)
    labelled = [s.labels for s in loaded.values() if s.labels is not None]
    relations = None
    if labelled:
        num_types = num_relation_types or max(int(lab.max(initial=0)) for lab in labelled) + 1
        try:
            relations = datasets.Relations(num_types, no_relation)
        except ValueError as e:
            raise DataError(f"dataset {name!r}: {e} (--no_relation)") from None
    first = info[splits[0]]
    return datasets.Dataset(
        system="",
        num_particles=first.num_particles,
        normalization=normalization,
        splits={s: loaded[s] for s in splits},
        name=name,
        relations=relations,
    )


def fingerprint(data_dir: str, name: str, split: str = "train") -> dict:
    """:func:`nri_modular.data.files.fingerprint` of one's own split (every file it has)."""
    names = [
        file_name(kind, split, name)
        for kind in ("loc", "feat", "vel", "edges", "sizes")
        if os.path.exists(os.path.join(data_dir, file_name(kind, split, name)))
    ]
    return disk.fingerprint_files(data_dir, names)
