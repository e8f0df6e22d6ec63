"""Figures: drawn from arrays to a PNG; without matplotlib, an error naming the extra."""

import sys

import numpy as np
import pytest

from nri_modular import hidden_node as hn
from nri_modular import plots


def _systems(num=4, frames=5, n=3):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(num, frames, n, 4)).astype(np.float32)
    labels = np.ones((num, n * (n - 1)), np.int32)
    return hn.hide_particle(states, labels, np.full(num, n - 1))


def test_hidden_node_figure_writes_a_png(tmp_path):
    systems = _systems()
    path = str(tmp_path / "fig.png")
    plots.hidden_node_figure(systems, systems.hidden_states + 0.1, np.arange(4.0), path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="shaped like the hidden states"):
        plots.hidden_node_figure(systems, systems.hidden_states[:, :2], np.arange(4.0), path)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    systems = _systems()
    with pytest.raises(ImportError, match=r"the \[plots\] extra"):
        plots.hidden_node_figure(
            systems, systems.hidden_states, np.arange(4.0), str(tmp_path / "f.png")
        )
