"""Hidden-particle inference on a planted model (the exact springs integrator), tiny shapes."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import gnn
from nri_modular import graph as graph_lib
from nri_modular import hidden_node as hn
from nri_modular import hidden_node_experiment as experiment
from nri_modular import hidden_node_search as hs
from nri_modular.data import Split
from nri_modular.modules import ModuleBank

# Planted dynamics: strong springs, 0.2 time units per frame, 4 sub-steps (cheap to compile).
DYN = hn.springs_dynamics(spring_constant=2.0, dt=0.05, substeps=4)
N, T, B = 3, 8, 3
PRIOR_MEAN = jnp.zeros(4)
PRIOR_STD = jnp.full((4,), 0.5)


def _simulate(initial: np.ndarray, labels: np.ndarray, frames: int) -> np.ndarray:
    s, out = jnp.asarray(initial), [jnp.asarray(initial)]
    for _ in range(frames - 1):
        s = DYN(s, jnp.asarray(labels))
        out.append(s)
    return np.asarray(jnp.stack(out, axis=1))


@pytest.fixture(scope="module")
def systems():
    rng = np.random.default_rng(0)
    initial = rng.normal(0.0, 0.5, (B, N, 4)).astype(np.float32)
    labels = np.ones((B, N * (N - 1)), np.int32)  # the hidden particle pulls on both others
    states = _simulate(initial, labels, T)
    return hn.hide_particle(states, labels, np.full(B, N - 1))


def test_hide_particle_and_full_structure_round_trip():
    rng = np.random.default_rng(1)
    n = 4
    states = rng.normal(size=(2, 5, n, 4)).astype(np.float32)
    upper = np.triu(rng.random((2, n, n)) < 0.5, 1)
    labels = graph_lib.matrix_to_edges((upper | upper.transpose(0, 2, 1)).astype(np.int32))
    hidden = np.array([1, 3])
    hs = hn.hide_particle(states, labels, hidden)
    chex.assert_shape(hs.observed, (2, 5, n - 1, 4))
    chex.assert_shape(hs.hidden_edges, (2, 2 * (n - 1)))
    np.testing.assert_array_equal(hs.hidden_states, states[np.arange(2), :, hidden])
    for b, k in enumerate(hidden):
        perm = np.r_[np.delete(np.arange(n), k), k]
        np.testing.assert_array_equal(hs.observed[b], states[b][:, perm[:-1]])
        matrix = graph_lib.edges_to_matrix(labels[b], n)[perm][:, perm]
        full = np.asarray(hn.full_structure(hs.observed_structure[b], hs.hidden_edges[b]))
        np.testing.assert_array_equal(full, graph_lib.matrix_to_edges(matrix))


@pytest.mark.parametrize("refeed", [1, 3, 100])
def test_true_hidden_state_gives_zero_loss(systems, refeed):
    structure = hn.full_structure(
        jnp.asarray(systems.observed_structure), jnp.asarray(systems.hidden_edges)
    )
    preds, hidden = hn.latent_rollout(
        DYN,
        jnp.asarray(systems.observed),
        jnp.asarray(systems.hidden_states[:, 0]),
        structure,
        refeed,
    )
    chex.assert_shape(preds, (B, T - 1, N - 1, 4))
    np.testing.assert_allclose(preds, systems.observed[:, 1:], atol=1e-5)
    np.testing.assert_allclose(hidden, systems.hidden_states, atol=1e-5)


def test_gnn_dynamics_is_one_message_passing_step():
    bank = ModuleBank(2, (8, 8), (8, 8))
    params = bank.init(jax.random.PRNGKey(0))
    states = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
    structure = jnp.asarray([[0, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 1]], jnp.int32)
    step = jax.jit(hn.gnn_dynamics(bank, params))(states, structure)
    expected = jax.jit(gnn.rollout, static_argnums=(0, 4))(bank, params, states, structure, 1)
    np.testing.assert_allclose(step, expected[:, 0], atol=1e-5)


def _losses(systems, initial, cfg):
    obs = jnp.asarray(systems.observed)
    struct = jnp.asarray(systems.observed_structure)
    edges = jnp.broadcast_to(jnp.asarray(systems.hidden_edges)[:, None], (*initial.shape[:2], 4))
    fn = jax.jit(lambda x, e: hs._sanitise(hs._population_loss(DYN, obs, struct, x, e, cfg)))
    return fn, edges


def test_gradient_steps_lower_the_loss(systems):
    cfg = hn.HiddenSearchConfig(box=np.inf)
    truth = jnp.asarray(systems.hidden_states[:, 0])
    initial = truth[:, None] + 0.15 * jax.random.normal(jax.random.PRNGKey(2), (B, 2, 4))
    loss_fn, edges = _losses(systems, initial, cfg)
    pop = hs.Population(initial, edges, loss_fn(initial, edges))
    after = jax.jit(lambda p: hs._gradient_steps(loss_fn, p, lr=1e-2, steps=40))(pop)
    assert np.all(np.asarray(after.loss) <= np.asarray(pop.loss))
    assert np.asarray(after.loss).mean() < 0.2 * np.asarray(pop.loss).mean()
    np.testing.assert_allclose(after.loss, loss_fn(after.initial, edges), rtol=1e-4)


def test_sampling_lowers_the_loss(systems):
    cfg = hn.HiddenSearchConfig(box=np.inf, samples_per_round=64, local_fraction=0.5)
    far = jnp.full((B, 1, 4), 2.0)  # a bad candidate
    loss_fn, edges = _losses(systems, far, cfg)
    pop = hs.Population(far, edges, loss_fn(far, edges))
    new_init, new_edges = hs._fresh_samples(
        jax.random.PRNGKey(3), pop, PRIOR_MEAN, PRIOR_STD, cfg, edges_known=True
    )
    chex.assert_shape(new_init, (B, 64, 4))
    merged = hs._keep_best(
        jnp.concatenate([pop.initial, new_init], 1),
        jnp.concatenate([pop.edges, new_edges], 1),
        jnp.concatenate([pop.loss, loss_fn(new_init, new_edges)], 1),
        1,
    )
    assert np.all(np.asarray(merged.loss) < 0.5 * np.asarray(pop.loss))


def test_inference_recovers_the_hidden_initial_state(systems):
    cfg = hn.HiddenSearchConfig(
        box=np.inf,
        num_candidates=4,
        num_initial_samples=64,
        samples_per_round=8,
        windows=(4, 8),
        learning_rates=(2e-2, 5e-3),
        grad_steps=40,
        num_particles=N,
    )
    infer = hs.make_infer_hidden(DYN, cfg, edges_known=True)
    res = infer(
        jnp.asarray(systems.observed),
        jnp.asarray(systems.observed_structure),
        jax.random.PRNGKey(0),
        PRIOR_MEAN,
        PRIOR_STD,
        jnp.asarray(systems.hidden_edges),
    )
    chex.assert_shape(res.trajectory, (B, T, 4))
    np.testing.assert_allclose(res.initial, systems.hidden_states[:, 0], atol=0.03)
    assert float(hn.hidden_mse(res.trajectory, systems.hidden_states).max()) < 1e-3
    np.testing.assert_array_equal(res.edges, systems.hidden_edges)


def test_edge_annealing_lowers_the_loss(systems):
    cfg = hn.HiddenSearchConfig(box=np.inf, sa_steps=12, sa_temperature=1e-3)
    truth = jnp.asarray(systems.hidden_states[:, 0])[:, None]
    loss_fn, _ = _losses(systems, truth, cfg)
    wrong = jnp.zeros((B, 1, 4), jnp.int32)  # no springs at all
    pop = hs.Population(truth, wrong, loss_fn(truth, wrong))
    after = jax.jit(lambda p: hs._anneal_edges(loss_fn, p, jax.random.PRNGKey(4), cfg))(pop)
    assert np.all(np.asarray(after.loss) < np.asarray(pop.loss))
    np.testing.assert_allclose(after.loss, loss_fn(truth, after.edges), rtol=1e-4)


def test_existence_scores_and_threshold():
    scores = hn.existence_scores(jnp.asarray([1e-4, 1e-3]), jnp.asarray([1e-2, 1e-3]))
    np.testing.assert_allclose(scores, [np.log(100.0), 0.0], rtol=1e-5)
    cut = hn.best_threshold(np.array([2.0, 3.0]), np.array([0.1, 0.5]))
    assert 0.5 < cut < 2.0


def test_bad_inputs_fail_clearly(systems):
    obs = jnp.asarray(systems.observed)
    struct = jnp.asarray(systems.observed_structure)
    key = jax.random.PRNGKey(0)
    cfg = hn.HiddenSearchConfig(num_particles=N)
    with pytest.raises(ValueError, match=r"observed must be \[B, T, m, 4\]"):
        hs.infer_hidden(DYN, obs[..., :3], struct, key, PRIOR_MEAN, PRIOR_STD, cfg)
    with pytest.raises(ValueError, match="observed_structure must be"):
        hs.infer_hidden(DYN, obs, struct[:, :1], key, PRIOR_MEAN, PRIOR_STD, cfg)
    with pytest.raises(ValueError, match="model is for 5 particles"):
        hs.infer_hidden(
            DYN, obs, struct, key, PRIOR_MEAN, PRIOR_STD, hn.HiddenSearchConfig(num_particles=5)
        )
    with pytest.raises(ValueError, match="NaN"):
        hs.infer_hidden(DYN, obs.at[0, 0, 0, 0].set(jnp.nan), struct, key, PRIOR_MEAN, PRIOR_STD)
    with pytest.raises(ValueError, match="hidden_edges must be"):
        hs.infer_hidden(DYN, obs, struct, key, PRIOR_MEAN, PRIOR_STD, cfg, struct)
    with pytest.raises(ValueError, match="prior"):
        hs.infer_hidden(DYN, obs, struct, key, PRIOR_MEAN, -PRIOR_STD, cfg)
    with pytest.raises(ValueError, match="hidden must be"):
        hn.hide_particle(np.zeros((2, 4, 3, 4)), np.zeros((2, 6), np.int32), np.array([0, 3]))
    with pytest.raises(ValueError, match="windows"):
        hn.HiddenSearchConfig(windows=(10,), learning_rates=(1e-2, 1e-3))
    with pytest.raises(ValueError, match="unknown hidden"):
        experiment.ExperimentConfig(hidden="first")


def test_free_particle_floor_is_the_variance_of_free_paths():
    rng = np.random.RandomState(0)
    states = rng.randn(4, 6, 3, 4).astype(np.float32)
    matrix = np.zeros((4, 3, 3), np.int32)
    matrix[:, 0, 1] = matrix[:, 1, 0] = 1  # particles 0 and 1 linked: 2 is free
    matrix[3, 1, 2] = matrix[3, 2, 1] = 1  # ... except in system 3
    labels = graph_lib.matrix_to_edges(matrix)
    free_paths = states[:3, :5, 2]  # [3, 5, 4]
    expected = free_paths.var(axis=0).mean()
    assert hn.free_particle_floor(states, labels, 5) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(hn.free_particle_floor(states[3:], labels[3:], 5))


def test_true_edges_model_is_saved_loaded_and_checked(tmp_path):
    """The driver trains the true-edges model once, saves it in <workdir>/model, reloads it,
    and refuses a saved model of other settings or an old-format cache."""
    config = experiment.ExperimentConfig(
        num_particles=N,
        num_train=8,
        num_test=2,
        num_systems=2,
        batch_size=4,
        num_epochs=1,
        num_existence=0,
    )
    config = dataclasses.replace(config, edge_hidden=(8,), node_hidden=(8,), log_every=1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (8, N * (N - 1))).astype(np.int32)
    train = Split(rng.normal(size=(8, 6, N, 4)).astype(np.float32), labels)
    workdir = str(tmp_path / "run")
    lines = []
    bank, params, seconds = experiment.load_or_train(config, workdir, train, lines.append)
    assert seconds > 0 and lines[-1].startswith("train step 2/2 | loss ")
    assert os.path.isdir(os.path.join(workdir, experiment.MODEL_DIR))
    _, loaded, seconds = experiment.load_or_train(config, workdir, train, lines.append)
    assert seconds == 0.0 and lines[-1].startswith("loaded the true-edges model")
    chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(params))
    other = dataclasses.replace(config, learning_rate=1e-3)
    with pytest.raises(ValueError, match="trained with other settings.*learning_rate"):
        experiment.load_or_train(other, workdir, train, lines.append)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "model.msgpack").write_bytes(b"")
    with pytest.raises(ValueError, match="model cache of an older version"):
        experiment.load_or_train(config, str(legacy), train, lines.append)
