"""HLO accounting of ``benchmarks/hlo.py`` (used by ``benchmarks/step_cost.py``): the parser
on a sample of XLA's text format, and the stats of a real compiled step."""

import importlib.util
import os

import jax
import jax.numpy as jnp
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
    assert stats["collectives"] == {}  # one device: no communication
    # The step donates the whole state: every state buffer is an argument aliased to the
    # new state (a run keeps one copy of its parameters, structures and optimiser state).
    state_bytes = _nbytes(setup.abstract_state)
    assert stats["alias_bytes"] == state_bytes
    # The arguments are the state and the batch; the labels only if the step reads them
    # (a jitted program drops unused arguments).
    batch = setup.abstract_batch
    read = state_bytes + _nbytes((batch.task_ids, batch.states))
    assert stats["argument_bytes"] - read in (0, _nbytes(batch.labels))
    assert stats["flops"] > 100 * _nbytes(batch.states)  # rollouts of MLPs on every frame


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_compiled_stats_of_a_matmul():
    """A program whose costs are known: [m, k] @ [k, n] in float32 does 2 m k n flops and
    reads and writes its three arrays once."""
    m, k, n = 16, 32, 8
    a, b = jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((k, n), jnp.float32)
    stats = hlo.compiled_stats(jax.jit(jnp.matmul).lower(a, b).compile())
    assert stats["flops"] == 2 * m * k * n
    assert stats["bytes_accessed"] == 4 * (m * k + k * n + m * n)
    assert stats["argument_bytes"] == 4 * (m * k + k * n)
    assert stats["output_bytes"] == 4 * m * n
    assert stats["alias_bytes"] == 0 and stats["collectives"] == {}
