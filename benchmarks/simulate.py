r"""Simulator benchmark: the numpy reference loop vs ours, measured side by side in one run.

  python benchmarks/simulate.py --system=springs
  python benchmarks/simulate.py --system=charged --fidelity --distribution

Prints seconds per 49-frame simulation of the one-simulation-at-a-time numpy reference
loop (tests/reference_sim.py, the loop of Kipf et al.'s generator) and of ours
(float32, chunked, 2 chunks in flight), their ratio, and the wall time of the full
dataset (50k train + 10k valid of 49 frames, 10k test of 99 frames by default) with the
compilation reported separately. ``--fidelity`` adds float64 errors against the
reference and the float32 drift; ``--distribution`` compares trajectory statistics of
``--distribution_sims`` simulations of each.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import reference_sim as ref  # noqa: E402

from nri_modular.data import physics  # noqa: E402

_SYSTEM = flags.DEFINE_enum("system", "springs", list(physics.SYSTEMS), "System.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50000, "Train simulations (49 frames).")
_NUM_VALID = flags.DEFINE_integer("num_valid", 10000, "Valid simulations (49 frames).")
_NUM_TEST = flags.DEFINE_integer("num_test", 10000, "Test simulations (99 frames).")
_REFERENCE_SIMS = flags.DEFINE_integer("reference_sims", 200, "Sims for the reference loop.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 4096, "Our chunk size.")
_FIDELITY = flags.DEFINE_bool("fidelity", False, "Print float64 error and float32 drift.")
_FIDELITY_SIMS = flags.DEFINE_integer("fidelity_sims", 200, "Sims for --fidelity.")
_DISTRIBUTION = flags.DEFINE_bool("distribution", False, "Compare trajectory statistics.")
_DISTRIBUTION_SIMS = flags.DEFINE_integer("distribution_sims", 2000, "Sims for --distribution.")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _speed(system: str) -> None:
    print(f"== {system}: speed ({os.cpu_count()} CPUs, {_load()})")
    n_ref = _REFERENCE_SIMS.value
    start = time.perf_counter()
    ref.simulate_loop(system, n_ref, seed=0)
    ref_per_sim = (time.perf_counter() - start) / n_ref
    print(f"reference loop  : {ref_per_sim * 1e3:9.3f} ms/sim  ({n_ref} sims of 49 frames)")

    splits = [("train", _NUM_TRAIN.value, 5000), ("valid", _NUM_VALID.value, 5000)]
    splits.append(("test", _NUM_TEST.value, 10000))
    chunk = _CHUNK_SIZE.value
    start = time.perf_counter()
    for _, sims, steps in splits:
        physics.compile_simulate(system, sims, num_steps=steps, chunk_size=chunk)
    compile_s = time.perf_counter() - start
    times = {}
    for seed, (name, sims, steps) in enumerate(splits):
        start = time.perf_counter()
        physics.simulate(system, seed, sims, num_steps=steps, chunk_size=chunk)
        times[name] = time.perf_counter() - start
    run_s = sum(times.values())
    sims49 = _NUM_TRAIN.value + _NUM_VALID.value
    ours_per_sim = (times["train"] + times["valid"]) / sims49
    print(f"ours (float32)  : {ours_per_sim * 1e3:9.3f} ms/sim  ({sims49} sims of 49 frames)")
    print(f"ratio           : {ref_per_sim / ours_per_sim:9.0f} x  (reference / ours per sim)")
    per_split = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    print(
        f"full dataset    : {compile_s + run_s:9.1f} s wall = {compile_s:.1f} s compile + "
        f"{run_s:.1f} s run ({per_split}); {_load()}"
    )


def _fidelity(system: str) -> None:
    num = _FIDELITY_SIMS.value
    print(f"== {system}: fidelity on {num} sims")
    loc0, vel0, edges = physics.sample_initial_states(1, system, num)
    rloc, rvel = ref.integrate(loc0, vel0, edges, system, 5000)
    with jax.enable_x64(True):
        loc64, vel64 = (
            np.asarray(a) for a in physics.integrate_batch(loc0, vel0, edges, system=system)
        )
        start_loc = np.concatenate([loc0[:, None], rloc[:, :-1]], axis=1).reshape(-1, 2, 5)
        start_vel = np.concatenate([vel0[:, None], rvel[:, :-1]], axis=1).reshape(-1, 2, 5)
        step_loc, _ = physics.integrate_batch(
            start_loc, start_vel, np.repeat(edges, 49, axis=0), system=system, num_steps=200
        )
    free = np.abs(loc64 - rloc).max(axis=(2, 3))  # [sims, frames]
    frame_by_frame = np.abs(np.asarray(step_loc)[:, 0] - rloc.reshape(-1, 2, 5)).max()
    print(f"float64 vs reference, free run, max |dx| at step 1000: {free[:, 9].max():.2e}")
    print(f"  ... at step 4900: max {free[:, -1].max():.2e}, median {np.median(free[:, -1]):.2e}")
    print(f"  ... fraction of sims within 1e-9 at step 1000: {(free[:, 9] <= 1e-9).mean():.3f}")
    print(f"float64 vs reference, 100 steps from each reference frame: max {frame_by_frame:.2e}")
    args = (loc0.astype(np.float32), vel0.astype(np.float32), edges.astype(np.float32))
    loc32, _ = physics.integrate_batch(*args, system=system)
    drift = np.abs(np.asarray(loc32, np.float64) - loc64).max(axis=(2, 3))  # [sims, frames]
    for f in (0, 9, 48):
        print(
            f"float32 drift from float64, frame {f + 1:2d}: max {drift[:, f].max():.2e}, "
            f"median {np.median(drift[:, f]):.2e} (position range +-{np.abs(loc64).max():.1f})"
        )


def _distribution(system: str) -> None:
    num = _DISTRIBUTION_SIMS.value
    print(f"== {system}: distribution, {num} sims each (ours float32 vs numpy reference)")
    ours = physics.simulate(system, 11, num)
    theirs = ref.simulate_vectorised(system, num, seed=12)  # independent of ours
    print(f"{'statistic':24s} {'ours':>18s} {'reference':>18s} {'z':>6s}")
    worst = 0.0
    for f in (0, 24, 48):
        for name, fn in (
            ("mean x", lambda loc, vel: loc.mean(axis=(1, 2))),
            ("std x", lambda loc, vel: np.sqrt((loc**2).mean(axis=(1, 2)))),
            ("speed", lambda loc, vel: np.sqrt((vel**2).sum(axis=1)).mean(axis=1)),
            ("kinetic energy", lambda loc, vel: 0.5 * (vel**2).sum(axis=(1, 2))),
        ):
            a = fn(ours[0][:, f], ours[1][:, f])
            b = fn(theirs[0][:, f], theirs[1][:, f])
            se_a, se_b = a.std() / np.sqrt(num), b.std() / np.sqrt(num)
            z = (a.mean() - b.mean()) / np.hypot(se_a, se_b)
            worst = max(worst, abs(z))
            print(
                f"{name + f' @ frame {f + 1}':24s} {a.mean():9.4f} +- {se_a:.4f} "
                f"{b.mean():9.4f} +- {se_b:.4f} {z:6.2f}"
            )
    print(f"max |z| = {worst:.2f} over 12 statistics (per-sim means; 'std x' is the rms)")


def main(argv):
    del argv
    system = _SYSTEM.value
    _speed(system)
    if _FIDELITY.value:
        _fidelity(system)
    if _DISTRIBUTION.value:
        _distribution(system)


if __name__ == "__main__":
    app.run(main)
