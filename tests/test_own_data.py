"""One's own data (nri_modular/data/own.py): any dimension, optional labels, clear errors,
trained and inferred without labels, and the worked example (examples/particles3d.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, flagfile_config, own_config

from nri_modular import graph
from nri_modular.data import datasets, own

SIMS = {"train": 12, "valid": 4, "test": 4}
FRAMES = {"train": 8, "valid": 8, "test": 14}


def _write_loc(folder, name="mine", n=4, dim=3, vel=True, edges=None, seed=0):
    """Random-walk positions [sims, frames, dim, n] (and velocities, edges) per split."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for split, sims in SIMS.items():
        loc = np.cumsum(rng.normal(size=(sims, FRAMES[split], dim, n)), axis=1)
        np.save(os.path.join(folder, f"loc_{split}_{name}.npy"), loc.astype(np.float32))
        if vel:
            np.save(os.path.join(folder, f"vel_{split}_{name}.npy"), np.gradient(loc, axis=1))
        if edges is not None and split in edges:
            codes = rng.integers(0, edges[split], size=(sims, n, n))
            np.save(os.path.join(folder, f"edges_{split}_{name}.npy"), codes)
    return str(folder)


def test_positions_only_3d_unlabelled(tmp_path):
    folder = _write_loc(tmp_path, vel=False)
    data = own.load(folder, "mine")
    assert data.system == "" and data.name == "mine" and data.relations is None
    assert data.train.states.shape == (12, 8, 4, 6) and data.train.labels is None
    # velocities are finite differences of positions; positions share one range (isotropic)
    loc = np.load(os.path.join(folder, "loc_test_mine.npy")).astype(np.float64)
    physical = data.normalization.denormalise(data.test.states.astype(np.float64))
    np.testing.assert_allclose(physical[..., :3], np.swapaxes(loc, 2, 3), atol=1e-4)
    np.testing.assert_allclose(
        physical[..., 3:], np.swapaxes(np.gradient(loc, axis=1), 2, 3), atol=1e-4
    )
    norm = data.normalization
    assert len(set(norm.minimum[:3])) == 1 and len(set(norm.maximum[3:])) == 1
    assert data.train.states[..., :3].min() == -1.0 and data.train.states[..., :3].max() == 1.0


def test_features_with_three_relation_types(tmp_path):
    rng = np.random.default_rng(1)
    n = 3
    for split, sims in SIMS.items():
        feat = rng.normal(size=(sims, n, FRAMES[split], 5)) * np.arange(1, 6)
        feat[..., 4] = 7.0  # a constant feature normalises to 0, not to a division by 0
        np.save(tmp_path / f"feat_{split}_osc.npy", feat)
        np.save(tmp_path / f"edges_{split}_osc.npy", rng.integers(0, 3, (sims, n, n)))
    data = own.load(str(tmp_path), "osc", num_sims={"train": 10}, no_relation=0)
    assert data.train.states.shape == (10, 8, 3, 5) and data.state_dim == 5
    assert data.relations == datasets.Relations(3, 0)
    np.testing.assert_array_equal(data.train.states[..., 4], 0.0)
    for c in range(4):  # each feature its own range
        assert data.train.states[..., c].min() == -1.0 and data.train.states[..., c].max() == 1.0
    edges = np.load(tmp_path / "edges_test_osc.npy")
    receivers, senders = graph.edge_index(n)
    np.testing.assert_array_equal(data.test.labels, edges[:, receivers, senders])  # j -> i


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: os.rename(d / "loc_train_mine.npy", d / "loc_train_other.npy"),
            r"no loc_train_mine.npy or feat_train_mine.npy .* holds: mine \(test: loc\+vel, "
            r"train: vel, valid: loc\+vel\); other \(train: loc\)",
        ),
        (
            lambda d: np.save(d / "vel_valid_mine.npy", np.zeros((4, 8, 3, 5))),
            r"vel_valid_mine.npy: shape \(4, 8, 3, 5\) differs",
        ),
        (
            lambda d: np.save(d / "edges_test_mine.npy", np.zeros((4, 3, 3))),
            r"edges_test_mine.npy: expected \[sims, n, n\] = \(4, 4, 4\)",
        ),
        (
            lambda d: np.save(d / "edges_train_mine.npy", np.full((12, 4, 4), -1)),
            "non-negative integers off the diagonal, found \\[-1\\]",
        ),
        (
            lambda d: np.save(d / "edges_train_mine.npy", np.full((12, 4, 4), 0.5)),
            "non-negative integers",
        ),
        (
            lambda d: np.save(d / "loc_test_mine.npy", np.full((4, 14, 3, 4), np.nan)),
            "loc_test_mine.npy: 672 non-finite values",
        ),
        (
            lambda d: np.save(d / "feat_train_mine.npy", np.zeros((12, 4, 8, 2))),
            "holds both loc_train_mine.npy and feat_train_mine.npy",
        ),
        (
            lambda d: (
                np.save(d / "loc_valid_mine.npy", np.zeros((4, 8, 3, 5))),
                os.remove(d / "vel_valid_mine.npy"),
            ),
            "split valid has num_particles=5 but train has 4",
        ),
        (
            lambda d: np.save(d / "loc_valid_mine.npy", np.zeros((4, 8, 12))),
            r"expected 4 axes \(\[sims, frames, D, n\]\)",
        ),
    ],
)
def test_bad_files_name_the_problem(tmp_path, mutate, message):
    _write_loc(tmp_path)
    mutate(tmp_path)
    with pytest.raises(own.DataError, match=message):
        own.load(str(tmp_path), "mine")


def test_bad_requests_name_the_problem(tmp_path):
    folder = _write_loc(tmp_path, edges={"train": 2})
    with pytest.raises(own.DataError, match="data_dir .*nowhere' does not exist"):
        own.load(str(tmp_path / "nowhere"), "mine")
    with pytest.raises(own.DataError, match="dataset name 'my data' must be"):
        own.load(folder, "my data")
    with pytest.raises(own.DataError, match="num_train=13 but loc_train_mine.npy holds 12"):
        own.load(folder, "mine", num_sims={"train": 13})
    with pytest.raises(own.DataError, match=r"no-relation code 2 is not in \[0, 2\)"):
        own.load(folder, "mine", no_relation=2)
    with pytest.raises(own.DataError, match="relation code 1 but the run was trained with 1"):
        own.load(folder, "mine", num_relation_types=1)
    with pytest.raises(ValueError, match="exclude each other"):
        flagfile_config(dataset="mine", data_dir=folder)  # test.flags says --system=springs
    with pytest.raises(ValueError, match="simulated systems have 4 state channels"):
        flagfile_config(state_dim=6)


def test_simulated_system_never_writes_into_a_folder_of_own_data(tmp_path):
    from nri_modular import loading

    folder = _write_loc(tmp_path)
    before = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match="experiments/train.py --data_dir=.* --dataset=NAME"):
        loading.load_data(flagfile_config(data_dir=folder))
    assert sorted(os.listdir(folder)) == before


def test_train_and_infer_unlabelled_then_labelled(tmp_path):
    from nri_modular import checkpoints, evaluate_saved, train

    folder = _write_loc(tmp_path / "data", vel=False, edges={"test": 2})
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(own_config(folder), workdir)
    # trained without labels: no map, so no accuracy even where test has labels
    assert results["edge_accuracy"] is None and results["train_edge_accuracy"] is None
    assert results["dataset"] == "mine" and results["system"] == ""
    assert np.isfinite(results["mse_1"]) and sum(results["module_usage"]) == pytest.approx(1.0)
    meta = checkpoints.read_run_meta(workdir)
    assert len(meta["normalization"]["minimum"]) == 6  # 3 positions + 3 velocities
    assert all(entry["map"] is None for entry in meta["module_to_relation"].values())
    evaluated = evaluate_saved.evaluate_run(workdir, folder, split="test", num_plots=2)
    saved = np.load(evaluated["inferred"])
    assert os.path.basename(evaluated["inferred"]).startswith("inferred_test_")
    assert saved["structures"].shape == (4, 12) and "module_to_relation" not in saved
    np.testing.assert_array_equal(saved["labels"], own.load(folder, "mine").test.labels)
    assert "figure" not in evaluated  # no map: nothing to draw against
    # labelled training data: a map, accuracy, and the same files
    labelled = _write_loc(tmp_path / "labelled", edges={"train": 2, "valid": 2, "test": 2})
    results = train.train_and_evaluate(own_config(labelled), str(tmp_path / "run2"))
    assert 0.0 <= results["edge_accuracy"] <= 1.0 and results["module_to_relation"] is not None
    assert checkpoints.read_run_meta(str(tmp_path / "run2"))["relations"] == {
        "num_types": 2,
        "none": None,
    }


def test_cli_one_line_errors(tmp_path, subprocess_env):
    folder = _write_loc(tmp_path)
    script = os.path.join(REPO, "experiments", "train.py")
    cases = [
        ([], "which data? --dataset=NAME"),
        ([f"--data_dir={folder}", "--dataset=typo"], "has no loc_train_typo.npy"),
        (
            [f"--data_dir={folder}", "--dataset=mine", "--num_particles=7"],
            "--num_particles=7 but dataset 'mine' has 4 objects",
        ),
    ]
    for extra, message in cases:
        proc = subprocess.run(
            [sys.executable, script, *extra, f"--workdir={tmp_path / 'w'}"],
            env=subprocess_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()
        assert message in last[-2] and last[-2].startswith("error: "), last[-3:]
        assert "Traceback" not in proc.stderr


def test_worked_example_rules_and_score(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "examples"))
    try:
        import particles3d
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    k = particles3d.couplings(rng, 64, 5)
    assert np.all(k[:, np.arange(5), np.arange(5)] == 0)
    assert 0.4 < k.sum() / (64 * 20) < 0.6 and np.any(k != np.swapaxes(k, 1, 2))  # directed
    # the rule: only the particles i follows pull it
    x, v = rng.normal(size=(1, 5, 3)), np.zeros((1, 5, 3))
    one = np.zeros((1, 5, 5))
    one[0, 2, 4] = 1
    a = particles3d.acceleration(x, v, one)
    np.testing.assert_allclose(a[0, 2], particles3d.STIFFNESS * (x[0, 4] - x[0, 2]))
    assert np.all(a[0, [0, 1, 3, 4]] == 0)
    folder = tmp_path / "p3d"
    particles3d.write(str(folder), {"train": 6, "valid": 2, "test": 2}, 5, seed=0)
    assert not any(name.startswith("edges_") for name in os.listdir(folder))
    data = own.load(str(folder), particles3d.NAME)
    assert data.relations is None and data.test.states.shape == (2, 99, 5, 6)
    with pytest.raises(ValueError, match="is not empty"):
        particles3d.write(str(folder), {"train": 6, "valid": 2, "test": 2}, 5, seed=0)


def test_choose_k_picks_on_valid_and_prints_the_curve(tmp_path, subprocess_env):
    import json

    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import choose_k
    finally:
        sys.path.pop(0)
    rows = [{"K": 1, "valid_loss": 2.0}, {"K": 2, "valid_loss": 1.0}, {"K": 3, "valid_loss": 0.97}]
    assert choose_k.pick(rows, 0.05) == 2 and choose_k.pick(rows, 0.0) == 3
    folder = _write_loc(tmp_path / "data")
    args = [
        sys.executable,
        os.path.join(REPO, "experiments", "choose_k.py"),
        f"--flagfile={os.path.join(REPO, 'experiments', 'flags', 'test.flags')}",
        "--system=",
        f"--data_dir={folder}",
        "--dataset=mine",
        "--ks=1,2",
        "--num_train=12",
        "--num_valid=4",
        "--num_test=4",
        "--valid_horizon=3",
        "--p=3",
        "--batch_size=6",
        f"--workdir={tmp_path / 'k'}",
    ]
    proc = subprocess.run(
        args, env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "k" / "choose_k.json").read_text())
    assert [row["K"] for row in summary["curve"]] == [1, 2]
    assert summary["valid_obs_frames"] == FRAMES["valid"] - 4 and summary["valid_horizon"] == 3
    assert summary["chosen_K"] == choose_k.pick(summary["curve"], summary["tolerance"])
    assert summary["curve"][0]["module_usage"] == [1.0]  # K = 1: every edge one module
    assert "chosen K = " in proc.stdout and "| 1" in proc.stdout
    assert not os.path.exists(tmp_path / "k" / "K1" / "results.json")  # test split untouched
