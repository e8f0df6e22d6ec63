"""The one trainer on the true structures: it fits the dynamics, trains the proposal network
toward the true relations, and refuses settings it cannot honour."""

import re

import jax
import numpy as np
import optax
import pytest

from nri_modular import bouncegrad, gnn, graph, proposal_net
from nri_modular.baselines import true_edges
from nri_modular.config import Config
from nri_modular.data import Split, physics, task_batches
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


def _run_config(**overrides):
    """A run's config for the 16-task split: Huber loss, cosine step size, a module spread."""
    settings = dict(
        num_particles=N,
        num_train=16,
        batch_size=8,
        num_epochs=2,
        p=5,
        edge_hidden=(8,),
        node_hidden=(8,),
        module_init_spread=0.5,
        learning_rate=1e-2,
        final_learning_rate=1e-3,
        loss="huber",
        huber_delta=0.05,
        edge_compute="all",
        # The trainer never anneals, so the run's move (here one that needs a proposal
        # network, which is not given) is never made.
        proposal="blocked_gibbs",
    )
    return Config(**{**settings, **overrides})


def _by_hand(split, loss, schedule, num_steps=4):
    """The modules trained with the run's bank and steps, the loss and schedule given."""
    config = _run_config()
    bank = ModuleBank(2, (8,), (8,), init_spread=0.5)
    step_config = bouncegrad.BounceGradConfig(p=5, loss=loss, huber_delta=0.05, edge_compute="all")
    params, _ = true_edges.train_true_edges(
        bank,
        optax.adam(schedule),
        split,
        num_steps=num_steps,
        batch_size=config.batch_size,
        p=config.p,
        seed=config.seed,
        step_config=step_config,
    )
    return params


def test_a_runs_config_gives_its_loss_schedule_and_bank(split):
    """train_true_edges_from_config trains with the run's loss (Huber, its delta), its
    step-size schedule (cosine to final_learning_rate over the run's steps) and its bank
    (module_init_spread): bit for bit the hand-built trainer with those settings, and not
    the MSE or constant-step one."""
    config = _run_config()
    lines = []
    params, pparams = true_edges.train_true_edges_from_config(
        config, split, log=lines.append, log_every=1
    )
    assert pparams is None and len(lines) == 4  # the run's num_epochs * (16 // 8) steps
    # The first step's loss is the Huber rollout loss of the initial modules on batch 0.
    bank = ModuleBank(2, (8,), (8,), init_spread=0.5)
    initial = bank.init(jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
    ids = task_batches(16, 8, config.seed, 0)[0]
    args = (bank, initial, split.states[ids], split.labels[ids], 5)
    huber = float(gnn.rollout_loss(*args, huber_delta=0.05, edge_compute="all").mean())
    mse = float(gnn.rollout_loss(*args, edge_compute="all").mean())
    logged = float(re.search(r"loss ([\d.e+-]+) ", lines[0]).group(1))
    assert logged == pytest.approx(huber, rel=1e-3) and logged != pytest.approx(mse, rel=0.05)

    cosine = optax.cosine_decay_schedule(1e-2, 4, alpha=1e-3 / 1e-2)
    jax.tree.map(np.testing.assert_array_equal, params, _by_hand(split, "huber", cosine))
    for other in (_by_hand(split, "mse", cosine), _by_hand(split, "huber", 1e-2)):
        pairs = zip(jax.tree.leaves(params), jax.tree.leaves(other), strict=True)
        assert not all(np.array_equal(a, b) for a, b in pairs)


def test_a_runs_config_must_describe_the_split(split):
    with pytest.raises(ValueError, match="the training split has 16 tasks, num_train is 32"):
        true_edges.train_true_edges_from_config(_run_config(num_train=32), split)
