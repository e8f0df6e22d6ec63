"""The committed pretrained models (pretrained/<name>/): every file as exported (sizes and
SHA-256 of MANIFEST.json, nothing missing or added), small, restorable, and still the trained
model its results.json describes: searched on a fresh test set it finds the relations."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import REPO

ROOT = os.path.join(REPO, "pretrained")
MODELS = sorted(d for d in os.listdir(ROOT) if not d.startswith(".")) if os.path.isdir(ROOT) else []

_spec = importlib.util.spec_from_file_location(
    "export_pretrained", os.path.join(REPO, "experiments", "export_pretrained.py")
)
export_pretrained = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_pretrained)


def test_the_pretrained_models_are_committed():
    assert {"charged_cpu", "springs_cpu"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_files_match_their_manifest(name):
    folder = os.path.join(ROOT, name)
    with open(os.path.join(folder, export_pretrained.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    found = {
        path: entry
        for path, entry in export_pretrained.file_digests(folder).items()
        if not path.startswith("eval" + os.sep)  # evaluations written beside it
    }
    assert found == manifest["files"]
    assert manifest["bytes"] == sum(e["bytes"] for e in found.values()) <= 2_000_000
    assert os.listdir(os.path.join(folder, "checkpoints")) == [str(manifest["step"])]


@pytest.mark.parametrize("name", MODELS)
def test_model_searches_a_fresh_test_set(name, tmp_path):
    """Restored and searched (cheaply: 40 tasks, 30 annealing steps from the exact start) on
    a test set of the run's system generated with another seed, it finds the relations far
    above chance (the full search reaches the record's accuracy: README command)."""
    from nri_modular import evaluate_saved
    from nri_modular.data import datasets

    folder = os.path.join(ROOT, name)
    config, _ = evaluate_saved.run_config(folder)
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    data_dir = str(tmp_path / "data")
    datasets.generate_dataset(config.system, data_dir, 8, 8, 40, seed=7, num_particles=5)
    results = evaluate_saved.evaluate_run(
        folder,
        data_dir,
        overrides={"test_sa_steps": 30, "horizon": 0},
        out=str(tmp_path / "eval.json"),
        num_plots=0,
    )
    assert results["num_test_tasks"] == 40
    assert results["edge_accuracy"] > 0.8 and recorded["edge_accuracy"] > 0.85
    saved = np.load(results["inferred"])
    assert np.mean(saved["relations"] == saved["labels"]) == pytest.approx(results["edge_accuracy"])


def test_export_refuses_an_existing_model(tmp_path):
    dest = tmp_path / "m"
    dest.mkdir()
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_pretrained.export(str(tmp_path), str(dest), 2_000_000)
