"""nri_modular: neural relational inference as modular meta-learning, in JAX.

An ablation is ``import nri_modular as nm`` plus a few calls::

  data = nm.ensure_dataset("data", "springs", 2000, 100, 1000, seed=42)
  bank = nm.ModuleBank(num_modules=2, edge_features=(64,) * 3, node_features=(64,) * 3)
  step = jax.jit(nm.make_bouncegrad_step(bank, optax.adam(2e-3), nm.BounceGradConfig(), 5))

The package imports lazily (PEP 562): ``import nri_modular`` loads nothing else, and
``nm.ModuleBank`` imports :mod:`nri_modular.modules` on first use. Each public name below
is found in the one module that defines it; every submodule (``nm.gnn``, ``nm.hidden_node``,
...) is reachable as an attribute too.
"""

from __future__ import annotations

import importlib
import importlib.util

# Public name -> the module that defines it.
_EXPORTS = {
    "annealing": (
        "AnnealDiagnostics",
        "AnnealState",
        "adapt_temperature",
        "anneal",
        "anneal_step",
        "geometric_temperatures",
        "metropolis",
        "target_worse_acceptance",
    ),
    "bouncegrad": (
        "Batch",
        "BounceGradConfig",
        "TrainState",
        "init_train_state",
        "make_bouncegrad_step",
    ),
    "checkpoints": ("load_model", "save_model"),
    "config": ("Config",),
    "data": (
        "Dataset",
        "Normalization",
        "Split",
        "ensure_dataset",
        "generate_dataset",
        "load_dataset",
        "simulate",
        "task_batches",
    ),
    "evaluate": ("SearchConfig", "prediction_mse", "search_structures"),
    "gnn": (
        "graph_step",
        "incoming_config_losses",
        "message_passing_step",
        "rollout",
        "rollout_loss",
    ),
    "graph": ("edge_index", "graphs_to_tasks", "tasks_to_graphs"),
    "metrics": ("edge_accuracy", "module_mapping", "mse_per_step"),
    "modules": ("ModuleBank",),
    "proposal_net": ("ProposalNet", "make_proposal_network"),
    "structure": (
        "exact_best_structure",
        "make_move",
        "propose_blocked_gibbs",
        "propose_exact_local",
        "propose_uniform",
        "random_structures",
    ),
    "train": ("train_and_evaluate",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Old public names: a clear error naming the new one.
_RENAMED = {
    "make_proposal": "make_move (the annealing move kinds; the learned proposal network "
    "is nri_modular.proposal_net)",
    "proposal": "proposal_net",
}

__all__ = sorted([*_MODULE_OF, "hidden_node"])


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"nri_modular.{_MODULE_OF[name]}"), name)
    elif name in _RENAMED:
        raise AttributeError(f"nri_modular.{name} was renamed: use nri_modular.{_RENAMED[name]}")
    elif not name.startswith("_") and importlib.util.find_spec(f"nri_modular.{name}"):
        value = importlib.import_module(f"nri_modular.{name}")
    else:
        raise AttributeError(f"module 'nri_modular' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
