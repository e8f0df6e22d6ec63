r"""Kuramoto simulator benchmark: the published generator's loop vs ours, side by side.

  python benchmarks/simulate_kuramoto.py                 # n = 5 and n = 10
  python benchmarks/simulate_kuramoto.py --sizes=5 --accuracy

For each number of oscillators ``n`` prints trajectories per second of

* the reference: our numpy/scipy re-implementation of the published generator's loop
  (tests/reference_kuramoto.py ``published_generator``: one trajectory at a time, scipy's
  ``ode(...).set_integrator("dopri5")`` stepped over the 1000 grid points, features),
  on ``--reference_sims`` trajectories of the test length (99 frames, as the published
  script generates every split);
* ours: ``kuramoto.generate_split`` for the full dataset (50k train + 10k valid cut to 49
  frames, 10k test of 99 frames; float32, chunked, two chunks in flight), compilation
  reported separately;

and their ratio per trajectory. ``--accuracy`` adds the table that chose the RK4 step:
phase errors against DOP853 at ``rtol = atol = 1e-12`` for float64 and float32 and
``substeps`` 1, 2, 4, how far a 1e-7 rad change of the initial phases moves the
trajectories (the ODE's own sensitivity), and the published generator's own error.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import reference_kuramoto as ref  # noqa: E402

from nri_modular.data import kuramoto  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["5", "10"], "Numbers of oscillators.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50000, "Train trajectories (49 frames).")
_NUM_VALID = flags.DEFINE_integer("num_valid", 10000, "Valid trajectories (49 frames).")
_NUM_TEST = flags.DEFINE_integer("num_test", 10000, "Test trajectories (99 frames).")
_REFERENCE_SIMS = flags.DEFINE_integer("reference_sims", 20, "Trajectories for the reference.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 4096, "Our chunk size.")
_SUBSTEPS = flags.DEFINE_integer(
    "substeps", None, "RK4 steps per grid step (default: kuramoto.default_substeps(n))."
)
_ACCURACY = flags.DEFINE_bool("accuracy", False, "Print the step-size accuracy table.")
_ACCURACY_SIMS = flags.DEFINE_integer("accuracy_sims", 200, "Trajectories for --accuracy.")
_PUBLISHED_SIMS = flags.DEFINE_integer(
    "published_sims", 50, "Trajectories of the published generator for --accuracy."
)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _speed(n: int) -> None:
    print(f"== n = {n}: speed ({os.cpu_count()} CPUs, {_load()})")
    num_ref = _REFERENCE_SIMS.value
    start = time.perf_counter()
    ref.published_generator(num_ref, n, seed=0)
    ref_per_sim = (time.perf_counter() - start) / num_ref
    print(
        f"reference loop  : {1 / ref_per_sim:10.2f} traj/s  ({ref_per_sim * 1e3:.0f} ms/traj, "
        f"{num_ref} trajectories of 99 frames, scipy dopri5)"
    )
    splits = [
        ("train", _NUM_TRAIN.value, kuramoto.SPLIT_FRAMES["train"]),
        ("valid", _NUM_VALID.value, kuramoto.SPLIT_FRAMES["valid"]),
        ("test", _NUM_TEST.value, kuramoto.SPLIT_FRAMES["test"]),
    ]
    chunk = _CHUNK_SIZE.value
    substeps = _SUBSTEPS.value or kuramoto.default_substeps(n)
    start = time.perf_counter()
    for _, sims, _ in splits:
        kuramoto.compile_split(sims, n, substeps=substeps, chunk_size=chunk)
    compile_s = time.perf_counter() - start
    times = {}
    for seed, (name, sims, frames) in enumerate(splits):
        start = time.perf_counter()
        kuramoto.generate_split(
            jax.random.key(seed), sims, n, frames, substeps=substeps, chunk_size=chunk
        )
        times[name] = time.perf_counter() - start
    run_s = sum(times.values())
    total = sum(sims for _, sims, _ in splits)
    ours_per_sim = run_s / total
    print(
        f"ours (float32)  : {1 / ours_per_sim:10.0f} traj/s  ({ours_per_sim * 1e3:.3f} ms/traj, "
        f"{total} trajectories simulated at 99 frames, substeps={substeps})"
    )
    print(f"ratio           : {ref_per_sim / ours_per_sim:10.0f} x  (reference / ours per traj)")
    print(f"  with compilation: {ref_per_sim * total / (run_s + compile_s):.0f} x")
    per_split = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    print(
        f"full dataset    : {compile_s + run_s:10.1f} s wall = {compile_s:.1f} s compile + "
        f"{run_s:.1f} s run ({per_split}); {_load()}"
    )


def _stats(errors: np.ndarray) -> str:
    p99 = np.percentile(errors, 99)
    return f"max {errors.max():.1e} p99 {p99:.1e} median {np.median(errors):.1e}"


def _published_phases(phase0, omega, couplings) -> np.ndarray:
    """The published generator's phases ``[n, 100]`` at the frame times for given initial
    conditions (scipy dopri5 with its defaults, float32 right-hand side)."""
    from scipy.integrate import ode

    times = ref.grid(99)

    def f(t, y, w, k):
        out = w.astype(np.float32)
        out += (k * np.sin(y[np.newaxis, :] - y[:, np.newaxis])).sum(axis=1)
        return out

    solver = ode(f).set_integrator("dopri5")
    solver.set_initial_value(phase0.astype(np.float64), times[0])
    solver.set_f_params(omega.astype(np.float64), couplings)
    phi = np.empty((len(phase0), len(times)))
    for idx in range(len(times) - 1):
        phi[:, idx] = solver.y
        solver.integrate(times[idx + 1])
    phi[:, -1] = solver.y
    return ref.frame_samples(phi)[0]


def _accuracy(n: int) -> None:
    sims = _ACCURACY_SIMS.value
    print(f"== n = {n}: max |phi - phi_DOP853| over t < 10 per trajectory, {sims} trajectories")
    phase0, omega, couplings = (
        np.asarray(a) for a in kuramoto.sample_initial(jax.random.key(1000 + n), sims, n)
    )
    truth = np.stack(
        [ref.frame_samples(ref.solve(phase0[s], omega[s], couplings[s]))[0] for s in range(sims)]
    )
    for substeps in (1, 2, 4):
        with jax.enable_x64(True):
            ours64 = kuramoto.integrate(
                phase0.astype(np.float64),
                omega.astype(np.float64),
                couplings,
                substeps=substeps,
            )
        ours32 = kuramoto.integrate(phase0, omega, couplings, substeps=substeps)
        err64 = np.abs(ours64.phase - truth).max(axis=(1, 2))
        err32 = np.abs(ours32.phase - truth).max(axis=(1, 2))
        print(f"RK4 h = dt/{substeps}: float64 {_stats(err64)} | float32 {_stats(err32)} (rad)")
    # sensitivity of the ODE itself: float64, h = dt / 4, initial phases moved by <= 1e-7
    shift = np.random.default_rng(0).uniform(-1e-7, 1e-7, phase0.shape)
    with jax.enable_x64(True):
        base, moved = (
            kuramoto.integrate(p, omega.astype(np.float64), couplings, substeps=4).phase
            for p in (phase0.astype(np.float64), phase0 + shift)
        )
    moved_by = np.abs(moved - base).max(axis=(1, 2))
    print(f"initial phases moved by <= 1e-7 rad (float64): phases move by {_stats(moved_by)}")
    num_pub = min(_PUBLISHED_SIMS.value, sims)
    published = np.stack(
        [_published_phases(phase0[s], omega[s], couplings[s]) for s in range(num_pub)]
    )
    err = np.abs(published - truth[:num_pub]).max(axis=(1, 2))
    print(f"published dopri5 generator ({num_pub} trajectories): {_stats(err)} (rad)")


def main(argv):
    del argv
    for n in (int(s) for s in _SIZES.value):
        _speed(n)
        if _ACCURACY.value:
            _accuracy(n)


if __name__ == "__main__":
    app.run(main)
