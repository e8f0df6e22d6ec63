"""Kuramoto oscillators as a dataset and a run: NRI's layout read and written by the data
layer (directed couplings, identity normalisation), an end-to-end run, and the ten-object
flagfiles' search cost."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, flagfile_config

from nri_modular import graph, structure
from nri_modular.data import datasets, files, kuramoto

FLAGS_DIR = os.path.join(REPO, "experiments", "flags")


@pytest.fixture(scope="module")
def kuramoto_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("kuramoto") / "data")
    datasets.ensure_dataset(data_dir, "kuramoto", 40, 4, 8, seed=3, num_particles=4)
    return data_dir


def test_dataset_is_nri_layout_with_directed_labels(kuramoto_dir):
    assert sorted(os.listdir(kuramoto_dir)) == sorted(
        [*datasets.dataset_file_names("kuramoto", 4), "meta_kuramoto4.json"]
    )
    data = datasets.load_dataset(kuramoto_dir, "kuramoto", 4)
    assert data.normalization == datasets.IDENTITY
    for split, frames in kuramoto.SPLIT_FRAMES.items():
        feat = np.load(os.path.join(kuramoto_dir, f"feat_{split}_kuramoto4.npy"))
        edges = np.load(os.path.join(kuramoto_dir, f"edges_{split}_kuramoto4.npy"))
        assert feat.shape[1:] == (4, frames, 4) and edges.shape[1:] == (4, 4)
        # States are the features, oscillators moved beside frames, unchanged in value.
        np.testing.assert_array_equal(data[split].states, np.swapaxes(feat, 1, 2))
        # Label of edge j -> i is k_ij = edges[s, i, j] (j drives i), not its transpose.
        receivers, senders = graph.edge_index(4)
        np.testing.assert_array_equal(data[split].labels, edges[:, receivers, senders])
    train = np.load(os.path.join(kuramoto_dir, "edges_train_kuramoto4.npy"))
    assert np.any(train != np.swapaxes(train, 1, 2))  # directed: not read as symmetric


def test_our_kuramoto_folder_is_reused_and_never_regenerated_unasked(kuramoto_dir):
    again = datasets.ensure_dataset(kuramoto_dir, "kuramoto", 40, 4, 8, seed=3, num_particles=4)
    first = datasets.load_dataset(kuramoto_dir, "kuramoto", 4)
    np.testing.assert_array_equal(again.test.states, first.test.states)
    with pytest.raises(ValueError, match=r"made with other seed \(3, asked 4\)"):
        datasets.ensure_dataset(kuramoto_dir, "kuramoto", 40, 4, 8, seed=4, num_particles=4)


def test_nri_kuramoto_files_of_someone_else_load_and_are_never_written(kuramoto_dir, tmp_path):
    theirs = tmp_path / "theirs"
    shutil.copytree(kuramoto_dir, theirs)
    os.remove(theirs / "meta_kuramoto4.json")  # files NRI's code (or a user) wrote
    data = datasets.ensure_dataset(str(theirs), "kuramoto", 40, 4, 8, seed=3, num_particles=4)
    assert data.test.states.shape == (8, 99, 4, 4)
    assert files.folder_datasets(str(theirs))[("kuramoto", 4)]["ours"] is False
    with pytest.raises(ValueError, match="we did not write"):
        datasets.ensure_dataset(str(theirs), "springs", 40, 4, 8, seed=3, num_particles=4)
    with pytest.raises(FileNotFoundError, match="feat_train_kuramoto5.npy"):
        datasets.load_dataset(str(theirs), "kuramoto", 5)


def test_bad_kuramoto_files_are_named(kuramoto_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(kuramoto_dir, bad)
    edges = np.load(bad / "edges_valid_kuramoto4.npy")
    edges[0, 1, 2] = 2
    np.save(bad / "edges_valid_kuramoto4.npy", edges)
    with pytest.raises(ValueError, match=r"edges_valid_kuramoto4.npy: kuramoto relations"):
        datasets.load_dataset(str(bad), "kuramoto", 4)
    feat = np.load(bad / "feat_test_kuramoto4.npy")
    np.save(bad / "feat_test_kuramoto4.npy", np.swapaxes(feat, 1, 2))  # [sims, frames, n, 4]
    with pytest.raises(ValueError, match="feat_test_kuramoto4.npy: has 99 oscillators"):
        datasets.load_dataset(
            str(bad), "kuramoto", 4, splits=("test",), normalization=datasets.IDENTITY
        )


def test_kuramoto_run_end_to_end(kuramoto_dir, tmp_path):
    from nri_modular import train

    config = flagfile_config(system="kuramoto", data_dir=kuramoto_dir, data_seed=3)
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["system"] == "kuramoto" and results["num_test_tasks"] == 8
    correct = results["edge_accuracy"] * 8 * 12  # a whole count of the 96 test edges
    assert correct == pytest.approx(round(correct))
    assert np.isfinite(results["mse_1"])
    with open(tmp_path / "run" / "run.json", encoding="utf-8") as f:
        run = json.load(f)
    assert run["config"]["system"] == "kuramoto"


@pytest.mark.parametrize("system", ["springs", "charged", "kuramoto"])
def test_ten_object_flagfiles_search_cost(system):
    """Exact local moves at n = 10 score K^(n-1) = 512 settings of each node's 9 incoming
    edges: 10 * 512 one-step penalties per task and sweep, as the flagfiles' comments say."""
    config = flagfile_config(os.path.join(FLAGS_DIR, f"{system}10_cpu.flags"))
    assert config.num_particles == 10 and config.system == system
    configs = structure.incoming_configs(config.num_particles, config.num_modules)
    assert configs.shape == (512, 9)
    assert len({tuple(c) for c in np.asarray(configs)}) == 512  # every setting, once
    assert config.test_proposal == "exact_local"
