r"""Generates a springs / charged dataset in Kipf et al.'s ``.npy`` layout.

  python -m nri_modular.data.generate --system=springs --num_train=50000 \
      --num_valid=10000 --num_test=10000 --seed=42 --out_dir=data/springs
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags, logging

from nri_modular.data import datasets

_SYSTEM = flags.DEFINE_enum("system", "springs", list(datasets.SYSTEMS), "System to simulate.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory for the .npy files.", required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50000, "Training simulations.")
_NUM_VALID = flags.DEFINE_integer("num_valid", 10000, "Validation simulations.")
_NUM_TEST = flags.DEFINE_integer("num_test", 10000, "Test simulations.")
_SEED = flags.DEFINE_integer("seed", 42, "Random seed (splits use independent keys).")
_NUM_PARTICLES = flags.DEFINE_integer("num_particles", 5, "Particles per simulation.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 5000, "Steps of train/valid (49 frames).")
_TEST_STEPS = flags.DEFINE_integer("test_steps", 10000, "Steps of test (99 frames).")
_SAMPLE_FREQ = flags.DEFINE_integer("sample_freq", 100, "Integration steps between frames.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "On-disk float dtype.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 4096, "Simulations integrated at once.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace our own dataset of this system and size in --out_dir."
)


class _Progress:
    """Logs one line per chunk: sims done and the split's rate."""

    def __init__(self):
        self._start = {}

    def __call__(self, split: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start = self._start.setdefault(split, now)
        if done == 0:
            self._start[split] = now
            logging.info("%s: simulating %d sims", split, total)
            return
        rate = done / max(now - start, 1e-9)
        logging.info("%s: %d/%d sims, %.0f sims/s (incl. compile)", split, done, total, rate)


def main(argv):
    del argv
    start = time.perf_counter()
    progress = _Progress()
    written = datasets.generate_dataset(
        _SYSTEM.value,
        _OUT_DIR.value,
        _NUM_TRAIN.value,
        _NUM_VALID.value,
        _NUM_TEST.value,
        _SEED.value,
        _NUM_PARTICLES.value,
        train_steps=_TRAIN_STEPS.value,
        test_steps=_TEST_STEPS.value,
        sample_freq=_SAMPLE_FREQ.value,
        dtype=np.dtype(_DTYPE.value),
        chunk_size=_CHUNK_SIZE.value,
        progress=progress,
        overwrite=_OVERWRITE.value,
    )
    for path in written.values():
        logging.info("wrote %s", path)
    logging.info("done in %.1f s", time.perf_counter() - start)


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
