"""The scores: module -> relation map, edge accuracy, per-step MSE (numpy and JAX inputs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import metrics


def test_module_mapping_undoes_a_module_permutation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (6, 20)).astype(np.int32)
    structures = 1 - labels  # module k means type 1 - k
    mapping = metrics.module_mapping(structures, labels, num_modules=2, num_types=2)
    assert isinstance(mapping, np.ndarray)
    np.testing.assert_array_equal(mapping, [1, 0])
    assert metrics.edge_accuracy(structures, labels, mapping) == 1.0


def test_module_mapping_more_modules_than_types_takes_the_majority():
    labels = np.array([[0, 0, 1, 1, 1, 0]], np.int32)
    structures = np.array([[0, 0, 1, 2, 2, 2]], np.int32)  # module 2: two of type 1
    mapping = metrics.module_mapping(structures, labels, num_modules=3, num_types=2)
    np.testing.assert_array_equal(mapping, [0, 1, 1])


def test_edge_accuracy_counts_mapped_matches_as_float64():
    structures = np.array([[0, 1, 1], [1, 1, 0]], np.int32)
    labels = np.array([[1, 1, 0], [0, 0, 0]], np.int32)
    got = metrics.edge_accuracy(structures, labels, np.array([1, 0]))  # mapped: [[1,0,0],[0,0,1]]
    assert isinstance(got, float) and got == 4 / 6


def test_numpy_and_jitted_jax_paths_agree():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (5, 12)).astype(np.int32)
    structures = rng.integers(0, 2, (5, 12)).astype(np.int32)

    @jax.jit
    def in_step(s, y):
        mapping = metrics.module_mapping(s, y, 2, 2)
        return mapping, metrics.edge_accuracy(s, y, mapping)

    mapping_j, acc_j = in_step(jnp.asarray(structures), jnp.asarray(labels))
    mapping_n = metrics.module_mapping(structures, labels, 2, 2)
    np.testing.assert_array_equal(np.asarray(mapping_j), mapping_n)
    assert acc_j.dtype == jnp.float32
    np.testing.assert_allclose(
        float(acc_j), metrics.edge_accuracy(structures, labels, mapping_n), rtol=1e-6
    )


def test_shape_mismatches_are_named():
    with pytest.raises(ValueError, match=r"structures \(2, 3\) and labels \(2, 4\)"):
        metrics.edge_accuracy(np.zeros((2, 3), int), np.zeros((2, 4), int), np.arange(2))
    with pytest.raises(ValueError, match=r"structures \(2, 3\) and labels \(3, 2\)"):
        metrics.module_mapping(np.zeros((2, 3), int), np.zeros((3, 2), int), 2, 2)
    with pytest.raises(ValueError, match=r"predictions \(1, 2, 3, 4\) and truth \(1, 3, 3, 4\)"):
        metrics.mse_per_step(np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 3, 4)))


def test_mse_per_step_averages_tasks_particles_and_dims():
    truth = np.zeros((2, 3, 5, 4))
    predictions = np.zeros((2, 3, 5, 4))
    predictions[0, 1] = 2.0  # task 0, step 2: squared error 4 everywhere
    predictions[1, 2, 0, 0] = 4.0  # task 1, step 3: 16 on one of 20 entries
    per_task = metrics.squared_error_per_step(predictions, truth)
    np.testing.assert_array_equal(per_task, [[0, 4, 0], [0, 0, 16 / 20]])
    np.testing.assert_allclose(metrics.mse_per_step(predictions, truth), [0, 2, 0.4])
    jax_mse = metrics.mse_per_step(jnp.asarray(predictions), jnp.asarray(truth))
    np.testing.assert_allclose(np.asarray(jax_mse), [0, 2, 0.4], rtol=1e-6)
