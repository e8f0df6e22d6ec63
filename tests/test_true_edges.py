"""The one trainer on the true structures: it fits the dynamics, trains the proposal network
toward the true relations, and refuses settings it cannot honour."""

import re

import jax
import numpy as np
import optax
import pytest

from nri_modular import gnn, graph, proposal_net
from nri_modular.baselines import true_edges
from nri_modular.data import Split, physics
from nri_modular.modules import ModuleBank

N = 3


@pytest.fixture(scope="module")
def split():
    """16 springs tasks of 3 particles, 20 frames, roughly unit scale."""
    loc, vel, edges = physics.simulate("springs", 1, 16, num_particles=N, num_steps=2000)
    states = np.concatenate([loc / 5.0, vel], axis=2).transpose(0, 1, 3, 2).astype(np.float32)
    return Split(states, graph.matrix_to_edges(edges).astype(np.int32))


def _loss(bank, params, split):
    return float(gnn.rollout_loss(bank, params, split.states, split.labels, 5).mean())


def test_training_fits_the_true_structures_and_the_proposal(split):
    bank = ModuleBank(2, (16, 16), (16, 16))
    init_fn, apply_fn = proposal_net.make_proposal_network(2, N, hidden=16)
    proposal = true_edges.ProposalTraining(
        apply_fn, init_fn(jax.random.PRNGKey(1), split.states[:1]), optax.adam(1e-2)
    )
    lines = []
    params, pparams = true_edges.train_true_edges(
        bank,
        optax.adam(1e-2),
        split,
        num_steps=40,
        batch_size=8,
        p=5,
        seed=0,
        proposal=proposal,
        log=lines.append,
        log_every=10,
    )
    assert len(lines) == 4 and lines[-1].startswith("train step 40/40 | loss ")
    assert _loss(bank, params, split) < 0.5 * _loss(bank, bank.init(jax.random.PRNGKey(0)), split)
    xent = [float(re.search(r"proposal xent ([\d.]+)", line).group(1)) for line in lines]
    assert xent[-1] < 0.8 * xent[0]
    assert jax.tree.leaves(pparams)[0].shape == jax.tree.leaves(proposal.params)[0].shape


def test_without_a_proposal_only_modules_are_trained(split):
    bank = ModuleBank(2, (8,), (8,))
    params, pparams = true_edges.train_true_edges(
        bank, optax.adam(1e-3), split, num_steps=2, batch_size=16, p=5, seed=0
    )
    assert pparams is None
    assert jax.tree.structure(params) == jax.tree.structure(bank.init(jax.random.PRNGKey(0)))


def test_bad_settings_fail_clearly(split):
    bank = ModuleBank(2, (8,), (8,))
    kwargs = dict(num_steps=1, batch_size=4, p=5, seed=0)
    three_types = Split(split.states, np.where(split.labels == 1, 2, 0).astype(np.int32))
    with pytest.raises(ValueError, match="need num_modules > 2, got 2"):
        true_edges.train_true_edges(bank, optax.adam(1e-3), three_types, **kwargs)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 16\], got 32"):
        true_edges.train_true_edges(bank, optax.adam(1e-3), split, **{**kwargs, "batch_size": 32})
    with pytest.raises(ValueError, match="num_steps must be positive"):
        true_edges.train_true_edges(bank, optax.adam(1e-3), split, **{**kwargs, "num_steps": 0})
