"""Throughput of the compiled BounceGrad step and of SA energy evaluation.

  python benchmarks/train_step.py                  # demo and paper sizes
  python benchmarks/train_step.py --sizes=paper --repeats=5

For each size it prints, side by side: tasks/s of one SA energy evaluation (forward
p-step rollout loss), of the gradient pass, and of the whole ``bouncegrad_step`` (one
uniform SA proposal per task + one Adam step, stale energies as in the paper's code, and
with refreshed energies), each with achieved GFLOP/s (counting only the FLOPs of the module
each edge uses; backward = 2x forward) against the fp32 matmul peak measured in the same
run. Also the jraph GraphsTuple path vs the batched layout, and blocked vs all-module edge
dispatch. Times are medians after ``block_until_ready``, compilation excluded.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from nri_modular import bouncegrad, gnn, graph
from nri_modular.modules import ModuleBank

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["demo", "paper"], "Which sizes: demo, paper.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
flags.DEFINE_bool("compare_layouts", True, "Also time the jraph path and all-module dispatch.")

SIZES = {
    # name: (hidden, batch)
    "demo": (64, 50),
    "paper": (256, 128),
}
# The paper's PyTorch code at the paper's size (256 wide, 128 tasks): 3.1 s per step, 41
# tasks/s, on a 2-core machine of this kind. Quoted from the text of issue 4 (2026-11, the
# issue author's measurement); NOT measured by this benchmark, which never runs that code
# (it is not in this repository).
PAPER_PYTORCH_TASKS_PER_S = 41.0
N, T, P = 5, 49, 10


def timeit(fn, *args, repeats):
    """Median seconds of ``fn(*args)`` after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(repeats):
    a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / timeit(f, a, repeats=repeats) / 1e9


def bench_size(name, repeats, peak, compare_layouts):
    hidden, batch = SIZES[name]
    bank = ModuleBank(2, (hidden,) * 3, (hidden,) * 3)
    key = jax.random.PRNGKey(0)
    states = 0.5 * jax.random.normal(key, (batch, T, N, 4))
    labels = jax.random.randint(jax.random.PRNGKey(1), (batch, N * (N - 1)), 0, 2)
    fwd_flops = gnn.rollout_flops(bank, batch, T, N, P)
    rows = []

    def row(label, seconds, flops):
        gflops = flops / seconds / 1e9
        rows.append((label, seconds, batch / seconds, gflops, 100 * gflops / peak))

    params = bank.init(key)
    for kind in ["blocked", "all"] if compare_layouts else ["blocked"]:
        loss = jax.jit(lambda p, s, st, k=kind: gnn.rollout_loss(bank, p, s, st, P, edge_compute=k))
        row(
            f"SA energy eval (fwd, {kind})",
            timeit(loss, params, states, labels, repeats=repeats),
            fwd_flops,
        )
    grad = jax.jit(jax.grad(lambda p, s, st: gnn.rollout_loss(bank, p, s, st, P).mean()))
    row(
        "gradient pass (fwd+bwd)",
        timeit(grad, params, states, labels, repeats=repeats),
        3 * fwd_flops,
    )
    if compare_layouts:
        g = graph.tasks_to_graphs(states[:, 0], labels)
        jr = jax.jit(lambda p, g: gnn.graph_step(bank, p, g))
        bt = jax.jit(lambda p, s, st: gnn.rollout(bank, p, s, st, 1))
        step_flops = fwd_flops // (len(gnn.chunk_starts(T, P)) * P)
        row(
            "one message step, jraph GraphsTuple",
            timeit(jr, params, g, repeats=repeats),
            step_flops,
        )
        row(
            "one message step, batched layout",
            timeit(bt, params, states[:, 0], labels, repeats=repeats),
            step_flops,
        )

    optimizer = optax.adam(5e-4)
    for refresh in (False, True):
        cfg = bouncegrad.BounceGradConfig(p=P, sa_steps=1, refresh_energy=refresh)
        state = bouncegrad.init_train_state(key, bank, optimizer, batch, N)
        step = jax.jit(bouncegrad.make_bouncegrad_step(bank, optimizer, cfg, N))
        b = bouncegrad.Batch(jnp.arange(batch), states, labels)
        state, _ = step(state, b)  # compile + fill energies
        seconds = timeit(lambda s, step=step, b=b: step(s, b)[0].params, state, repeats=repeats)
        label = "bouncegrad_step " + (
            "(refreshed energies)" if refresh else "(paper: stale energies)"
        )
        row(label, seconds, (1 + refresh) * fwd_flops + 3 * fwd_flops)
    return rows


def main(argv):
    del argv
    print(f"devices: {jax.devices()}")
    peak = matmul_peak(FLAGS.repeats)
    print(f"fp32 matmul peak (2048^3, this run): {peak:.1f} GFLOP/s")
    print(
        f"reference (quoted, not rerun here): the paper's PyTorch code, "
        f"{PAPER_PYTORCH_TASKS_PER_S:.0f} tasks/s (3.1 s per 128 tasks, paper size) on a 2-core "
        "machine of this kind, as measured by the author of issue 4 (2026-11)"
    )
    for name in FLAGS.sizes:
        if name not in SIZES:
            raise app.UsageError(f"unknown size {name!r}; expected one of {list(SIZES)}")
        hidden, batch = SIZES[name]
        print(
            f"\n== {name}: hidden {hidden}, batch {batch} tasks, {N} particles, {T} frames, p={P}"
        )
        print(f"{'what':45s} {'ms':>9s} {'tasks/s':>9s} {'GFLOP/s':>9s} {'% peak':>7s}")
        for label, s, tps, gf, pct in bench_size(name, FLAGS.repeats, peak, FLAGS.compare_layouts):
            print(f"{label:45s} {1e3 * s:9.1f} {tps:9.1f} {gf:9.1f} {pct:7.1f}")


if __name__ == "__main__":
    app.run(main)
