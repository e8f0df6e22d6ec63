r"""Per-device memory, FLOPs and communication of the compiled BounceGrad step.

Lowers and compiles the sharded step of ``train.build`` for 1, 4 and 8 (simulated) CPU
devices without allocating any array, and prints per device: argument bytes (state +
batch), temporary bytes, GFLOP (``cost_analysis``) and the collectives in the optimised
HLO (``hlo.compiled_stats``, beside this script), for each ``--edge_compute`` and ``--task_shards``
setting, side by side; then what a whole epoch needs.

A weak-scaling plot from simulated devices on 2 cores would measure nothing; these are
the numbers that decide scaling: the work per device and the bytes it must exchange.

    python benchmarks/step_cost.py                 # paper scale: 50k tasks, 256-wide
    python benchmarks/step_cost.py --devices=1,4 --num_train=2000 --width=64 --batch_size=64
"""

from __future__ import annotations

import os
import sys

_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _ensure_devices(argv: list[str]) -> None:
    """Re-executes with enough simulated CPU devices (must be set before JAX starts)."""
    wanted = 8
    for a in argv:
        if a.startswith("--devices="):
            wanted = max(int(v) for v in a.split("=", 1)[1].split(","))
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if _DEVICES_FLAG not in xla_flags:
        xla_flags = f"{xla_flags} {_DEVICES_FLAG}={wanted}".strip()
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
        os.execve(sys.executable, [sys.executable, *argv], env)


if __name__ == "__main__":
    _ensure_devices(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from hlo import compiled_stats  # noqa: E402  (benchmarks/hlo.py)

from nri_modular import distributed, train  # noqa: E402
from nri_modular.config import Config  # noqa: E402

flags.DEFINE_list("devices", ["1", "4", "8"], "Data-axis sizes to compile for.")
flags.DEFINE_integer("num_train", 50000, "Training tasks (per-task state size).")
flags.DEFINE_integer("batch_size", 128, "Tasks per step.")
flags.DEFINE_integer("width", 256, "Hidden width of the edge and node modules (3 layers).")
flags.DEFINE_integer("sa_steps", 1, "Annealing proposals per step.")
flags.DEFINE_list("proposal", ["uniform"], "Training proposals to compare (see --proposal).")
flags.DEFINE_list("edge_compute", ["all", "blocked"], "Edge dispatch settings to compare.")
flags.DEFINE_list("task_shards", ["1", "8"], "task_shards settings to compare.")
FLAGS = flags.FLAGS


def step_stats(config: Config, num_devices: int) -> dict:
    """``hlo.compiled_stats`` of the sharded step on ``num_devices`` devices."""
    if num_devices > jax.device_count():
        raise ValueError(
            f"--devices asks for {num_devices} devices but only {jax.device_count()} exist "
            f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
        )
    mesh = distributed.make_mesh(devices=jax.devices()[:num_devices])
    sample = np.zeros((1, config.obs_frames, config.num_particles, 4), np.float32)
    setup = train.build(config, mesh, sample)
    compiled = setup.step_fn.lower(setup.abstract_state, setup.abstract_batch).compile()
    return compiled_stats(compiled)


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} KB"


def _comm(collectives: dict) -> str:
    if not collectives:
        return "none"
    return ", ".join(f"{op} {c['count']}x {_mb(c['bytes'])}" for op, c in collectives.items())


def main(argv):
    del argv
    distributed.configure()
    width = (FLAGS.width,) * 3
    rows = []
    print(
        f"BounceGrad step, {FLAGS.num_train} tasks, batch {FLAGS.batch_size}, modules "
        f"{width}, {FLAGS.sa_steps} SA step(s); per device, from the compiled HLO"
    )
    print(
        "| proposal | edge_compute | task_shards | devices | args | temp | GFLOP | communication |"
    )
    print("|---|---|---|---|---|---|---|---|")
    settings = [
        (proposal, edge_compute, shards, d)
        for proposal in FLAGS.proposal
        for edge_compute in FLAGS.edge_compute
        for shards in map(int, FLAGS.task_shards)
        for d in map(int, FLAGS.devices)
        if shards == 1 or shards % d == 0  # task_shards > 1 is meant to be a multiple
    ]
    for proposal, edge_compute, shards, d in settings:
        config = Config(
            num_train=FLAGS.num_train,
            batch_size=FLAGS.batch_size,
            test_batch_size=FLAGS.batch_size,
            edge_hidden=width,
            node_hidden=width,
            sa_steps=FLAGS.sa_steps,
            proposal=proposal,
            edge_compute=edge_compute,
            task_shards=shards,
        )
        s = step_stats(config, d)
        rows.append((proposal, edge_compute, shards, d, s))
        print(
            f"| {proposal} | {edge_compute} | {shards} | {d} | {_mb(s['argument_bytes'])} | "
            f"{_mb(s['temp_bytes'])} | {s['flops'] / 1e9:.1f} | {_comm(s['collectives'])} |",
            flush=True,
        )
    steps = FLAGS.num_train // FLAGS.batch_size
    print(f"\nOne epoch = {steps} steps. Per device and epoch:")
    for proposal, edge_compute, shards, d, s in rows:
        comm = sum(c["bytes"] for c in s["collectives"].values())
        print(
            f"  {proposal} {edge_compute} task_shards={shards} devices={d}: "
            f"{s['flops'] * steps / 1e12:.2f} TFLOP, {comm * steps / 1e9:.3f} GB exchanged"
        )


if __name__ == "__main__":
    app.run(main)
