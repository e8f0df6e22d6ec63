"""The package namespace: lazy (importing it loads no heavy dependency), every public name
resolves, renamed names fail naming their new name."""

import subprocess
import sys

import pytest

import nri_modular as nm


def test_import_loads_no_heavy_dependency():
    code = (
        "import sys, nri_modular\n"
        "heavy = ('jax', 'orbax', 'flax', 'optax', 'matplotlib', 'nri_modular.hidden_node')\n"
        "print(sorted({m for m in sys.modules if m.startswith(heavy)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_to_its_defining_module():
    for name in nm.__all__:
        value = getattr(nm, name)
        if hasattr(value, "__module__") and not isinstance(value, type(nm)):
            assert value.__module__.startswith("nri_modular."), name
    assert nm.ModuleBank.__module__ == "nri_modular.modules"
    assert nm.save_model.__module__ == "nri_modular.checkpoints"
    assert nm.hidden_node.__name__ == "nri_modular.hidden_node"
    assert nm.gnn.rollout is nm.rollout  # submodules are attributes too


@pytest.mark.parametrize("old, new", [("make_proposal", "make_move"), ("proposal", "proposal_net")])
def test_renamed_names_point_to_the_new_ones(old, new):
    with pytest.raises(AttributeError, match=f"renamed: use nri_modular.{new}"):
        getattr(nm, old)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        nm.no_such_name  # noqa: B018
