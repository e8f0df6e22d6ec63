"""Data we did not write is never written into, and a folder of other data is named.

A Kipf-layout folder without our ``meta_{system}{n}.json`` (Kipf's released files, the
reference generator's output, a copy of some splits) is read at most, never written; a
folder holding another particle count or system than asked is an error naming what it
holds; generating a dataset is always logged. Tiny datasets (3-frame trajectories).
"""

import hashlib
import logging
import os
import shutil

import pytest

from nri_modular.data import datasets

TINY = dict(num_train=4, num_valid=2, num_test=2, seed=0, train_steps=300, test_steps=300)


def _ensure(data_dir, system="springs", num_particles=5, **overrides):
    return datasets.ensure_dataset(
        str(data_dir), system, num_particles=num_particles, **dict(TINY, **overrides)
    )


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Folders of tiny datasets we generated: springs with 5 and 10 particles, charged 5."""
    root = tmp_path_factory.mktemp("ours")
    for system, n in (("springs", 5), ("springs", 10), ("charged", 5)):
        datasets.generate_dataset(system, str(root / f"{system}{n}"), num_particles=n, **TINY)
    return root


def _foreign(ours, tmp_path, name, drop=()):
    """A copy of one of our folders without its meta file (and without ``drop`` files)."""
    folder = tmp_path / f"foreign_{name}"
    shutil.copytree(ours / name, folder)
    for path in folder.glob("meta_*.json"):
        path.unlink()
    for file in drop:
        (folder / file).unlink()
    return folder


def _snapshot(folder):
    """``{file name: sha1}`` of a folder (it must not change)."""
    return {
        name: hashlib.sha1((folder / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(folder))
    }


def test_folder_missing_one_split_is_not_overwritten(ours, tmp_path):
    """Today's bug: Kipf-layout files without the test split were regenerated over."""
    folder = _foreign(ours, tmp_path, "springs5", drop=["loc_test_springs5.npy"])
    before = _snapshot(folder)
    with pytest.raises(ValueError) as err:
        _ensure(folder)
    message = str(err.value)
    assert f"{folder} holds files we did not write: edges_test_springs5.npy" in message
    assert "(springs5 (train 4, valid 2, test ? simulations;" in message
    assert "no meta_springs5.json: not written by us" in message
    assert "refusing to write a dataset into it" in message
    assert _snapshot(folder) == before


def test_other_particle_count_is_named(ours, tmp_path):
    """Today's bug: 10-particle files + the default flags -> a 5-particle set beside them."""
    folder = _foreign(ours, tmp_path, "springs10")
    before = _snapshot(folder)
    with pytest.raises(ValueError) as err:
        _ensure(folder, num_particles=5)
    message = str(err.value)
    assert "(springs10 (train 4, valid 2, test 2 simulations;" in message
    assert "holds files we did not write: edges_test_springs10.npy" in message
    assert "set --system / --num_particles to match (asked: springs, num_particles=5)" in message
    assert _snapshot(folder) == before
    # What the error suggests works: the files load as they are, nothing is written.
    data = _ensure(folder, num_particles=10)
    assert data.train.num_particles == 10 and _snapshot(folder) == before


def test_other_system_is_named(ours, tmp_path):
    folder = _foreign(ours, tmp_path, "charged5")
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=r"\(charged5 \(train 4, valid 2, test 2 .*asked: springs"):
        _ensure(folder, system="springs")
    assert _snapshot(folder) == before


def test_generate_and_regenerate_refuse_a_foreign_folder(ours, tmp_path):
    """The generator CLI's path (generate_dataset) and regenerate=True write nothing there."""
    folder = _foreign(ours, tmp_path, "springs5")
    before = _snapshot(folder)
    with pytest.raises(ValueError, match="holds files we did not write.*refusing to write"):
        datasets.generate_dataset("springs", str(folder), **TINY)
    with pytest.raises(ValueError, match="springs5 .*not written by us"):
        _ensure(folder, regenerate=True)
    with pytest.raises(ValueError, match="has 4 simulations but num_train=6"):
        _ensure(folder, num_train=6)  # another size: not regenerated over
    assert _snapshot(folder) == before
    assert _ensure(folder).train.num_tasks == 4  # the same sizes: read as they are
    assert _snapshot(folder) == before


def test_generating_is_logged_and_our_folders_are_shared(ours, tmp_path, caplog):
    """Our own cache may hold several datasets (springs and charged demos share data/);
    generating beside one says what the folder already holds."""
    folder = tmp_path / "cache"
    shutil.copytree(ours / "springs5", folder)
    caplog.set_level(logging.INFO)
    _ensure(folder, system="charged")
    text = caplog.text
    generating = "generating the charged5 dataset (train/valid/test: 4/2/2 simulations, seed 0)"
    assert f"{generating} in {folder}" in text
    assert f"{folder} also holds springs5 (train 4, valid 2, test 2 simulations; ours)" in text
    assert "wrote the charged5 dataset (10 files)" in text
    caplog.clear()
    _ensure(folder, system="charged")  # cached: loaded, nothing generated
    assert "generating" not in caplog.text
    caplog.clear()
    before = _snapshot(folder)
    with pytest.raises(
        ValueError, match=r"our charged5 dataset made with other seed \(0, asked 1\)"
    ):
        _ensure(folder, system="charged", seed=1)  # never regenerated unasked
    assert _snapshot(folder) == before and "generating" not in caplog.text
    _ensure(folder, system="charged", seed=1, regenerate=True)  # asked: regenerated
    assert "generating the charged5 dataset" in caplog.text


def test_files_copied_over_ours_are_seen_not_replaced(ours, tmp_path):
    """The probe's case: another dataset's files copied over ours (same sizes)."""
    folder = tmp_path / "cache"
    shutil.copytree(ours / "springs5", folder)
    other = tmp_path / "other"
    datasets.generate_dataset("springs", str(other), **dict(TINY, seed=9))
    for name in os.listdir(other):
        if name.endswith(".npy"):
            shutil.copy(other / name, folder / name)
    before = _snapshot(folder)
    with pytest.raises(ValueError, match="train files of springs5 .* differ from the ones we"):
        _ensure(folder)
    assert _snapshot(folder) == before


@pytest.mark.parametrize("name", ["loc_train_mydata.npy", "notes.txt", "loc_train_mydata5.npy"])
def test_a_folder_of_someone_elses_files_is_never_written(tmp_path, name):
    """Misnamed own files or a typo'd --data_dir: no synthetic springs beside them."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_bytes(b"their bytes")
    with pytest.raises(ValueError, match=f"holds files we did not write: {name}"):
        _ensure(folder)
    assert os.listdir(folder) == [name]
    with pytest.raises(ValueError, match="holds files we did not write"):
        datasets.generate_dataset("springs", str(folder), **TINY)
    assert os.listdir(folder) == [name]


def test_generate_replaces_our_dataset_only_when_asked(ours, tmp_path):
    folder = tmp_path / "cache"
    shutil.copytree(ours / "springs5", folder)
    before = _snapshot(folder)
    with pytest.raises(FileExistsError, match="already holds our springs5 dataset"):
        datasets.generate_dataset("springs", str(folder), **dict(TINY, seed=3))
    assert _snapshot(folder) == before
    datasets.generate_dataset("springs", str(folder), **dict(TINY, seed=3), overwrite=True)
    assert _snapshot(folder) != before


# ----------------------------------------------------------------------------------------
# The README's promise, at every entry point: a folder holding files we did not write is
# never written into (a user's own files under another name, a typo'd --data_dir).
# (experiments/data_efficiency.py takes no --data_dir: it generates into new folders
# under its own --out.)

_FLAGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "flags")
ENTRY_POINTS = {
    "springs": ["experiments/springs.py", f"--flagfile={_FLAGS}/test.flags"],
    "charged": ["experiments/charged.py", f"--flagfile={_FLAGS}/test.flags", "--system=charged"],
    "table": ["experiments/table.py", f"--flagfile={_FLAGS}/table_test.flags"],
    "hidden_node": ["experiments/hidden_node.py", f"--flagfile={_FLAGS}/hidden_node_demo.flags"],
    "generate": ["-m", "nri_modular.data.generate", "--num_train=4", "--num_valid=2",
                 "--num_test=2", "--train_steps=300", "--test_steps=300"],  # fmt: skip
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_no_entry_point_writes_into_a_folder_of_someone_elses_files(
    entry, tmp_path, subprocess_env
):
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "loc_train_mydata.npy").write_bytes(b"their bytes")
    before = _snapshot(folder)
    script, *args = ENTRY_POINTS[entry]
    where = "--out_dir" if entry == "generate" else "--data_dir"
    cmd = [sys.executable, script, *args, f"{where}={folder}"]
    if entry != "generate":
        cmd.append(f"--workdir={tmp_path / 'run'}")
    if entry == "table":
        cmd.append(f"--out={tmp_path / 'out'}")
    proc = subprocess.run(
        cmd, env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()
    assert last[-2].startswith("error: ") and "holds files we did not write" in last[-2]
    assert "Traceback" not in proc.stderr
    assert _snapshot(folder) == before
