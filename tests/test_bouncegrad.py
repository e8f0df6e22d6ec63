"""BounceGrad on tiny springs problems: finite steps, falling loss, structure recovery."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import teacher_problem

from nri_modular import bouncegrad, evaluate, gnn, graph, metrics
from nri_modular.data import physics
from nri_modular.modules import ModuleBank

N = 4


@pytest.fixture(scope="module")
def springs():
    """48 normalised springs tasks of 4 particles, 25 frames."""
    loc, vel, edges = physics.simulate("springs", 0, 48, num_particles=N, num_steps=2500)
    loc, vel = loc / 5.0, vel / 5.0 * 5.0  # roughly unit scale
    states = np.concatenate([loc, vel], axis=2).transpose(0, 1, 3, 2).astype(np.float32)
    labels = graph.matrix_to_edges(edges).astype(np.int32)
    return states, labels


def _setup(num_tasks, sa_steps, proposal="uniform", lr=3e-3):
    bank = ModuleBank(2, (32, 32), (32, 32))
    opt = optax.adam(lr)
    cfg = bouncegrad.BounceGradConfig(p=5, sa_steps=sa_steps, proposal=proposal, uniform_mix=0.2)
    state = bouncegrad.init_train_state(jax.random.PRNGKey(0), bank, opt, num_tasks, N)
    step = jax.jit(bouncegrad.make_bouncegrad_step(bank, opt, cfg, N))
    return bank, state, step


def _batch(springs, ids):
    states, labels = springs
    return bouncegrad.Batch(jnp.asarray(ids), jnp.asarray(states[ids]), jnp.asarray(labels[ids]))


@pytest.mark.parametrize("proposal", ["uniform", "exact_local"])
def test_one_step_is_finite_and_repeated_steps_lower_the_loss(springs, proposal):
    _, state, step = _setup(48, sa_steps=1, proposal=proposal)
    batch = _batch(springs, np.arange(16))
    state1, metrics = step(state, batch)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state1.params))
    assert np.isfinite(float(metrics["loss"]))
    assert int(state1.step) == 1
    # The batch's structures and energies were written back; other tasks untouched.
    assert np.isfinite(np.asarray(state1.energies[:16])).all()
    assert np.isinf(np.asarray(state1.energies[16:])).all()
    np.testing.assert_array_equal(
        np.asarray(state1.structures[16:]), np.asarray(state.structures[16:])
    )
    # The written energies are the losses of the accepted structures under the weights the
    # step started from (the gradient pass's per-task losses); the loss is their mean.
    bank = ModuleBank(2, (32, 32), (32, 32))
    accepted = gnn.rollout_loss(bank, state.params, batch.states, state1.structures[:16], 5)
    np.testing.assert_allclose(state1.energies[:16], accepted, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(accepted.mean()), rtol=1e-5)
    s = state1
    for _ in range(15):
        s, m = step(s, batch)
    assert float(m["loss"]) < 0.5 * float(metrics["loss"])


@pytest.mark.parametrize("proposal", ["uniform", "exact_local"])
def test_cold_step_accepts_no_worse_structure_and_its_gradient_step_lowers_the_loss(
    springs, proposal
):
    """At temperature ~0 the annealing of a step only accepts structures no worse than the
    start (energies refreshed with the current weights); some tasks move, each to a strictly
    lower energy; the step's gradient update then lowers the batch's loss (measured: to
    0.35x for both proposals)."""
    bank, state, step = _setup(48, sa_steps=1, proposal=proposal)
    state = state.replace(temperature=jnp.float32(1e-30))
    batch = _batch(springs, np.arange(16))
    start = np.asarray(gnn.rollout_loss(bank, state.params, batch.states, state.structures[:16], 5))
    state1, metrics = step(state, batch)
    energy = np.asarray(state1.energies[:16])  # accepted structures, the starting weights
    assert np.all(energy <= start * (1 + 1e-6))
    moved = (np.asarray(state1.structures[:16]) != np.asarray(state.structures[:16])).any(1)
    assert moved.mean() >= 0.25
    assert np.all(energy[moved] < start[moved])
    assert float(metrics["worse_accept_rate"]) == 0.0 or np.isnan(metrics["worse_accept_rate"])
    after = gnn.rollout_loss(bank, state1.params, batch.states, state1.structures[:16], 5)
    assert float(after.mean()) < 0.7 * float(metrics["loss"])


@pytest.mark.parametrize(
    "proposal, steps, min_accuracy, min_exact_fraction",
    [("uniform", 400, 0.85, 0.3), ("exact_local", 50, 1.0, 1.0)],
)
def test_sa_recovers_planted_structure_with_true_modules(
    proposal, steps, min_accuracy, min_exact_fraction
):
    """Annealing with the true (teacher's) modules from random structures finds the planted
    ones: the exact local moves always (the one-step loss decomposes over nodes); uniform
    single-edge moves on most edges (this random-teacher landscape is rugged: measured 0.89
    after 400 steps, 0.93 after 1,000)."""
    bank, teacher, planted, states = teacher_problem(32, 12, N)
    cfg = evaluate.SearchConfig(
        num_steps=steps,
        t_start=3e-3,
        t_end=1e-6,
        p=5,
        batch_size=16,
        proposal=proposal,
        uniform_mix=0.5,
    )
    random_energy = np.asarray(
        gnn.rollout_loss(bank, teacher, jnp.asarray(states), jnp.asarray(1 - planted), 5)
    )
    found, energies = evaluate.search_structures(bank, teacher, states, jax.random.PRNGKey(3), cfg)
    assert metrics.edge_accuracy(found, planted, np.array([0, 1])) >= min_accuracy
    assert (energies < 1e-9).mean() >= min_exact_fraction  # the planted structure: zero loss
    assert energies.mean() < 0.2 * random_energy.mean()


def test_state_shapes(springs):
    _, state, _ = _setup(48, sa_steps=1)
    chex.assert_shape(state.structures, (48, N * (N - 1)))
    chex.assert_shape(state.energies, (48,))
    assert state.structures.dtype == jnp.int32
    # Fresh state: random structures over both modules (one per task, not one shared),
    # unknown energies, step 0, a small positive temperature (the paper's ~exp(-9.8)).
    structures = np.asarray(state.structures)
    assert set(np.unique(structures)) == {0, 1}
    assert 0.35 < structures.mean() < 0.65
    assert len({tuple(row) for row in structures}) >= 40
    assert np.isinf(np.asarray(state.energies)).all()
    assert int(state.step) == 0
    assert 1e-5 < float(state.temperature) < 1e-4


def test_block_local_task_gather_and_scatter_equal_global_indexing():
    from nri_modular.data import batching

    table = jnp.arange(24 * 3).reshape(24, 3)
    for ids in batching.task_batches(24, 8, seed=3, epoch=1, shards=4):
        ids = jnp.asarray(ids)
        np.testing.assert_array_equal(
            bouncegrad.gather_tasks(table, ids, 4), bouncegrad.gather_tasks(table, ids)
        )
        values = -jnp.arange(8 * 3).reshape(8, 3)
        np.testing.assert_array_equal(
            bouncegrad.scatter_tasks(table, ids, values, 4), table.at[ids].set(values)
        )
    with pytest.raises(ValueError, match="task_shards=5 must divide the 24 tasks"):
        bouncegrad.gather_tasks(table, jnp.zeros(5, jnp.int32), 5)


def test_meta_test_anneals_the_training_loss():
    """A run trained with the Huber loss searches with the Huber energy (rollout and exact
    scores); an MSE run with the squared error."""
    from nri_modular.config import Config

    assert evaluate.search_config(Config(loss="huber", huber_delta=0.02)).huber_delta == 0.02
    assert evaluate.search_config(Config(loss="mse")).huber_delta is None
    bank, teacher, planted, states = teacher_problem(32, 12, N)
    noisy = states + np.random.default_rng(0).normal(0, 0.05, states.shape).astype(np.float32)
    energies = {}
    for delta in (None, 0.01):
        cfg = evaluate.SearchConfig(
            num_steps=5, p=5, batch_size=16, proposal="exact_local", huber_delta=delta
        )
        found, energies[delta] = evaluate.search_structures(
            bank, teacher, noisy, jax.random.PRNGKey(3), cfg
        )
        own = gnn.rollout_loss(bank, teacher, jnp.asarray(noisy), found, 5, huber_delta=delta)
        np.testing.assert_allclose(energies[delta], np.asarray(own), rtol=1e-5)
    assert np.all(energies[0.01] < 0.9 * energies[None])


def test_frame_split_anneals_on_the_first_frames_and_steps_on_the_rest(springs):
    """anneal_frames = A (the paper's per-task split): the annealing (energies, exact
    scores) reads frames [0, A) only and the gradient step frames [A, T) only."""
    states, labels = springs
    split = 12  # of 25 frames, p = 5
    bank = ModuleBank(2, (32, 32), (32, 32))
    opt = optax.adam(3e-3)

    def make(anneal_frames, sa_steps):
        cfg = bouncegrad.BounceGradConfig(
            p=5,
            sa_steps=sa_steps,
            proposal="exact_local",
            uniform_mix=0.2,
            anneal_frames=anneal_frames,
        )
        return jax.jit(bouncegrad.make_bouncegrad_step(bank, opt, cfg, N))

    state = bouncegrad.init_train_state(jax.random.PRNGKey(0), bank, opt, 48, N)
    ids = np.arange(8)
    batch = _batch(springs, ids)
    # No annealing: the step equals a plain step on the gradient frames alone ...
    split_state, split_metrics = make(split, 0)(state, batch)
    tail = bouncegrad.Batch(batch.task_ids, batch.states[:, split:], batch.labels)
    tail_state, tail_metrics = make(0, 0)(state, tail)
    chex.assert_trees_all_close(split_state.params, tail_state.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(split_metrics["loss"], tail_metrics["loss"], rtol=1e-6)
    # ... and stores the annealing frames' energy of the kept structure.
    head = gnn.rollout_loss(bank, state.params, batch.states[:, :split], state.structures[ids], 5)
    np.testing.assert_allclose(split_state.energies[ids], head, rtol=1e-5)
    # With annealing, frames after the split never change the structures found.
    changed = batch.states.at[:, split:].add(1.0)
    a, _ = make(split, 3)(state, batch)
    b, _ = make(split, 3)(state, bouncegrad.Batch(batch.task_ids, changed, batch.labels))
    np.testing.assert_array_equal(a.structures, b.structures)
    leaves = zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    assert not all(np.allclose(x, y) for x, y in leaves)  # the gradient frames did change
    with pytest.raises(ValueError, match="each part needs more than p=5 frames"):
        make(20, 1)(state, batch)
