"""The one way to save and load a model, atomic JSON, and the workdir guard (no training)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import checkpoints
from nri_modular.config import Config


def _params():
    return {"edge": {"w": jnp.arange(6.0).reshape(2, 3)}, "node": [np.ones(4, np.float32)]}


def test_save_then_load_model_round_trips_params_and_meta(tmp_path):
    path = str(tmp_path / "models" / "m")  # the parent is created
    checkpoints.save_model(path, _params(), {"edge_hidden": [64, 64], "steps": 3})
    assert sorted(os.listdir(tmp_path / "models")) == ["m"]  # no temporary folder left
    for target in (None, _params()):
        params, meta = checkpoints.load_model(path, target=target)
        assert meta == {"edge_hidden": [64, 64], "steps": 3}
        jax.tree.map(np.testing.assert_array_equal, params, _params())


def test_save_model_never_overwrites_silently(tmp_path):
    path = str(tmp_path / "m")
    checkpoints.save_model(path, _params(), {"version": 1})
    with pytest.raises(FileExistsError, match=f"{path} exists"):
        checkpoints.save_model(path, {"w": jnp.zeros(1)}, {"version": 2})
    assert checkpoints.load_model(path)[1] == {"version": 1}
    checkpoints.save_model(path, {"w": jnp.zeros(1)}, {"version": 2}, overwrite=True)
    params, meta = checkpoints.load_model(path)
    assert meta == {"version": 2} and list(params) == ["w"]
    assert os.listdir(tmp_path) == ["m"]


def test_save_model_rejects_meta_that_is_not_json(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        checkpoints.save_model(str(tmp_path / "m"), _params(), {"array": np.zeros(2)})
    assert not os.path.exists(tmp_path / "m")


def test_load_model_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"no saved model at {missing}"):
        checkpoints.load_model(missing)
    with pytest.raises(ValueError, match=f"{tmp_path} is not a saved model"):
        checkpoints.load_model(str(tmp_path))
    path = str(tmp_path / "m")
    checkpoints.save_model(path, _params(), {})
    with pytest.raises(ValueError, match="cannot restore the parameters in .*m/params"):
        checkpoints.load_model(path, target={"other": jnp.zeros(3)})
    with open(os.path.join(path, "model.json"), "w", encoding="utf-8") as f:
        f.write("{truncated")
    with pytest.raises(ValueError, match=r"m/model.json is unreadable"):
        checkpoints.load_model(path)


def test_write_json_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = str(tmp_path / "results.json")
    checkpoints.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        checkpoints.write_json_atomic(path, {"a": object()})
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_prepare_workdir_refuses_a_run_of_other_shapes(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoints.prepare_workdir(workdir, Config(num_particles=4))
    # No checkpoint yet (a run that failed before its first): any config starts afresh.
    checkpoints.prepare_workdir(workdir, Config(num_particles=5))
    os.makedirs(os.path.join(workdir, "checkpoints", "8"))  # now a checkpoint exists
    checkpoints.prepare_workdir(workdir, Config(num_particles=5, num_epochs=7))  # not a shape
    with pytest.raises(ValueError, match=r"num_particles \(checkpoint 5, now 4\)"):
        checkpoints.prepare_workdir(workdir, Config(num_particles=4))
    with pytest.raises(ValueError, match="workdir must be given"):
        checkpoints.prepare_workdir("", Config())
