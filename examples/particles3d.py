"""A worked example of one's own data: 3-D particles that follow each other, unlabelled.

  python examples/particles3d.py --out_dir=data/particles3d            # 1. write the data
  python experiments/train.py --flagfile=experiments/flags/own_demo.flags \\
      --data_dir=data/particles3d --dataset=particles3d --workdir=runs/particles3d  # 2. train
  python examples/particles3d.py --score --out_dir=data/particles3d \\
      --workdir=runs/particles3d                                          # 3. infer, check

None of our simulators makes this system. Each directed pair (i, j) of n particles in 3-D
is coupled with probability 1/2, independently of (j, i): particle i *follows* j,

    d v_i / dt = sum_j k_ij * STIFFNESS * (x_j - x_i) - DRAG * v_i,   k_ij in {0, 1},

integrated with leapfrog steps of DT, every SAMPLE_EVERY-th step kept (49 frames for train
and valid, 99 for test). The folder gets loc_/vel_{split}_particles3d.npy
[sims, frames, 3, n] and no edges file: the couplings are written aside to
truth_{split}_particles3d.npy (a name the loader does not read), so training and inference
never see them. Step 3 infers every test system's graph with the trained run
(experiments/evaluate.py's library call, which saves inferred_*.npz), chooses the module ->
relation map on the valid split's truth and scores the test split's graphs against the rules.

Systems of different sizes: with --min_particles below --num_particles each simulation
draws its number of particles uniformly in [min_particles, num_particles] (from a generator
of its own, so the fixed-size dataset, without the flag, is unchanged), every size group
is simulated on its own and padded to num_particles, and sizes_{split}_particles3d.npy
[sims] says how many are real (padded positions and velocities are 0; the truth of a pair
touching a padded particle is -1). Training then reads one ragged dataset.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

NAME = "particles3d"
STIFFNESS = 0.5
DRAG = 0.05
DT = 0.001
SAMPLE_EVERY = 100
FRAMES = {"train": 49, "valid": 49, "test": 99}
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


def _define_flags() -> None:
    """The command's flags (defined only when run: tests import this module's functions
    beside other scripts' flags)."""
    flags.DEFINE_string("out_dir", "data/particles3d", "Folder of the dataset.")
    flags.DEFINE_list("num_sims", ["2000", "200", "200"], "train,valid,test simulations.")
    flags.DEFINE_integer("num_particles", 5, "Particles per system (the largest, if ragged).")
    flags.DEFINE_integer(
        "min_particles",
        None,
        "Fewest particles per system: each system's size is drawn uniformly in "
        "[min_particles, num_particles] (default: num_particles, every system that size).",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the data.")
    flags.DEFINE_bool("score", False, "Infer with --workdir's run and score the graphs.")
    flags.DEFINE_string("workdir", "runs/particles3d", "The trained run (with --score).")


def couplings(rng: np.random.Generator, sims: int, n: int) -> np.ndarray:
    """``k [sims, n, n]`` in {0, 1}: ``k[s, i, j] = 1`` when i follows j (directed, zero
    diagonal)."""
    k = (rng.random((sims, n, n)) < 0.5).astype(np.float64)
    k[:, np.arange(n), np.arange(n)] = 0.0
    return k


def acceleration(x: np.ndarray, v: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``[sims, n, 3]`` from positions and velocities ``[sims, n, 3]`` and couplings."""
    pull = x[:, None, :, :] - x[:, :, None, :]  # [s, i, j, 3]: x_j - x_i
    return STIFFNESS * np.einsum("sij,sijd->sid", k, pull) - DRAG * v


def simulate(rng: np.random.Generator, sims: int, n: int, frames: int):
    """``(loc, vel [sims, frames, 3, n], k [sims, n, n])``: the rules above, in float64."""
    k = couplings(rng, sims, n)
    x = rng.normal(0.0, 0.5, (sims, n, 3))
    v = rng.normal(0.0, 0.5, (sims, n, 3))
    locs, vels = [], []
    a = acceleration(x, v, k)
    for step in range(frames * SAMPLE_EVERY):
        if step % SAMPLE_EVERY == 0:
            locs.append(x.copy())
            vels.append(v.copy())
        v_half = v + 0.5 * DT * a
        x = x + DT * v_half
        a = acceleration(x, v_half, k)
        v = v_half + 0.5 * DT * a
    to_kipf = lambda seq: np.swapaxes(np.stack(seq, 1), 2, 3).astype(np.float32)  # noqa: E731
    return to_kipf(locs), to_kipf(vels), k


def simulate_ragged(rng: np.random.Generator, sizes: np.ndarray, n: int, frames: int):
    """:func:`simulate` of systems of ``sizes`` particles (each size group in one call,
    in increasing size), padded to ``n``: ``(loc, vel [sims, frames, 3, n], k [sims, n,
    n])`` with padded positions and velocities 0 and ``k = -1`` on pairs touching a padded
    particle."""
    sims = len(sizes)
    loc = np.zeros((sims, frames, 3, n), np.float32)
    vel = np.zeros_like(loc)
    k = np.full((sims, n, n), -1.0)
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        loc[idx, ..., :size], vel[idx, ..., :size], k[idx, :size, :size] = simulate(
            rng, len(idx), int(size), frames
        )
    return loc, vel, k


def write(out_dir: str, num_sims: dict, n: int, seed: int, min_particles: int | None = None):
    """Writes the dataset (loc, vel; sizes when ``min_particles < n``) and the truth aside;
    refuses a non-empty folder."""
    min_particles = n if min_particles is None else min_particles
    if not 2 <= min_particles <= n:
        raise ValueError(f"need 2 <= min_particles <= num_particles, got {min_particles}, {n}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty: write the example into a new folder")
    os.makedirs(out_dir, exist_ok=True)
    for split, sims in num_sims.items():
        rng = np.random.default_rng([seed, SPLIT_IDS[split]])
        if min_particles == n:  # every system of n particles (the rng as it always was)
            loc, vel, k = simulate(rng, sims, n, FRAMES[split])
            held = f"{n} particles"
        else:  # sizes from a generator of their own, then the systems from rng
            sizes_rng = np.random.default_rng([seed, SPLIT_IDS[split], 1])
            sizes = sizes_rng.integers(min_particles, n + 1, size=sims).astype(np.int32)
            loc, vel, k = simulate_ragged(rng, sizes, n, FRAMES[split])
            np.save(os.path.join(out_dir, f"sizes_{split}_{NAME}.npy"), sizes)
            held = f"{min_particles}..{n} particles (padded to {n})"
        np.save(os.path.join(out_dir, f"loc_{split}_{NAME}.npy"), loc)
        np.save(os.path.join(out_dir, f"vel_{split}_{NAME}.npy"), vel)
        np.save(os.path.join(out_dir, f"truth_{split}_{NAME}.npy"), k.astype(np.int8))
        print(f"{split}: {sims} systems of {held} in 3-D, {FRAMES[split]} frames")


def score(workdir: str, data_dir: str) -> dict:
    """Infers the valid and test graphs with the run, maps modules on valid's truth, and
    scores test's graphs against the rules (``edge_accuracy``), per split.

    Ragged data: pairs whose truth is -1 (touching a padded particle) are left out of the
    map and of the accuracy, whatever the inferred structures hold there."""
    from nri_modular import evaluate_saved, graph, metrics

    inferred, truth = {}, {}
    for split in ("valid", "test"):
        overrides = {"horizon": 0} if split == "valid" else {}  # valid: 49 frames, no future
        results = evaluate_saved.evaluate_run(
            workdir, data_dir, split=split, num_plots=0, overrides=overrides
        )
        inferred[split] = np.load(results["inferred"])["structures"]
        k = np.load(os.path.join(data_dir, f"truth_{split}_{NAME}.npy"))
        truth[split] = graph.matrix_to_edges(k).astype(np.int32)
    real = {split: truth[split] >= 0 for split in truth}  # ragged: -1 on padded pairs
    for split in truth:  # one row of every real pair (all pairs when none is padded)
        inferred[split] = inferred[split][real[split]][None]
        truth[split] = truth[split][real[split]][None]
    num_modules = int(inferred["valid"].max(initial=0)) + 1
    mapping = metrics.module_mapping(inferred["valid"], truth["valid"], max(num_modules, 2), 2)
    accuracy = float(metrics.edge_accuracy(inferred["test"], truth["test"], mapping))
    return {
        "module_to_relation (chosen on valid)": [int(m) for m in mapping],
        "test_edge_accuracy_against_rules": accuracy,
        "test_systems": int(len(real["test"])),
        "mse_1 (test, from the run's evaluation)": results["mse_1"],
    }


def main(argv):
    del argv
    if flags.FLAGS.score:
        scores = score(flags.FLAGS.workdir, flags.FLAGS.out_dir)
        path = os.path.join(flags.FLAGS.workdir, "score_against_rules.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=1)
        print(json.dumps(scores, indent=1))
        print(f"written to {path}")
        return
    num = dict(zip(("train", "valid", "test"), (int(v) for v in flags.FLAGS.num_sims), strict=True))
    write(
        flags.FLAGS.out_dir,
        num,
        flags.FLAGS.num_particles,
        flags.FLAGS.seed,
        min_particles=flags.FLAGS.min_particles,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
