"""One's own data of systems of different sizes: 2-D springs of 3 to 10 particles.

  python examples/ragged_springs.py --out_dir=data/ragged_springs      # write the data
  python experiments/train.py --data_dir=data/ragged_springs --dataset=ragged_springs \\
      --workdir=runs/ragged_springs                                     # train on it

Each simulation draws its number of particles uniformly in [--min_particles,
--max_particles] and is simulated with our springs simulator
(:func:`nri_modular.data.physics.simulate`, the settings of the springs dataset: 5000 steps
for train and valid, 10000 for test, a frame every 100 steps: 49 and 99 frames); each size
group of a split is one batched call. The arrays are padded to --max_particles, and the
folder gets, per split (see nri_modular/data/own.py)::

    loc_{split}_NAME.npy    [sims, frames, 2, max]  float32, padded particles 0
    vel_{split}_NAME.npy    [sims, frames, 2, max]  float32, padded particles 0
    edges_{split}_NAME.npy  [sims, max, max]        int8 springs 0/1 (padded pairs 0)
    sizes_{split}_NAME.npy  [sims]                  int32 particles of each simulation

Split ``s`` draws its sizes and then its systems (size groups in increasing size) from
``np.random.default_rng([seed, id])``, ``id = {train: 0, valid: 1, test: 2}[s]``. The
folder must hold nothing we did not write (:func:`nri_modular.data.files.check_writable`):
a new or empty one.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from nri_modular import atomic
from nri_modular.data import files, physics

NAME = "ragged_springs"
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}
STEPS = {"train": 5000, "valid": 5000, "test": 10000}  # the springs dataset's: 49 / 99 frames
SAMPLE_FREQ = 100


def _define_flags() -> None:
    """The command's flags (defined only when run: tests import this module)."""
    flags.DEFINE_string("out_dir", "data/ragged_springs", "Folder of the dataset (new or empty).")
    flags.DEFINE_string("name", NAME, "The dataset's NAME (its files' suffix).")
    flags.DEFINE_list("num_sims", ["2000", "200", "200"], "train,valid,test simulations.")
    flags.DEFINE_integer("min_particles", 3, "Fewest particles of a system (>= 2).")
    flags.DEFINE_integer("max_particles", 10, "Most particles of a system (the padded n).")
    flags.DEFINE_integer("seed", 0, "Seed of the data.")


def simulate_split(
    rng: np.random.Generator,
    sims: int,
    min_particles: int,
    max_particles: int,
    steps: int,
    sample_freq: int = SAMPLE_FREQ,
) -> dict[str, np.ndarray]:
    """One split: sizes drawn uniformly in ``[min_particles, max_particles]``, each size
    group simulated in one call, everything padded to ``max_particles``.

    Returns:
      ``{"loc", "vel": float32 [sims, frames, 2, max], "edges": int8 [sims, max, max],
      "sizes": int32 [sims]}`` (padding 0).
    """
    sizes = rng.integers(min_particles, max_particles + 1, size=sims).astype(np.int32)
    frames = physics.num_frames(steps, sample_freq)
    loc = np.zeros((sims, frames, 2, max_particles), np.float32)
    vel = np.zeros_like(loc)
    edges = np.zeros((sims, max_particles, max_particles), np.int8)
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        group = physics.simulate("springs", rng, len(idx), int(size), steps, sample_freq)
        loc[idx, ..., :size], vel[idx, ..., :size] = group[0], group[1]
        edges[idx, :size, :size] = group[2].astype(np.int8)
    return {"loc": loc, "vel": vel, "edges": edges, "sizes": sizes}


def write(
    out_dir: str,
    num_sims: dict,
    seed: int,
    min_particles: int = 3,
    max_particles: int = 10,
    name: str = NAME,
    steps: dict | None = None,
) -> dict[str, str]:
    """Writes the dataset ``name`` into ``out_dir`` (see the module docstring).

    Args:
      out_dir: a new or empty folder (or one holding only our generated datasets).
      num_sims: ``{split: sims}`` (each > 0).
      seed: the data's seed.
      min_particles, max_particles: the sizes' range (``2 <= min <= max``).
      name: the files' NAME.
      steps: ``{split: integration steps}``; default the springs dataset's
        (:data:`STEPS`).

    Returns:
      ``{file name: path}`` of the files written.
    """
    from nri_modular.data import own

    own.check_name(name)
    if not 2 <= min_particles <= max_particles:
        raise ValueError(
            f"need 2 <= min_particles <= max_particles, got {min_particles}, {max_particles}"
        )
    steps = dict(STEPS if steps is None else steps)
    for split, sims in num_sims.items():
        if split not in SPLIT_IDS or not isinstance(sims, int | np.integer) or sims <= 0:
            raise ValueError(f"num_sims must map train/valid/test to positive counts: {num_sims}")
        physics.num_frames(steps[split], SAMPLE_FREQ)
    files.check_writable(out_dir)  # raises when the folder holds anything we did not write
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, sims in num_sims.items():
        rng = np.random.default_rng([seed, SPLIT_IDS[split]])
        arrays = simulate_split(rng, sims, min_particles, max_particles, steps[split])
        for kind, array in arrays.items():
            file = own.file_name(kind, split, name)
            written[file] = os.path.join(out_dir, file)
            atomic.save_npy_atomic(written[file], array)
        counts = np.bincount(arrays["sizes"], minlength=max_particles + 1)[min_particles:]
        print(
            f"{split}: {sims} springs systems of {min_particles}..{max_particles} particles "
            f"(per size: {counts.tolist()}), {arrays['loc'].shape[1]} frames"
        )
    return written


def main(argv):
    del argv
    f = flags.FLAGS
    num = dict(zip(("train", "valid", "test"), (int(v) for v in f.num_sims), strict=True))
    write(f.out_dir, num, f.seed, f.min_particles, f.max_particles, f.name)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
