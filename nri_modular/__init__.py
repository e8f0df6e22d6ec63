"""nri_modular: neural relational inference as modular meta-learning, in JAX.

An ablation is ``import nri_modular as nm`` plus a few calls::

  data = nm.ensure_dataset("data", "springs", 2000, 100, 1000, seed=42)
  bank = nm.ModuleBank(num_modules=2, edge_features=(64,) * 3, node_features=(64,) * 3)
  step = jax.jit(nm.make_bouncegrad_step(bank, optax.adam(2e-3), nm.BounceGradConfig(), 5))
"""

from nri_modular import hidden_node
from nri_modular.annealing import (
    AnnealDiagnostics,
    AnnealState,
    adapt_temperature,
    anneal,
    anneal_step,
    geometric_temperatures,
    metropolis,
    target_worse_acceptance,
)
from nri_modular.bouncegrad import (
    Batch,
    BounceGradConfig,
    TrainState,
    init_train_state,
    make_bouncegrad_step,
)
from nri_modular.config import Config
from nri_modular.data import (
    Dataset,
    Normalization,
    Split,
    ensure_dataset,
    generate_dataset,
    load_dataset,
    simulate,
    task_batches,
)
from nri_modular.evaluate import (
    SearchConfig,
    edge_accuracy,
    module_mapping,
    prediction_mse,
    search_structures,
)
from nri_modular.gnn import (
    graph_step,
    incoming_config_losses,
    message_passing_step,
    rollout,
    rollout_loss,
)
from nri_modular.graph import edge_index, graphs_to_tasks, tasks_to_graphs
from nri_modular.modules import ModuleBank
from nri_modular.proposal_net import ProposalNet, make_proposal_network
from nri_modular.structure import (
    exact_best_structure,
    make_move,
    propose_blocked_gibbs,
    propose_exact_local,
    propose_uniform,
    random_structures,
)
from nri_modular.train import train_and_evaluate

__all__ = [
    "AnnealDiagnostics",
    "AnnealState",
    "Batch",
    "BounceGradConfig",
    "Config",
    "Dataset",
    "ModuleBank",
    "ProposalNet",
    "Normalization",
    "SearchConfig",
    "Split",
    "TrainState",
    "adapt_temperature",
    "anneal",
    "anneal_step",
    "edge_accuracy",
    "edge_index",
    "ensure_dataset",
    "exact_best_structure",
    "generate_dataset",
    "geometric_temperatures",
    "hidden_node",
    "graph_step",
    "graphs_to_tasks",
    "incoming_config_losses",
    "init_train_state",
    "load_dataset",
    "make_bouncegrad_step",
    "make_move",
    "make_proposal_network",
    "message_passing_step",
    "metropolis",
    "module_mapping",
    "prediction_mse",
    "propose_blocked_gibbs",
    "propose_exact_local",
    "propose_uniform",
    "random_structures",
    "rollout",
    "rollout_loss",
    "search_structures",
    "simulate",
    "target_worse_acceptance",
    "task_batches",
    "tasks_to_graphs",
    "train_and_evaluate",
]
