"""Data pipeline: JAX simulators of the springs / charged / Kuramoto systems and the dataset I/O.

``physics`` integrates the particle systems of Kipf et al. (2018) (see
``shared/DATA_SPEC.md``), ``kuramoto`` the Kuramoto oscillators of NRI's benchmark grid;
``datasets`` generates, reads and holds the Kipf-layout datasets (``files``: their names on
disk, safe reading, what a folder holds and whether we may write there; ``normalization``:
states to [-1, 1] with the training ranges, per channel);
``own`` reads one's own named datasets (any dimension, optional labels);
``batching`` makes the batches of task indices (training epochs, padded evaluation).
"""

from nri_modular.data.batching import check_block_local, eval_batches, task_batches
from nri_modular.data.datasets import (
    NUM_RELATION_TYPES,
    Dataset,
    Split,
    ensure_dataset,
    gather,
    generate_dataset,
    load_dataset,
)
from nri_modular.data.files import SPLITS, SYSTEMS, file_name
from nri_modular.data.normalization import Normalization
from nri_modular.data.physics import (
    SystemConfig,
    compile_simulate,
    integrate,
    integrate_batch,
    num_frames,
    sample_initial_states,
    simulate,
    system_config,
)

__all__ = [
    "NUM_RELATION_TYPES",
    "SPLITS",
    "SYSTEMS",
    "Dataset",
    "Normalization",
    "Split",
    "SystemConfig",
    "check_block_local",
    "compile_simulate",
    "ensure_dataset",
    "eval_batches",
    "file_name",
    "gather",
    "generate_dataset",
    "integrate",
    "integrate_batch",
    "load_dataset",
    "num_frames",
    "sample_initial_states",
    "simulate",
    "system_config",
    "task_batches",
]
