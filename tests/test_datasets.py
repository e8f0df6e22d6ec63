"""Tests of dataset generation, the Kipf-layout loader, normalisation and task batches."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import graph
from nri_modular.data import batching, datasets

SMALL = dict(num_train=6, num_valid=3, num_test=2, seed=5, train_steps=500, test_steps=1000)
SPLIT_SHAPES = {"train": (6, 4), "valid": (3, 4), "test": (2, 9)}  # (sims, frames)


@pytest.fixture(scope="module")
def springs_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("springs"))
    datasets.generate_dataset("springs", out, **SMALL)
    return out


def _raw(data_dir, kind, split, system="springs", n=5):
    return np.load(os.path.join(data_dir, datasets.file_name(kind, split, system, n)))


def _write_split(data_dir, split, loc, vel, edges, system="springs", n=5):
    for kind, array in (("loc", loc), ("vel", vel), ("edges", edges)):
        np.save(os.path.join(data_dir, datasets.file_name(kind, split, system, n)), array)


def test_generate_writes_kipf_layout(springs_dir):
    files = sorted(os.listdir(springs_dir))
    expected = [
        f"{k}_{s}_springs5.npy" for k in ("edges", "loc", "vel") for s in ("test", "train", "valid")
    ]
    assert files == sorted(expected + ["meta_springs5.json"])
    for split, (sims, frames) in SPLIT_SHAPES.items():
        assert _raw(springs_dir, "loc", split).shape == (sims, frames, 2, 5)
        assert _raw(springs_dir, "vel", split).shape == (sims, frames, 2, 5)
        assert _raw(springs_dir, "edges", split).shape == (sims, 5, 5)
        assert _raw(springs_dir, "loc", split).dtype == np.float32
    # independent splits: different first simulations
    assert not np.allclose(
        _raw(springs_dir, "loc", "train")[0], _raw(springs_dir, "loc", "valid")[0]
    )


def test_generate_is_deterministic(springs_dir, tmp_path):
    datasets.generate_dataset("springs", str(tmp_path), **SMALL)
    for split in datasets.SPLITS:
        for kind in ("loc", "vel", "edges"):
            np.testing.assert_array_equal(
                _raw(tmp_path, kind, split), _raw(springs_dir, kind, split)
            )


def test_round_trip_and_normalisation(springs_dir):
    ds = datasets.load_dataset(springs_dir, "springs")
    assert set(ds.splits) == {"train", "valid", "test"}
    for split, (sims, frames) in SPLIT_SHAPES.items():
        s = ds[split]
        chex.assert_shape(s.states, (sims, frames, 5, 4))
        chex.assert_shape(s.labels, (sims, 20))
        assert s.states.dtype == np.float32 and s.labels.dtype == np.int32
        np.testing.assert_array_equal(
            s.labels, graph.matrix_to_edges(_raw(springs_dir, "edges", split)).astype(np.int32)
        )
        # denormalise gives back the physical states, (x, y, vx, vy) per particle
        raw = np.concatenate(
            [_raw(springs_dir, "loc", split), _raw(springs_dir, "vel", split)], axis=2
        )
        np.testing.assert_allclose(
            ds.normalization.denormalise(s.states), np.swapaxes(raw, 2, 3), atol=1e-5
        )
    train = ds.train.states
    for dims in (slice(0, 2), slice(2, 4)):  # exactly [-1, 1] on train
        assert train[..., dims].min() == -1.0 and train[..., dims].max() == 1.0
    norm = ds.normalization
    assert norm.minimum[0] == norm.minimum[1] == _raw(springs_dir, "loc", "train").min()
    assert norm.maximum[2] == norm.maximum[3] == _raw(springs_dir, "vel", "train").max()
    # valid/test share the train constants
    valid_only = datasets.load_dataset(
        springs_dir, "springs", splits=("valid",), normalization=norm
    )
    np.testing.assert_array_equal(valid_only.valid.states, ds.valid.states)


def test_kipf_release_layout_float64_charged(tmp_path):
    """Files named and shaped like the released NRI data (float64, charged5, diag = 1)."""
    rng = np.random.default_rng(0)
    charges = {}
    for split, (sims, frames) in SPLIT_SHAPES.items():
        q = np.where(rng.random((sims, 5)) < 0.5, 1.0, -1.0)
        charges[split] = q
        loc = rng.normal(size=(sims, frames, 2, 5)) * 2
        vel = rng.normal(size=(sims, frames, 2, 5))
        _write_split(tmp_path, split, loc, vel, q[:, :, None] * q[:, None, :], system="charged")
    ds = datasets.load_dataset(str(tmp_path), "charged")
    loc = np.load(tmp_path / "loc_train_charged5.npy")
    vel = np.load(tmp_path / "vel_train_charged5.npy")
    # Kipf's normalisation, then [sims, frames, 2, n] -> [sims, frames, n, 2]
    kipf_loc = (loc - loc.min()) * 2 / (loc.max() - loc.min()) - 1
    kipf_vel = (vel - vel.min()) * 2 / (vel.max() - vel.min()) - 1
    np.testing.assert_allclose(ds.train.states[..., :2], np.swapaxes(kipf_loc, 2, 3), atol=1e-6)
    np.testing.assert_allclose(ds.train.states[..., 2:], np.swapaxes(kipf_vel, 2, 3), atol=1e-6)
    # like charges (q_i q_j = +1, repel) -> 1; opposite (-1, attract) -> 0; edge j -> i
    q = charges["test"]
    receivers, senders = graph.edge_index(5)
    expected = (q[:, receivers] * q[:, senders] > 0).astype(np.int32)
    np.testing.assert_array_equal(ds.test.labels, expected)


def test_normalisation_in_jax_under_jit():
    norm = datasets.Normalization.positions_velocities(-2.0, 3.0, -0.5, 0.5)
    states = jnp.array([[-2.0, 3.0, -0.5, 0.5], [0.5, 0.5, 0.0, 0.0]])[None]  # [1, 2, 4]
    out = jax.jit(norm.normalise)(states)
    np.testing.assert_allclose(out, [[[-1, 1, -1, 1], [0, 0, 0, 0]]], atol=1e-6)
    np.testing.assert_allclose(jax.jit(norm.denormalise)(out), states, atol=1e-6)
    assert datasets.Normalization.from_dict(norm.to_dict()) == norm
    legacy = {"loc_min": -2.0, "loc_max": 3.0, "vel_min": -0.5, "vel_max": 0.5}
    assert datasets.Normalization.from_dict(legacy) == norm  # run.json of older runs
    with pytest.raises(ValueError, match="max > min"):
        datasets.Normalization.positions_velocities(1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"states must be \[..., 4\]"):
        norm.normalise(np.zeros((3, 2)))


# ----------------------------------------------------------------------------------------
# Bad input.


def _good_split(tmp_path, system="springs", sims=3, frames=4, n=5):
    loc = np.zeros((sims, frames, 2, n))
    loc[:, :, 0, 0] = 1.0
    vel = loc.copy()
    edges = np.zeros((sims, n, n)) if system == "springs" else np.ones((sims, n, n))
    return loc, vel, edges


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        ("vel_frames", ValueError, r"vel_train_springs5.npy: shape \(3, 5, 2, 5\) does not match"),
        ("vel_sims", ValueError, r"vel_train_springs5.npy: shape \(2, 4, 2, 5\) does not match"),
        ("edges_sims", ValueError, r"edges_train_springs5.npy: expected shape \[sims, n, n\]"),
        ("edges_n", ValueError, r"edges_train_springs5.npy: expected shape"),
        ("loc_ndim", ValueError, r"loc_train_springs5.npy: expected shape \[sims, frames, 2, n\]"),
        ("nan", ValueError, r"loc_train_springs5.npy: 1 non-finite values \(NaN/inf\)"),
        ("inf", ValueError, r"vel_train_springs5.npy: 1 non-finite values"),
        ("edge_value", ValueError, r"edges_train_springs5.npy: springs relations must be in"),
        (
            "edge_asymmetric",
            ValueError,
            r"edges_train_springs5.npy: springs relations are symmetric .* first simulation 0, "
            r"pair \(1, 2\)",
        ),
        ("complex", ValueError, r"loc_train_springs5.npy: expected a real-valued"),
    ],
)
def test_loader_bad_files(tmp_path, mutate, error, message):
    loc, vel, edges = _good_split(tmp_path)
    if mutate == "vel_frames":
        vel = np.zeros((3, 5, 2, 5))
    elif mutate == "vel_sims":
        vel = vel[:2]
    elif mutate == "edges_sims":
        edges = edges[:2]
    elif mutate == "edges_n":
        edges = np.zeros((3, 4, 4))
    elif mutate == "loc_ndim":
        loc = vel = loc[:, :, 0]
    elif mutate == "nan":
        loc[1, 2, 1, 3] = np.nan
    elif mutate == "inf":
        vel[0, 0, 0, 0] = np.inf
    elif mutate == "edge_value":
        edges[0, 1, 2] = edges[0, 2, 1] = 0.5
    elif mutate == "edge_asymmetric":
        edges[0, 1, 2] = 1 - edges[0, 2, 1]
    elif mutate == "complex":
        loc = loc.astype(np.complex64)
    _write_split(tmp_path, "train", loc, vel, edges)
    with pytest.raises(error, match=message):
        datasets.load_dataset(str(tmp_path), "springs", splits=("train",))


def test_loader_particle_count_differs_from_argument(tmp_path):
    loc, vel, edges = _good_split(tmp_path, n=4)
    # files named for 5 particles but holding 4
    _write_split(tmp_path, "train", loc, vel, edges, n=5)
    with pytest.raises(ValueError, match=r"has 4 particles .* but num_particles=5"):
        datasets.load_dataset(str(tmp_path), "springs", splits=("train",))


def test_loader_missing_and_unknown(tmp_path):
    _write_split(tmp_path, "train", *_good_split(tmp_path))
    os.remove(tmp_path / "vel_train_springs5.npy")
    with pytest.raises(FileNotFoundError, match="missing dataset file .*vel_train_springs5.npy"):
        datasets.load_dataset(str(tmp_path), "springs", splits=("train",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_dataset(str(tmp_path / "nowhere"), "springs")
    with pytest.raises(ValueError, match="unknown system 'spring'"):
        datasets.load_dataset(str(tmp_path), "spring")
    with pytest.raises(ValueError, match="splits must be a non-empty subset"):
        datasets.load_dataset(str(tmp_path), "springs", splits=("training",))
    with pytest.raises(ValueError, match="load 'train' or pass normalization="):
        datasets.load_dataset(str(tmp_path), "springs", splits=("valid",))
    with pytest.raises(ValueError, match="charged relations must be in"):
        loc, vel, _ = _good_split(tmp_path)
        _write_split(tmp_path, "train", loc, vel, np.zeros((3, 5, 5)), system="charged")
        datasets.load_dataset(str(tmp_path), "charged", splits=("train",))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(system="gravity"), "unknown system 'gravity'"),
        (dict(num_train=0), "num_train must be a positive integer"),
        (dict(num_test=-1), "num_test must be a positive integer"),
        (dict(train_steps=550), "sample_freq=100 does not divide num_steps=550"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_generate_bad_arguments(tmp_path, kwargs, message):
    args = dict(system="springs", out_dir=str(tmp_path), **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        datasets.generate_dataset(**args)
    assert not os.listdir(tmp_path)  # nothing written


# ----------------------------------------------------------------------------------------
# Generate-and-cache.


def test_ensure_dataset_caches_and_regenerates(tmp_path, monkeypatch):
    calls = []
    original = datasets.generate_dataset
    monkeypatch.setattr(
        datasets, "generate_dataset", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    small = dict(SMALL, train_steps=300, test_steps=300)
    first = datasets.ensure_dataset(str(tmp_path), "charged", **small)
    second = datasets.ensure_dataset(str(tmp_path), "charged", **small)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.train.states, second.train.states)
    meta = json.loads((tmp_path / "meta_charged5.json").read_text())
    assert meta["num_sims"] == {"train": 6, "valid": 3, "test": 2}
    # other arguments: refused, naming them, unless the caller asks to regenerate
    with pytest.raises(ValueError, match=r"made with other num_sims .*--regenerate_data"):
        datasets.ensure_dataset(str(tmp_path), "charged", **dict(small, num_train=4))
    assert len(calls) == 1 and meta == json.loads((tmp_path / "meta_charged5.json").read_text())
    third = datasets.ensure_dataset(
        str(tmp_path), "charged", **dict(small, num_train=4), regenerate=True
    )
    assert len(calls) == 2 and third.train.num_tasks == 4
    # a dataset we did not write (no meta) is loaded if the sizes match, never overwritten
    os.remove(tmp_path / "meta_charged5.json")
    datasets.ensure_dataset(str(tmp_path), "charged", **dict(small, num_train=4))
    with pytest.raises(ValueError, match="has 4 simulations but num_train=6.*never rewritten"):
        datasets.ensure_dataset(str(tmp_path), "charged", **small)
    with pytest.raises(ValueError, match="holds files we did not write"):
        datasets.ensure_dataset(str(tmp_path), "charged", **small, regenerate=True)
    assert len(calls) == 2


def test_generate_cli(tmp_path):
    cmd = [
        sys.executable, "-m", "nri_modular.data.generate", "--system=charged",
        "--num_train=3", "--num_valid=2", "--num_test=2", "--train_steps=300",
        "--test_steps=300", f"--out_dir={tmp_path}", "--seed=1",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sims/s" in out.stderr
    assert datasets.load_dataset(str(tmp_path), "charged").train.states.shape == (3, 2, 5, 4)


# ----------------------------------------------------------------------------------------
# Task batches.


def test_task_batches():
    a = batching.task_batches(10, 3, seed=1, epoch=0)
    chex.assert_shape(a, (3, 3))
    assert a.dtype == np.int32 and len(set(a.ravel())) == 9
    np.testing.assert_array_equal(a, batching.task_batches(10, 3, seed=1, epoch=0))
    assert not np.array_equal(a, batching.task_batches(10, 3, seed=1, epoch=1))
    assert not np.array_equal(a, batching.task_batches(10, 3, seed=2, epoch=0))
    b = batching.task_batches(10, 3, seed=1, epoch=0, drop_remainder=False)
    chex.assert_shape(b, (4, 3))
    assert set(b.ravel()) == set(range(10))
    with pytest.raises(ValueError, match="no full batch"):
        batching.task_batches(2, 3, seed=0, epoch=0)
    with pytest.raises(ValueError, match="must be positive"):
        batching.task_batches(0, 3, seed=0, epoch=0)


def test_task_batches_in_shards_keep_every_slice_in_its_block():
    a = batching.task_batches(24, 8, seed=1, epoch=2, shards=4)  # blocks of 6, slices of 2
    chex.assert_shape(a, (3, 8))
    assert a.dtype == np.int32 and sorted(a.ravel()) == list(range(24))
    for v in range(4):
        assert ((a[:, 2 * v : 2 * v + 2] // 6) == v).all()
    np.testing.assert_array_equal(a, batching.task_batches(24, 8, seed=1, epoch=2, shards=4))
    assert not np.array_equal(a, batching.task_batches(24, 8, seed=1, epoch=3, shards=4))
    # One shard is the historical order (resumed runs and published numbers unchanged):
    # literally what the code before task_shards returned.
    np.testing.assert_array_equal(
        batching.task_batches(24, 8, 1, 2, shards=1),
        [
            [5, 17, 3, 20, 15, 9, 14, 10],
            [18, 21, 23, 8, 0, 13, 4, 16],
            [22, 6, 19, 7, 1, 12, 11, 2],
        ],
    )
    np.testing.assert_array_equal(
        batching.task_batches(10, 3, 1, 0, drop_remainder=False),
        [[8, 4, 7], [0, 1, 2], [5, 9, 6], [3, 8, 4]],
    )
    # Partial batches are filled up within each block.
    c = batching.task_batches(20, 8, seed=0, epoch=0, drop_remainder=False, shards=4)
    chex.assert_shape(c, (3, 8))
    assert sorted(set(c.ravel())) == list(range(20))
    for v in range(4):
        assert ((c[:, 2 * v : 2 * v + 2] // 5) == v).all()
    batching.check_block_local(c[0], 20, 4)
    with pytest.raises(ValueError, match=r"batch slice 0 of task_shards=4 holds tasks outside"):
        batching.check_block_local(c[0][::-1], 20, 4)
    with pytest.raises(ValueError, match="shards=5 must be >= 1 and divide num_tasks=24"):
        batching.task_batches(24, 8, seed=0, epoch=0, shards=5)


def test_loading_one_hosts_shard_of_training_tasks(springs_dir):
    whole = datasets.load_dataset(springs_dir, "springs")
    part = datasets.load_dataset(springs_dir, "springs", train_rows=np.array([4, 1, 2]))
    assert part.normalization == whole.normalization  # statistics of all training tasks
    states = part.train.states
    assert isinstance(states, datasets.TaskRows) and states.shape == whole.train.states.shape
    assert states.data.shape[0] == 3
    np.testing.assert_array_equal(states[np.array([2, 4])], whole.train.states[[2, 4]])
    np.testing.assert_array_equal(part.train.labels, whole.train.labels)  # labels whole
    np.testing.assert_array_equal(part.test.states, whole.test.states)
    with pytest.raises(IndexError, match=r"tasks \[0, 3\] are not held by this host"):
        states[np.array([0, 1, 3])]
    for bad in (np.array([1.7]), np.array([True, False]), slice(0, 2)):
        with pytest.raises(TypeError, match="index TaskRows with integer task ids"):
            states[bad]
    with pytest.raises(TypeError, match="holds 3 of 6 tasks: index it with task ids"):
        np.asarray(states)
    with pytest.raises(TypeError, match="train_rows must be integer task ids"):
        datasets.load_dataset(springs_dir, "springs", train_rows=np.array([1.5]))
    with pytest.raises(ValueError, match=r"train_rows must be in \[0, 6\)"):
        datasets.load_dataset(springs_dir, "springs", train_rows=np.array([6]))


def test_eval_batches_and_gather(springs_dir):
    idx, mask = batching.eval_batches(5, 2)
    np.testing.assert_array_equal(idx, [[0, 1], [2, 3], [4, 4]])
    np.testing.assert_array_equal(mask, [[1, 1], [1, 1], [1, 0]])
    split = datasets.load_dataset(springs_dir, "springs").train
    states, labels = datasets.gather(split, batching.task_batches(6, 4, seed=0, epoch=0)[0])
    chex.assert_shape([states, labels], [(4, 4, 5, 4), (4, 20)])
    with pytest.raises(ValueError, match=r"task indices must be in \[0, 6\)"):
        datasets.gather(split, np.array([0, 6]))
