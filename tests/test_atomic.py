"""nri_modular.atomic: the one home of atomic writes (JSON results, dataset files)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nri_modular import atomic, checkpoints


def test_every_writer_keeps_the_old_file_and_no_temporary_when_the_write_fails(tmp_path):
    npy, text, js = (str(tmp_path / name) for name in ("a.npy", "meta.json", "r.json"))
    atomic.save_npy_atomic(npy, np.arange(3))
    atomic.write_text_atomic(text, "old")
    atomic.write_json_atomic(js, {"a": 1})
    with pytest.raises(ValueError, match="pickle"):
        atomic.save_npy_atomic(npy, np.array([object()]))
    with pytest.raises(TypeError):
        atomic.write_text_atomic(text, None)
    with pytest.raises(TypeError):
        atomic.write_json_atomic(js, {"a": object()})
    np.testing.assert_array_equal(np.load(npy), np.arange(3))
    with open(text, encoding="utf-8") as f:
        assert f.read() == "old"
    with open(js, encoding="utf-8") as f:
        assert json.load(f) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "meta.json", "r.json"]


def test_one_home_and_the_data_package_stays_free_of_orbax():
    assert checkpoints.write_json_atomic is atomic.write_json_atomic
    code = "import sys, nri_modular.data\nprint(any(m.startswith('orbax') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
