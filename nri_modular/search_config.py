"""Meta-test structure search settings (:class:`SearchConfig`), the defaults' one home.

Its own module, below both :mod:`nri_modular.config` (whose meta-test defaults derive from
it) and :mod:`nri_modular.evaluate` (which searches with it, and builds a run's with
:func:`nri_modular.evaluate.search_config`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Meta-test structure search settings.

    Attributes:
      num_steps: annealing steps per task.
      t_start, t_end: geometric temperature schedule.
      p: rollout length of the energy (as in training).
      batch_size: tasks annealed together (static shape; the last batch is padded).
      proposal, uniform_mix: the moves of
        :func:`nri_modular.structure_priors.make_search_move`. Search starts
        (:func:`nri_modular.structure_priors.search_initial_structure`) from the exact
        one-step optimum (exact kinds), else from the proposal network's argmax when a
        network is given, else from a random structure.
      symmetric_structure, node_types: structure priors, through the same two functions
        (with few node-type structures the start is the exact optimum of the energy over
        all of them).
      huber_delta: the energy's penalty (:func:`nri_modular.gnn.penalty`): ``None``
        squared error, else Huber; a run's own (:func:`search_config`) is its training
        loss, so meta-test anneals the energy that training annealed.
    """

    num_steps: int = 200
    t_start: float = 1e-5
    t_end: float = 1e-8
    p: int = 10
    batch_size: int = 250
    proposal: str = "uniform"
    uniform_mix: float = 0.0
    exact_stride: int = 1
    block_rows: int = 512
    edge_compute: str = "blocked"
    groups: int = 1
    symmetric_structure: bool = False
    node_types: int = 0
    huber_delta: float | None = None
