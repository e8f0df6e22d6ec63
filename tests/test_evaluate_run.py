"""``evaluate_run`` / ``experiments/evaluate.py``: a finished run scored on any data with
its own constants; on its own test split it reproduces ``results.json``."""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from nri_modular import evaluate, evaluate_saved, structure_priors
from nri_modular.data import datasets

SAME_AS_RESULTS = (
    "edge_accuracy",
    "train_edge_accuracy",
    "mse_1",
    "mse_per_step",
    "module_to_relation",
    "num_test_tasks",
)


def _results(workdir):
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def own_test_split(trained_workdir, tiny_data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval") / "own.json")
    return evaluate_saved.evaluate_run(trained_workdir, tiny_data_dir, out=out, num_plots=2)


def test_own_test_split_reproduces_results_json(trained_workdir, own_test_split):
    expected = _results(trained_workdir)
    assert {k: own_test_split[k] for k in SAME_AS_RESULTS} == {
        k: expected[k] for k in SAME_AS_RESULTS
    }
    with open(own_test_split["out"], encoding="utf-8") as f:
        written = json.load(f)
    assert written["edge_accuracy"] == expected["edge_accuracy"]
    # ... and it is the saved structures' accuracy under the saved map.
    saved = np.load(own_test_split["inferred"])
    assert saved["structures"].shape == saved["labels"].shape == (8, 12)
    assert list(saved["module_to_relation"]) == expected["module_to_relation"]
    assert np.mean(saved["relations"] == saved["labels"]) == pytest.approx(
        expected["edge_accuracy"]
    )
    # Physical units: the normalised errors scaled by the run's ranges.
    assert np.all(np.asarray(written["mse_per_step_physical"]) > 0)
    assert os.path.getsize(own_test_split["figure"]) > 10_000


def test_kipf_folder_with_only_the_test_split_and_no_training_data(
    trained_workdir, tiny_data_dir, tmp_path, own_test_split
):
    """A Kipf-layout folder holding only the evaluated split, no meta file, and the run's
    training data gone: same numbers, so the normalisation is the run's, not recomputed
    (this folder has no training split to recompute it from)."""
    kipf = tmp_path / "kipf"
    kipf.mkdir()
    for kind in ("loc", "vel", "edges"):
        name = datasets.file_name(kind, "test", "springs", 4)
        shutil.copy(os.path.join(tiny_data_dir, name), kipf / name)
    run = str(tmp_path / "run")
    shutil.copytree(trained_workdir, run)
    with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
        meta = json.load(f)
    meta["config"]["data_dir"] = str(tmp_path / "training_data_is_gone")
    with open(os.path.join(run, "run.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    results = evaluate_saved.evaluate_run(run, str(kipf), num_plots=0)
    for key in SAME_AS_RESULTS:
        assert results[key] == own_test_split[key], key
    assert results["mse_per_step_physical"] == own_test_split["mse_per_step_physical"]
    assert sorted(os.listdir(kipf)) == sorted(
        datasets.file_name(k, "test", "springs", 4) for k in ("loc", "vel", "edges")
    )


def test_evaluation_errors_name_the_problem(trained_workdir, tiny_data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"has no checkpoint at step 5; it has \[4, 8\]"):
        evaluate_saved.evaluate_run(trained_workdir, tiny_data_dir, step=5)
    with pytest.raises(ValueError, match="cannot override \\['num_train'\\] at evaluation"):
        evaluate_saved.evaluate_run(trained_workdir, tiny_data_dir, overrides={"num_train": 3})
    with pytest.raises(ValueError, match="needs the learned proposal network"):
        evaluate_saved.evaluate_run(
            trained_workdir, tiny_data_dir, overrides={"test_proposal": "blocked_gibbs"}
        )
    with pytest.raises(
        ValueError,
        match=r"valid trajectories in .* have 49 frames; obs_frames=49 and horizon=\d+ need \d+ "
        r"\(--horizon=0 scores edge accuracy only",
    ):
        evaluate_saved.evaluate_run(trained_workdir, tiny_data_dir, split="valid")
    with pytest.raises(FileNotFoundError, match="holds no run"):
        evaluate_saved.evaluate_run(str(tmp_path), tiny_data_dir)


def test_cli_valid_split_with_overrides(trained_workdir, tiny_data_dir, tmp_path, subprocess_env):
    out = str(tmp_path / "valid.json")
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "evaluate.py"),
        f"--workdir={trained_workdir}",
        f"--data_dir={tiny_data_dir}",
        "--split=valid",
        "--obs_frames=30",
        "--horizon=10",
        "--num_tasks=2",
        "--num_plots=0",
        f"--out={out}",
    ]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| edge accuracy (run's module -> relation map) |" in proc.stdout
    with open(out, encoding="utf-8") as f:
        results = json.load(f)
    assert results["split"] == "valid" and results["num_test_tasks"] == 2
    assert len(results["mse_per_step"]) == 10 and results["mse_10"] is not None
    # horizon 0 scores the structures only: the same search, so the same edge accuracy,
    # and it fits the 49-frame valid split at the run's own obs_frames (49).
    same_search = evaluate_saved.evaluate_run(
        trained_workdir,
        tiny_data_dir,
        split="valid",
        num_tasks=2,
        overrides={"obs_frames": 30, "horizon": 0},
        out=str(tmp_path / "valid_h0.json"),
        num_plots=0,
    )
    assert same_search["edge_accuracy"] == results["edge_accuracy"]
    assert same_search["mse_1"] is None and same_search["mse_per_step"] == []
    own_frames = evaluate_saved.evaluate_run(
        trained_workdir,
        tiny_data_dir,
        split="valid",
        num_tasks=2,
        overrides={"horizon": 0},
        out=str(tmp_path / "valid_own.json"),
        num_plots=2,
    )
    assert own_frames["mse_1_physical"] is None and "figure" not in own_frames
    # The reported accuracy is the saved structures' under the saved map, recomputed here.
    saved = np.load(own_frames["inferred"])
    assert saved["structures"].shape == saved["labels"].shape == (2, 12)
    np.testing.assert_array_equal(
        saved["relations"], saved["module_to_relation"][saved["structures"]]
    )
    assert own_frames["edge_accuracy"] == pytest.approx(
        np.mean(saved["relations"] == saved["labels"])
    )


def test_one_rollout_gives_normalised_and_physical_mse(
    trained_workdir, tiny_data_dir, tmp_path, monkeypatch
):
    """evaluate_run rolls each batch out once; its two MSEs equal those of the two-rollout
    computation (prediction_mse in normalised units, and a rollout by hand whose errors
    are scaled to physical units)."""
    import jax

    from nri_modular import checkpoints, gnn, metrics
    from nri_modular.data import batching

    seen, rollouts = {}, []
    real_meta_test, real_rollout = evaluate.meta_test, evaluate._rollout_sq_error

    def meta_test(config, bank, state, train_labels, test, *args, **kwargs):
        results = real_meta_test(config, bank, state, train_labels, test, *args, **kwargs)
        seen.update(config=config, bank=bank, params=state.params, test=test)
        seen["structures"] = np.array(results["structures"])
        return results

    def rollout(*args):
        rollouts.append(args[2].shape)
        return real_rollout(*args)

    monkeypatch.setattr(evaluate, "meta_test", meta_test)
    monkeypatch.setattr(evaluate, "_rollout_sq_error", rollout)
    results = evaluate_saved.evaluate_run(
        trained_workdir, tiny_data_dir, out=str(tmp_path / "r.json"), num_plots=0
    )
    config, states = seen["config"], seen["test"].states
    assert len(rollouts) == len(
        list(batching.padded_batches(states.shape[0], config.test_batch_size))
    )
    obs, horizon = config.obs_frames, config.horizon
    normalised, physical_none = evaluate.prediction_mse(
        seen["bank"],
        seen["params"],
        states,
        seen["structures"],
        start_frame=obs,
        horizon=horizon,
        batch_size=config.test_batch_size,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        groups=config.task_shards,
    )
    assert physical_none is None  # no dim_scale asked: no physical units
    assert results["mse_per_step"] == [float(v) for v in normalised]
    meta = checkpoints.read_run_meta(trained_workdir)
    scale = evaluate.physical_scale(datasets.Normalization.from_dict(meta["normalization"]))
    preds = jax.jit(gnn.rollout, static_argnums=(0, 4))(
        seen["bank"], seen["params"], states[:, obs], seen["structures"], horizon
    )
    truth = states[:, obs + 1 : obs + 1 + horizon]
    physical = metrics.mse_per_step(np.asarray(preds, np.float64) * scale, truth * scale)
    np.testing.assert_allclose(results["mse_per_step_physical"], physical, rtol=1e-4)
    assert results["mse_1_physical"] == results["mse_per_step_physical"][0]
    assert not np.allclose(physical, normalised, rtol=0.1)  # the scale is not 1


def test_structure_priors_at_meta_test(trained_workdir, tiny_data_dir, tmp_path, monkeypatch):
    """--symmetric_structure / --node_types change only the search: every searched structure
    satisfies the prior; node types need the run's module 1 to stand for relation 1."""
    searched = []
    meta_test = evaluate.meta_test

    def keep(*args, **kwargs):
        results = meta_test(*args, **kwargs)
        searched.append(np.array(results["structures"]))
        return results

    monkeypatch.setattr(evaluate, "meta_test", keep)
    run = str(tmp_path / "run")
    shutil.copytree(trained_workdir, run)
    n = 4
    common = dict(split="valid", num_tasks=4, num_plots=0)
    h0 = {"horizon": 0}
    evaluate_saved.evaluate_run(
        run, tiny_data_dir, overrides={**h0, "symmetric_structure": True}, **common
    )
    assert bool(np.all(structure_priors.is_symmetric(jnp.asarray(searched[-1]), n)))
    meta_path = os.path.join(run, "run.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    for mapping in ([0, 1], [1, 0]):
        for entry in meta["module_to_relation"].values():
            entry["map"] = mapping
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f)
        if mapping == [1, 0]:
            with pytest.raises(ValueError, match="module 1 stands for relation 0"):
                evaluate_saved.evaluate_run(
                    run, tiny_data_dir, overrides={**h0, "node_types": 2}, **common
                )
            # A run trained with node types is searched with them whatever its map says.
            trained_with_types = str(tmp_path / "typed_run")
            shutil.copytree(run, trained_with_types)
            typed_meta = json.loads(json.dumps(meta))
            typed_meta["config"]["node_types"] = 2
            with open(os.path.join(trained_with_types, "run.json"), "w", encoding="utf-8") as f:
                json.dump(typed_meta, f)
            evaluate_saved.evaluate_run(trained_with_types, tiny_data_dir, overrides=h0, **common)
            assert bool(np.all(structure_priors.is_type_structure(jnp.asarray(searched[-1]), n, 2)))
            continue
        results = evaluate_saved.evaluate_run(
            run, tiny_data_dir, overrides={**h0, "node_types": 2}, **common
        )
        assert results["overrides"]["node_types"] == 2
        is_types = structure_priors.is_type_structure(jnp.asarray(searched[-1]), n, 2)
        assert bool(np.all(is_types))
    assert len(searched) == 3
