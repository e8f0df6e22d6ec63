"""Systems of different sizes in one's own data (``sizes_{split}_NAME.npy``): padding is
ignored (checks, statistics), zeroed (states) and labelled -1 (edges); the mask helpers;
the examples that write ragged datasets (examples/particles3d.py --min_particles,
examples/ragged_springs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from nri_modular import graph
from nri_modular.data import datasets, own

N, DIM = 5, 2
SIMS = {"train": 8, "valid": 3, "test": 3}
FRAMES = {"train": 6, "valid": 6, "test": 9}


def _example(name):
    sys.path.insert(0, os.path.join(REPO, "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _sizes(rng, sims):
    sizes = rng.integers(2, N + 1, size=sims)
    sizes[:2] = (N, 2)  # a full system and the smallest in every split
    return sizes.astype(np.int32)


def _write(folder, name="rag", padding=np.nan, vel=False, seed=0):
    """A ragged dataset of random walks [sims, frames, DIM, N] (padding filled with
    ``padding``), float edges 0/1 (padding filled with ``padding`` too) and sizes.

    Returns:
      ``{split: (loc float64 with padding 0, sizes, codes [sims, N, N])}``."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    truth = {}
    for split, sims in SIMS.items():
        sizes = _sizes(rng, sims)
        loc = np.cumsum(rng.normal(size=(sims, FRAMES[split], DIM, N)), axis=1)
        codes = rng.integers(0, 2, size=(sims, N, N)).astype(np.float64)
        pad = ~graph.node_mask(sizes, N)  # [sims, N]
        loc[pad[:, None, None, :].repeat(FRAMES[split], 1).repeat(DIM, 2)] = 0.0
        truth[split] = (loc.copy(), sizes, codes.copy())
        on_disk = np.where(pad[:, None, None, :], padding, loc)
        np.save(os.path.join(folder, f"loc_{split}_{name}.npy"), on_disk)
        if vel:
            velocity = np.where(pad[:, None, None, :], padding, np.gradient(loc, axis=1))
            np.save(os.path.join(folder, f"vel_{split}_{name}.npy"), velocity)
        codes[pad[:, :, None] | pad[:, None, :]] = padding
        np.save(os.path.join(folder, f"edges_{split}_{name}.npy"), codes)
        np.save(os.path.join(folder, f"sizes_{split}_{name}.npy"), sizes)
    return truth


def test_mask_helpers():
    sizes = np.array([2, 4, 3], np.int32)
    nodes = graph.node_mask(sizes, 4)
    np.testing.assert_array_equal(nodes, np.arange(4)[None] < sizes[:, None])
    receivers, senders = graph.edge_index(4)
    expected = (receivers[None] < sizes[:, None]) & (senders[None] < sizes[:, None])
    edges = graph.edge_mask(sizes, 4)
    assert edges.shape == (3, 12) and edges.dtype == bool
    np.testing.assert_array_equal(edges, expected)
    assert edges.sum(axis=1).tolist() == [2, 12, 6]  # size * (size - 1) real edges
    traced = jax.jit(lambda s: (graph.node_mask(s, 4), graph.edge_mask(s, 4)))
    jax_nodes, jax_edges = traced(jnp.asarray(sizes))
    np.testing.assert_array_equal(jax_nodes, nodes)
    np.testing.assert_array_equal(jax_edges, edges)


@pytest.mark.parametrize("vel", [False, True])
def test_round_trip_with_nan_padding(tmp_path, vel):
    truth = _write(tmp_path, vel=vel)
    data = own.load(str(tmp_path), "rag", no_relation=0)
    assert data.num_particles == N and data.relations == datasets.Relations(2, 0)
    for split in own.SPLITS:
        loc, sizes, codes = truth[split]
        got = data[split]
        assert got.sizes.dtype == np.int32
        np.testing.assert_array_equal(got.sizes, sizes)
        real = graph.node_mask(sizes, N)
        assert np.all(np.isfinite(got.states))
        assert np.all(got.states[np.broadcast_to(~real[:, None, :], got.states.shape[:3])] == 0.0)
        # real objects: the positions, and velocities from the positions' differences
        physical = data.normalization.denormalise(got.states.astype(np.float64))
        mask = np.broadcast_to(real[:, None, :], got.states.shape[:3])
        np.testing.assert_allclose(physical[mask][:, :DIM], np.swapaxes(loc, 2, 3)[mask], atol=1e-4)
        velocity = np.swapaxes(np.gradient(loc, axis=1), 2, 3)
        np.testing.assert_allclose(physical[mask][:, DIM:], velocity[mask], atol=1e-4)
        # labels: -1 on edges touching padding, the codes elsewhere
        edges = graph.edge_mask(sizes, N)
        np.testing.assert_array_equal(got.labels[~edges], -1)
        np.testing.assert_array_equal(got.labels[edges], graph.matrix_to_edges(codes)[edges])
        assert got.labels.dtype == np.int32


def test_statistics_over_real_objects_only(tmp_path):
    truth = _write(tmp_path / "nan", padding=np.nan)
    _write(tmp_path / "huge", padding=1e6)
    _write(tmp_path / "zero", padding=0.0)
    loaded = [own.load(str(tmp_path / p), "rag") for p in ("nan", "huge", "zero")]
    for data in loaded[1:]:
        assert data.normalization == loaded[0].normalization
        for split in own.SPLITS:
            np.testing.assert_array_equal(data[split].states, loaded[0][split].states)
            np.testing.assert_array_equal(data[split].labels, loaded[0][split].labels)
    loc, sizes, _ = truth["train"]
    real = graph.node_mask(sizes, N)
    positions = np.swapaxes(loc, 2, 3)[np.broadcast_to(real[:, None, :], loc.shape[:2] + (N,))]
    velocities = np.swapaxes(np.gradient(loc, axis=1), 2, 3)[
        np.broadcast_to(real[:, None, :], loc.shape[:2] + (N,))
    ]
    norm = loaded[0].normalization
    assert norm.minimum == (positions.min(),) * DIM + (velocities.min(),) * DIM
    assert norm.maximum == (positions.max(),) * DIM + (velocities.max(),) * DIM
    assert positions.max() < 1e6  # the 1e6 padding would have moved the maximum
    states = loaded[0].train.states
    assert states[..., :DIM][np.broadcast_to(real[:, None, :], states.shape[:3])].min() == -1.0


def test_num_sims_subset_and_splits_without_sizes(tmp_path):
    truth = _write(tmp_path)
    data = own.load(str(tmp_path), "rag", num_sims={"train": 3, "test": 2})
    assert data.train.states.shape == (3, FRAMES["train"], N, 2 * DIM)
    np.testing.assert_array_equal(data.train.sizes, truth["train"][1][:3])
    np.testing.assert_array_equal(data.test.sizes, truth["test"][1][:2])
    assert data.test.labels.shape == (2, N * (N - 1)) and len(data.valid.sizes) == 3
    # the statistics of the loaded rows' real objects only
    loc, sizes = truth["train"][0][:3], truth["train"][1][:3]
    real = np.broadcast_to(graph.node_mask(sizes, N)[:, None, :], loc.shape[:2] + (N,))
    assert data.normalization.minimum[0] == np.swapaxes(loc, 2, 3)[real].min()
    # train ragged: a split without a sizes file has every system at full n
    os.remove(tmp_path / "sizes_valid_rag.npy")
    os.remove(tmp_path / "loc_valid_rag.npy")
    os.remove(tmp_path / "edges_valid_rag.npy")
    np.save(tmp_path / "loc_valid_rag.npy", truth["valid"][0])
    data = own.load(str(tmp_path), "rag")
    np.testing.assert_array_equal(data.valid.sizes, [N] * SIMS["valid"])
    assert data.valid.labels is None and data.train.sizes is not None
    # evaluation (test only, the run's normalisation): still ragged
    test = own.load(str(tmp_path), "rag", splits=("test",), normalization=data.normalization)
    np.testing.assert_array_equal(test.test.sizes, truth["test"][1])
    np.testing.assert_array_equal(test.test.states, data.test.states)
    # no sizes file for train: a split without one is not ragged (sizes None)
    os.remove(tmp_path / "sizes_train_rag.npy")
    np.save(tmp_path / "loc_train_rag.npy", truth["train"][0])
    os.remove(tmp_path / "edges_train_rag.npy")
    data = own.load(str(tmp_path), "rag")
    assert data.train.sizes is None and data.valid.sizes is None
    np.testing.assert_array_equal(data.test.sizes, truth["test"][1])  # its own file


def test_folder_listing_and_inspect(tmp_path):
    _write(tmp_path)
    described = own.describe_folder(str(tmp_path))
    held = "edges+loc+sizes"
    assert described == f"rag (test: {held}, train: {held}, valid: {held})"
    info = own.inspect(str(tmp_path), "rag")
    assert all(files.has_sizes and files.num_particles == N for files in info.values())
    fingerprint = own.fingerprint(str(tmp_path), "rag")
    assert "sizes_train_rag.npy" in fingerprint["files"]


@pytest.mark.parametrize(
    "sizes, message",
    [
        (np.full((8, 1), 3), r"sizes_train_rag.npy: expected one object count per simulation, "),
        (np.full(7, 3), r"sizes_train_rag.npy holds 7 sizes but .*loc_train_rag.npy holds 8 sim"),
        (np.array([3, 2.5, 4, 2, 2, 2, 2, 2]), r"sizes must be integers, simulation 1 has 2.5"),
        (np.array([3, 4, 1, 2, 2, 2, 2, 2]), r"simulation 2 has size 1 \(1 below 2\)"),
        (np.array([3, 4, 6, 2, 2, 7, 2, 2]), r"simulation 2 has size 6 but .* n = 5 .*2 sizes"),
        (np.array([3, 4, np.nan, 2, 2, 2, 2, 2]), r"1 sizes are NaN/inf, first at simulation 2"),
        (np.ones(8, bool), r"sizes_train_rag.npy: expected a real-valued"),
    ],
)
def test_bad_sizes_files_name_the_problem(tmp_path, sizes, message):
    _write(tmp_path)
    np.save(tmp_path / "sizes_train_rag.npy", sizes)
    with pytest.raises(own.DataError, match=message):
        own.load(str(tmp_path), "rag")
    with pytest.raises(own.DataError, match=message):
        own.inspect(str(tmp_path), "rag")


def test_integer_valued_float_sizes_are_read(tmp_path):
    truth = _write(tmp_path)
    np.save(tmp_path / "sizes_train_rag.npy", truth["train"][1].astype(np.float64))
    np.testing.assert_array_equal(own.load(str(tmp_path), "rag").train.sizes, truth["train"][1])


def test_real_objects_are_still_checked(tmp_path):
    truth = _write(tmp_path)
    loc = np.load(tmp_path / "loc_test_rag.npy")
    loc[1, 3, 0, 1] = np.inf  # simulation 1 has 2 objects: object 1 is real
    np.save(tmp_path / "loc_test_rag.npy", loc)
    with pytest.raises(own.DataError, match=r"loc_test_rag.npy: 1 non-finite values .* real"):
        own.load(str(tmp_path), "rag")
    _write(tmp_path / "codes")
    edges = np.load(tmp_path / "codes" / "edges_valid_rag.npy")
    edges[0, 0, 1] = 3.5  # simulation 0 is full size
    np.save(tmp_path / "codes" / "edges_valid_rag.npy", edges)
    with pytest.raises(own.DataError, match=r"non-negative integers .* found \[3.5\]"):
        own.load(str(tmp_path / "codes"), "rag")
    edges[0, 0, 1] = 0
    padded = np.flatnonzero(truth["valid"][1] < N)[0]
    edges[padded, N - 1, 0] = -7.0  # padding may hold any code
    np.save(tmp_path / "codes" / "edges_valid_rag.npy", edges)
    assert own.load(str(tmp_path / "codes"), "rag").valid.labels.min() == -1


def test_features_layout_ragged(tmp_path):
    rng = np.random.default_rng(3)
    for split, sims in SIMS.items():
        sizes = _sizes(rng, sims)
        feat = rng.normal(size=(sims, N, FRAMES[split], 3))
        feat[~graph.node_mask(sizes, N)] = np.nan
        np.save(tmp_path / f"feat_{split}_osc.npy", feat)
        np.save(tmp_path / f"sizes_{split}_osc.npy", sizes)
    data = own.load(str(tmp_path), "osc")
    real = graph.node_mask(data.train.sizes, N)
    states = data.train.states
    assert np.all(np.isfinite(states)) and np.all(np.swapaxes(states, 1, 2)[~real] == 0.0)
    for c in range(3):  # each feature's range over real objects
        assert np.swapaxes(states, 1, 2)[real][..., c].min() == -1.0
        assert np.swapaxes(states, 1, 2)[real][..., c].max() == 1.0


# ----------------------------------------------------------------------------------------
# The examples.


def test_particles3d_fixed_size_unchanged(tmp_path, subprocess_env):
    particles3d = _example("particles3d")
    num = {"train": 3, "valid": 2, "test": 2}
    particles3d.write(str(tmp_path / "before"), num, 4, seed=7)
    script = os.path.join(REPO, "examples", "particles3d.py")
    proc = subprocess.run(
        [
            sys.executable,
            script,
            f"--out_dir={tmp_path / 'flag'}",
            "--num_sims=3,2,2",
            "--num_particles=4",
            "--min_particles=4",
            "--seed=7",
        ],
        env=subprocess_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(os.listdir(tmp_path / "before"))
    assert names == sorted(os.listdir(tmp_path / "flag")) and not any("sizes" in n for n in names)
    for name in names:
        before, flag = (np.load(tmp_path / d / name) for d in ("before", "flag"))
        assert before.dtype == flag.dtype and before.tobytes() == flag.tobytes(), name
    # and they are what the simulator gives from the split's seed, as always
    for split, sims in num.items():
        rng = np.random.default_rng([7, particles3d.SPLIT_IDS[split]])
        loc, vel, k = particles3d.simulate(rng, sims, 4, particles3d.FRAMES[split])
        saved = {
            kind: np.load(tmp_path / "before" / f"{kind}_{split}_particles3d.npy")
            for kind in ("loc", "vel", "truth")
        }
        np.testing.assert_array_equal(saved["loc"], loc)
        np.testing.assert_array_equal(saved["vel"], vel)
        np.testing.assert_array_equal(saved["truth"], k.astype(np.int8))


def test_particles3d_ragged_and_its_score(tmp_path, monkeypatch):
    particles3d = _example("particles3d")
    for split, frames in {"train": 6, "valid": 6, "test": 8}.items():
        monkeypatch.setitem(particles3d.FRAMES, split, frames)
    folder = tmp_path / "p3d"
    particles3d.write(str(folder), {"train": 8, "valid": 6, "test": 6}, 4, 1, min_particles=2)
    data = own.load(str(folder), particles3d.NAME)
    for split in own.SPLITS:
        sizes = np.load(folder / f"sizes_{split}_particles3d.npy")
        np.testing.assert_array_equal(data[split].sizes, sizes)
        assert sizes.min() >= 2 and sizes.max() <= 4
        loc = np.load(folder / f"loc_{split}_particles3d.npy")
        pad = ~graph.node_mask(sizes, 4)
        assert np.all(np.swapaxes(loc, 1, 3)[pad] == 0.0)
        assert np.all(np.abs(np.swapaxes(loc, 1, 3)[~pad]).sum(-1) > 0)
        truth = np.load(folder / f"truth_{split}_particles3d.npy")
        np.testing.assert_array_equal(truth[pad[:, :, None] | pad[:, None, :]], -1)
        real = ~(pad[:, :, None] | pad[:, None, :])
        assert set(np.unique(truth[real])) <= {0, 1}
    assert len(np.unique(np.load(folder / "sizes_train_particles3d.npy"))) > 1
    # score(): padded pairs are ignored whatever the inferred structures hold there
    inferred_dir = tmp_path / "run"
    inferred_dir.mkdir()

    def evaluate_run(workdir, data_dir, split, num_plots, overrides=None):
        truth = graph.matrix_to_edges(np.load(folder / f"truth_{split}_particles3d.npy"))
        structures = np.where(truth < 0, 1, 1 - truth)  # modules swapped; padding junk
        path = str(inferred_dir / f"inferred_{split}.npz")
        np.savez(path, structures=structures.astype(np.int32))
        return {"inferred": path, "mse_1": 0.5}

    import nri_modular

    fake = types.ModuleType("nri_modular.evaluate_saved")  # no trained run needed
    fake.evaluate_run = evaluate_run
    monkeypatch.setitem(sys.modules, "nri_modular.evaluate_saved", fake)
    monkeypatch.setitem(vars(nri_modular), "evaluate_saved", fake)  # not the lazy import
    scores = particles3d.score(str(inferred_dir), str(folder))
    assert scores["module_to_relation (chosen on valid)"] == [1, 0]
    assert scores["test_edge_accuracy_against_rules"] == 1.0 and scores["test_systems"] == 6


def test_ragged_springs_example(tmp_path):
    ragged_springs = _example("ragged_springs")
    folder = str(tmp_path / "springs")
    num = {"train": 5, "valid": 3, "test": 3}
    written = ragged_springs.write(folder, num, seed=2, min_particles=3, max_particles=4)
    assert len(written) == 12
    data = own.load(folder, "ragged_springs", no_relation=0)
    assert data.num_particles == 4 and data.state_dim == 4
    assert data.train.num_frames == 49 and data.test.num_frames == 99
    for split, sims in num.items():
        sizes = np.load(os.path.join(folder, f"sizes_{split}_ragged_springs.npy"))
        assert sizes.dtype == np.int32 and len(sizes) == sims
        assert sizes.min() >= 3 and sizes.max() <= 4
        np.testing.assert_array_equal(data[split].sizes, sizes)
        edges = np.load(os.path.join(folder, f"edges_{split}_ragged_springs.npy"))
        np.testing.assert_array_equal(edges, np.swapaxes(edges, 1, 2))  # springs: symmetric
        assert set(np.unique(edges)) <= {0, 1}
        pad = ~graph.node_mask(sizes, 4)
        np.testing.assert_array_equal(edges[pad[:, :, None] | pad[:, None, :]], 0)
        np.testing.assert_array_equal(data[split].labels[~graph.edge_mask(sizes, 4)], -1)
        loc = np.load(os.path.join(folder, f"loc_{split}_ragged_springs.npy"))
        assert np.all(np.swapaxes(loc, 1, 3)[pad] == 0.0)
        assert np.all(np.abs(np.swapaxes(loc, 1, 3)[~pad]).max(axis=(-1, -2)) > 0)
    # a size group is the simulator's own output for that size, from the split's stream
    rng = np.random.default_rng([2, 0])
    sizes = rng.integers(3, 5, size=5)
    first = int(np.unique(sizes)[0])
    idx = np.flatnonzero(sizes == first)
    from nri_modular.data import physics

    loc, _, _ = physics.simulate("springs", rng, len(idx), first, 5000, 100)
    on_disk = np.load(os.path.join(folder, "loc_train_ragged_springs.npy"))
    np.testing.assert_array_equal(on_disk[idx][..., :first], loc)
    with pytest.raises(ValueError, match="holds files we did not write"):
        ragged_springs.write(folder, num, seed=2, min_particles=3, max_particles=4)
    with pytest.raises(ValueError, match="2 <= min_particles <= max_particles"):
        ragged_springs.write(str(tmp_path / "other"), num, seed=2, min_particles=5, max_particles=4)
