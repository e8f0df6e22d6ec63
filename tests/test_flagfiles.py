"""The committed flagfiles parse into valid configs and run from a fresh clone."""

import glob
import os

import pytest
from conftest import flagfile_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGFILES = sorted(
    f
    for f in glob.glob(os.path.join(ROOT, "experiments", "flags", "*.flags"))
    # hidden_node*, table_*, data_efficiency*: their scripts' own flags too (tested there).
    if not os.path.basename(f).startswith(("hidden_node", "table_", "data_efficiency"))
)


def _read(path):
    flags = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, value = line.lstrip("-").partition("=")
                flags[name] = value
    return flags


@pytest.mark.parametrize("path", TRAIN_FLAGFILES, ids=os.path.basename)
def test_flagfile_builds_a_valid_config(path):
    flagfile_config(path)  # Unknown flags and invalid values raise.


@pytest.mark.parametrize(
    "path", glob.glob(os.path.join(ROOT, "experiments", "flags", "*.flags")), ids=os.path.basename
)
def test_workdir_parent_exists_in_a_fresh_clone(path):
    workdir = _read(path).get("workdir")
    if workdir is not None and not os.path.isabs(workdir):
        parent = os.path.dirname(os.path.join(ROOT, workdir))
        assert os.path.isdir(parent), f"{path}: parent of --workdir={workdir} is not in the repo"
        tracked = os.path.join(parent, ".gitkeep")
        assert parent == ROOT or os.path.exists(tracked), f"{parent} is not kept in git"


def test_config_defaults_are_the_library_defaults():
    """One source of defaults (issue 23, item 5): a default Config builds exactly the
    library's default BounceGrad and meta-test search settings (MSE energy, no uniform moves
    mixed in), and a Huber run's search anneals its own Huber energy."""
    import dataclasses

    from nri_modular import bouncegrad, evaluate
    from nri_modular.config import Config, bouncegrad_config

    default = Config()
    assert bouncegrad_config(default) == bouncegrad.BounceGradConfig()
    assert evaluate.search_config(default) == evaluate.SearchConfig()
    assert default.initial_temperature == bouncegrad.INITIAL_TEMPERATURE
    huber = dataclasses.replace(default, loss="huber", huber_delta=0.02)
    assert evaluate.search_config(huber).huber_delta == 0.02
    assert bouncegrad_config(huber).loss == "huber"
