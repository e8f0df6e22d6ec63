"""Throughput of the compiled BounceGrad step and of SA energy evaluation.

  python benchmarks/train_step.py                  # demo and paper sizes
  python benchmarks/train_step.py --sizes=paper --repeats=5

For each size it prints, side by side: tasks/s of one SA energy evaluation (forward
p-step rollout loss), of the gradient pass, and of the whole ``bouncegrad_step`` (one
uniform SA proposal per task + one Adam step, stale energies as in the paper's code, and
with refreshed energies), each with achieved GFLOP/s (counting only the FLOPs of the module
each edge uses; backward = 2x forward) against the fp32 matmul peak measured in the same
run. Also, side by side: the library's jraph ``GraphsTuple`` message passing against the
dense per-task layout it replaced (messages summed by a reshape, kept here as a reference),
at one fixed size and for systems of 3-10 objects in one batch (padded super-graph within a
bucketed budget vs every task padded to 10); and blocked vs all-module edge dispatch. Times
are medians after ``block_until_ready``, compilation excluded.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
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
RAGGED = (3, 10)  # objects per system in the ragged comparison


def dense_rollout_loss(bank, params, states, structure, p):
    """The pre-jraph layout (reference): ``[G, n, d]`` states, messages summed by a reshape.

    Same function as ``gnn.rollout_loss`` without sizes (tests/test_gnn.py checks the
    library against the same kind of dense reference).
    """
    b, t, n, d = states.shape
    receivers, senders = graph.edge_index(n)
    starts = np.asarray(gnn.chunk_starts(t, p))
    c = len(starts)
    layout = gnn.task_layout(jnp.repeat(structure, c, axis=0), bank.num_modules)

    def step(s, _):
        x = jnp.concatenate([s[:, senders], s[:, receivers]], axis=-1).reshape(-1, 2 * d)
        msgs = gnn.edge_messages(bank, params["edge"], x, layout, "blocked")
        agg = msgs.reshape(b * c, n, n - 1, -1).sum(axis=2)
        s = s + bank.apply_node(params["node"], jnp.concatenate([s, agg], axis=-1))
        return s, s

    _, preds = jax.lax.scan(step, states[:, starts].reshape(b * c, n, d), None, length=p)
    preds = jnp.swapaxes(preds, 0, 1).reshape(b, c, p, n, d)
    frames = starts[:, None] + np.arange(1, p + 1)[None, :]
    mask = jnp.asarray(frames < t, states.dtype)
    per_step = jnp.square(preds - states[:, np.minimum(frames, t - 1)]).mean(axis=(-1, -2))
    return (per_step * mask[None]).sum(axis=(1, 2)) / mask.sum()


def ragged_batch(batch, low, high):
    """Random systems of ``low..high`` objects padded to ``high``, with their sizes."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(low, high + 1, size=batch)
    states = 0.5 * rng.standard_normal((batch, T, high, 4)).astype(np.float32)
    states *= (np.arange(high)[None, :] < sizes[:, None])[:, None, :, None]
    structure = rng.integers(0, 2, size=(batch, high * (high - 1))).astype(np.int32)
    return jnp.asarray(states), jnp.asarray(structure), graph.Sizes.of(sizes)


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
        for label, fn in (
            ("GraphsTuple (library)", lambda p, s, st: gnn.rollout_loss(bank, p, s, st, P)),
            ("dense layout (reference)", lambda p, s, st: dense_rollout_loss(bank, p, s, st, P)),
        ):
            fwd = jax.jit(fn)
            bwd = jax.jit(jax.grad(lambda p, s, st, fn=fn: fn(p, s, st).mean()))
            row(f"energy, {label}", timeit(fwd, params, states, labels, repeats=repeats), fwd_flops)
            row(
                f"gradient, {label}",
                timeit(bwd, params, states, labels, repeats=repeats),
                3 * fwd_flops,
            )
        rs, rst, sizes = ragged_batch(batch, *RAGGED)
        real = sum(gnn.rollout_flops(bank, 1, T, int(n), P) for n in np.asarray(sizes.counts))
        ragged = jax.jit(
            jax.grad(lambda p, s, st, z: gnn.rollout_loss(bank, p, s, st, P, sizes=z).mean())
        )
        padded = jax.jit(jax.grad(lambda p, s, st: dense_rollout_loss(bank, p, s, st, P).mean()))
        span = f"{RAGGED[0]}-{RAGGED[1]} objects"
        row(
            f"gradient, {span}, graphs (budget {tuple(sizes.budget)})",
            timeit(ragged, params, rs, rst, sizes, repeats=repeats),
            3 * real,
        )
        row(
            f"gradient, {span}, dense padded to {RAGGED[1]}",
            timeit(padded, params, rs, rst, repeats=repeats),
            3 * real,
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
