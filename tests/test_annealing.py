"""Simulated annealing and proposals on planted problems (no neural network needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import annealing, graph
from nri_modular import structure as structure_lib

N, K = 5, 2
E = N * (N - 1)


def _planted(b, seed=0, k=K):
    return structure_lib.random_structures(jax.random.PRNGKey(seed), b, N, k)


def _hamming_energy(target):
    return lambda s: (s != target).mean(axis=-1).astype(jnp.float32)


def test_metropolis_never_accepts_non_finite_energy():
    energy = jnp.array([1.0, 1.0, jnp.inf, 1.0])
    proposed = jnp.array([jnp.nan, jnp.inf, jnp.nan, 0.5])
    for seed in range(5):
        accept, worse = annealing.metropolis(jax.random.PRNGKey(seed), energy, proposed, 1e9)
        np.testing.assert_array_equal(np.asarray(accept), [False, False, False, True])
        assert not np.asarray(worse).any()


def test_metropolis_worse_moves_follow_temperature():
    n = 20000
    energy = jnp.zeros(n)
    proposed = jnp.full(n, 1.0)
    accept, worse = annealing.metropolis(jax.random.PRNGKey(0), energy, proposed, 1.0)
    assert np.asarray(worse).all()
    assert abs(float(accept.mean()) - np.exp(-1.0)) < 0.02
    accept, _ = annealing.metropolis(jax.random.PRNGKey(0), energy, proposed, 1e-6)
    assert not np.asarray(accept).any()


def test_uniform_proposal_changes_exactly_one_edge():
    s = _planted(64)
    new = structure_lib.propose_uniform(jax.random.PRNGKey(1), s, 3)
    np.testing.assert_array_equal(np.asarray((new != s).sum(axis=1)), 1)
    assert int(new.max()) < 3 and int(new.min()) >= 0


def test_blocked_gibbs_changes_only_edges_into_the_chosen_node():
    s = _planted(200, k=3)
    logits = jax.random.normal(jax.random.PRNGKey(2), (200, E, 3)) * 5
    receivers, _ = graph.edge_index(N)
    for seed in range(5):
        new = np.asarray(
            structure_lib.propose_blocked_gibbs(jax.random.PRNGKey(seed), s, logits, N)
        )
        changed = new != np.asarray(s)
        for b in range(200):
            nodes = set(receivers[changed[b]].tolist())
            assert len(nodes) <= 1
        # It moves: most tasks resample some edge to another module (all of a node's 4
        # incoming edges keep their module only by chance).
        assert changed.any(axis=1).mean() > 0.5
    # The resampled edges follow the logits: with near-deterministic logits, every edge
    # into the chosen node takes its most likely module, and no other edge changes.
    best = np.random.RandomState(3).randint(0, 3, size=(200, E))
    peaked = jnp.asarray(50.0 * np.eye(3, dtype=np.float32)[best])  # others: p ~ e^-50
    for seed in range(3):
        new = np.asarray(
            structure_lib.propose_blocked_gibbs(jax.random.PRNGKey(seed), s, peaked, N)
        )
        k_node = jax.random.split(jax.random.PRNGKey(seed))[0]  # the move's node key
        node = np.asarray(jax.random.randint(k_node, (200,), 0, N))
        into = receivers[None, :] == node[:, None]
        np.testing.assert_array_equal(new[into], best[into])
        np.testing.assert_array_equal(new[~into], np.asarray(s)[~into])


def test_exact_local_move_takes_the_best_setting():
    configs = structure_lib.incoming_configs(N, K)
    assert configs.shape == (K ** (N - 1), N - 1)
    b = 8
    # Best settings other than setting 0 (all edges module 0, the start): every move changes
    # the chosen node's edges.
    best = np.random.RandomState(0).randint(1, len(configs), size=(b, N))
    scores = np.ones((b, N, len(configs)), np.float32)
    scores[np.arange(b)[:, None], np.arange(N)[None, :], best] = 0.0
    s = jnp.zeros((b, E), jnp.int32)
    new = np.asarray(structure_lib.propose_exact_local(jax.random.PRNGKey(0), s, scores, N, K))
    full = np.asarray(structure_lib.exact_best_structure(jnp.asarray(scores), N, K))
    np.testing.assert_array_equal(full.reshape(b, N, N - 1), configs[best])
    changed_nodes = (new.reshape(b, N, N - 1) != 0).any(-1)
    np.testing.assert_array_equal(changed_nodes.sum(axis=1), 1)  # one node moved per task
    for i in range(b):
        for node in np.flatnonzero(changed_nodes[i]):
            np.testing.assert_array_equal(new.reshape(b, N, N - 1)[i, node], configs[best[i, node]])


def test_exact_sweep_moves_every_node_to_its_best_setting():
    configs = structure_lib.incoming_configs(N, K)
    b = 6
    best = np.random.RandomState(1).randint(0, len(configs), size=(b, N))
    scores = np.ones((b, N, len(configs)), np.float32)
    scores[np.arange(b)[:, None], np.arange(N)[None, :], best] = 0.0
    sweep = structure_lib.make_move("exact_sweep", K, N, uniform_mix=0.0)
    new = np.asarray(sweep(jax.random.PRNGKey(0), jnp.zeros((b, E), jnp.int32), scores))
    np.testing.assert_array_equal(new.reshape(b, N, N - 1), configs[best])


def test_uniform_mix_one_reproduces_uniform_sa():
    s = _planted(32)
    logits = jnp.zeros((32, E, K))
    mixed = structure_lib.make_move("blocked_gibbs", K, N, uniform_mix=1.0)
    key = jax.random.PRNGKey(3)
    k_mix, k_u, _ = jax.random.split(key, 3)
    np.testing.assert_array_equal(
        np.asarray(mixed(key, s, logits)), np.asarray(structure_lib.propose_uniform(k_u, s, K))
    )


def test_unknown_proposal_is_an_error():
    with pytest.raises(ValueError, match="unknown proposal 'magic'"):
        structure_lib.make_move("magic", K, N)


def test_sa_recovers_a_planted_structure_and_lowers_energy():
    target = _planted(16, seed=4)
    energy_fn = _hamming_energy(target)
    init = _planted(16, seed=5)
    state = annealing.AnnealState(init, energy_fn(init), jax.random.PRNGKey(6), jnp.float32(0.1))
    temps = annealing.geometric_temperatures(0.05, 1e-4, 400)
    proposal = structure_lib.make_move("uniform", K, N)
    run = jax.jit(lambda st: annealing.anneal(st, energy_fn, proposal, temps))
    final, diag = run(state)
    assert diag.mean_energy.shape == (400,)
    assert float(diag.mean_energy[-1]) < float(energy_fn(init).mean())
    np.testing.assert_array_equal(np.asarray(final.structure), np.asarray(target))
    assert float(final.energy.max()) == 0.0
    # The chain moved (each task needs at least its Hamming distance in accepted moves)
    # and accepted worse moves while warm, none once cold (1e-4 against steps of 0.05).
    distance = np.asarray((init != target).sum(axis=1))
    assert float(diag.accept_rate.sum()) * 16 >= distance.sum() > 0
    assert float(np.nanmax(np.asarray(diag.worse_accept_rate[:50]))) > 0.1
    assert not np.nansum(np.asarray(diag.worse_accept_rate[-100:]))


def _random_landscape(b, n=3, seed=7):
    """A random energy table over all 2^(n(n-1)) structures of each task (many local
    minima): ``(energy_fn, table [b, 2^E])``."""
    e = n * (n - 1)
    table = jax.random.uniform(jax.random.PRNGKey(seed), (b, K**e))
    weights = K ** jnp.arange(e)

    def energy_fn(s):
        return jnp.take_along_axis(table, (s * weights[None]).sum(-1)[:, None], axis=1)[:, 0]

    return energy_fn, table


def _single_flips(structures: np.ndarray) -> np.ndarray:
    """``[B, E]`` -> ``[B, E, E]``: every structure one edge flip away (K = 2)."""
    e = structures.shape[1]
    flip = np.eye(e, dtype=bool)[None]
    return np.where(flip, 1 - structures[:, None], structures[:, None])


def test_cold_annealing_never_accepts_worse_and_stops_at_a_local_minimum():
    """At temperature ~0 annealing is greedy descent: no worse move is ever accepted, every
    task ends no higher than it started, at a local minimum of single-edge moves (its
    energy the true one); warm annealing accepts worse moves and ends lower on average."""
    n, b = 3, 64
    energy_fn, table = _random_landscape(b, n)
    init = structure_lib.random_structures(jax.random.PRNGKey(8), b, n, K)
    start = annealing.AnnealState(init, energy_fn(init), jax.random.PRNGKey(9), jnp.float32(1))
    proposal = structure_lib.make_move("uniform", K, n)

    def run(temps):
        return jax.jit(lambda st: annealing.anneal(st, energy_fn, proposal, temps))(start)

    cold, diag = run(jnp.full((300,), 1e-9, jnp.float32))
    worse = np.asarray(diag.worse_accept_rate)
    assert np.nanmax(worse) == 0.0 and np.isfinite(worse).any()  # worse moves proposed
    assert float(diag.accept_rate[0]) > 0.2  # and better ones accepted
    assert np.all(np.diff(np.asarray(diag.mean_energy)) <= 1e-7)
    energy = np.asarray(cold.energy)
    assert np.all(energy <= np.asarray(energy_fn(init)))
    assert float(energy.mean()) < 0.5 * float(energy_fn(init).mean())
    np.testing.assert_array_equal(energy, np.asarray(energy_fn(cold.structure)))
    neighbours = jnp.asarray(_single_flips(np.asarray(cold.structure)))
    neighbour_energy = np.asarray(jax.vmap(energy_fn, in_axes=1, out_axes=1)(neighbours))
    assert np.all(neighbour_energy >= energy[:, None])
    # Warm annealing escapes local minima (measured: mean 0.050 against the greedy 0.105;
    # the optimum 0.016).
    warm, diag = run(annealing.geometric_temperatures(0.3, 1e-4, 300))
    assert float(np.nanmax(np.asarray(diag.worse_accept_rate))) > 0.1
    assert float(warm.energy.mean()) < 0.75 * float(energy.mean())
    assert float(warm.energy.mean()) >= float(table.min(axis=1).mean())


def test_temperature_adaptation():
    t = jnp.float32(1.0)
    assert float(annealing.adapt_temperature(t, 0.5, 0.1)) == pytest.approx(1 / 1.1)
    assert float(annealing.adapt_temperature(t, 0.01, 0.1)) == pytest.approx(1.1)
    assert float(annealing.adapt_temperature(t, jnp.nan, 0.1)) == 1.0
    assert float(annealing.target_worse_acceptance(0, 800.0)) == pytest.approx(np.exp(-1))
    assert float(annealing.target_worse_acceptance(800, 800.0)) == pytest.approx(np.exp(-6))
