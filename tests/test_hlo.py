"""HLO accounting of ``benchmarks/hlo.py`` (used by ``benchmarks/step_cost.py``): the parser
on a sample of XLA's text format, and the stats of a real compiled step."""

import importlib.util
import os

import jax
import numpy as np
from conftest import REPO, reference_config

from nri_modular import distributed, train

# benchmarks/hlo.py is a benchmark's helper, not part of the package: loaded from its file.
_SPEC = importlib.util.spec_from_file_location("hlo", os.path.join(REPO, "benchmarks", "hlo.py"))
hlo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hlo)


def test_collective_bytes_parses_hlo():
    text = "\n".join(
        [
            "  %a = f32[16,8]{1,0} all-reduce(f32[16,8]{1,0} %x), replica_groups={}",
            "  %b = (s32[10,12]{1,0}, s32[40,12]{1,0}) all-gather-start(s32[10,12]{1,0} %y)",
            "  %c = s32[40,12]{1,0} all-gather-done(%b)",
            "  %d = f32[] add(f32[] %p, f32[] %q)",
        ]
    )
    out = hlo.collective_bytes(text)
    assert out == {
        "all-reduce": {"count": 1, "bytes": 16 * 8 * 4},
        "all-gather": {"count": 1, "bytes": 40 * 12 * 4},
    }


def test_compiled_step_stats_on_one_device(tiny_data_dir):
    config = reference_config(tiny_data_dir)
    sample = np.zeros((1, config.obs_frames, config.num_particles, 4), np.float32)
    setup = train.build(config, distributed.make_mesh(devices=jax.devices()[:1]), sample)
    stats = hlo.compiled_stats(
        setup.step_fn.lower(setup.abstract_state, setup.abstract_batch).compile()
    )
    assert stats["argument_bytes"] > 0 and stats["flops"] > 0
    assert stats["collectives"] == {}  # one device: no communication
