"""Data pipeline: JAX simulators of the springs / charged systems and the dataset I/O.

``physics`` integrates the systems of Kipf et al. (2018) (see ``shared/DATA_SPEC.md``);
``datasets`` writes and reads the Kipf ``.npy`` layout, normalises states to [-1, 1]
and batches tasks.
"""

from nri_modular.data.physics import (
    SYSTEMS,
    SystemConfig,
    integrate,
    integrate_batch,
    num_frames,
    sample_initial_states,
    simulate,
    system_config,
)

__all__ = [
    "SYSTEMS",
    "SystemConfig",
    "integrate",
    "integrate_batch",
    "num_frames",
    "sample_initial_states",
    "simulate",
    "system_config",
]
