"""Systems of different sizes in one batch: jraph super-graphs padded to a budget."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from nri_modular import gnn, graph
from nri_modular import structure as structure_lib
from nri_modular.modules import ModuleBank

N = 5  # padded size
SIZES = np.array([3, 5, 2, 4], np.int32)


@pytest.fixture(scope="module")
def model():
    bank = ModuleBank(2, (16, 16), (16, 16))
    return bank, bank.init(jax.random.PRNGKey(0))


def _padded(key, t=7, garbage=0.0):
    """States ``[G, t, N, 4]`` whose padded objects hold ``garbage``; structures ``[G, E]``."""
    states = 0.5 * np.asarray(jax.random.normal(jax.random.PRNGKey(key), (len(SIZES), t, N, 4)))
    for g, n in enumerate(SIZES):
        states[g, :, n:] = garbage
    st = structure_lib.random_structures(jax.random.PRNGKey(key + 1), len(SIZES), N, 2)
    return jnp.asarray(states, jnp.float32), st


def _own(structure, n):
    """A padded task's structure ``[N(N-1)]`` cut to its ``n`` objects ``[n(n-1)]``."""
    return graph.matrix_to_edges(graph.edges_to_matrix(np.asarray(structure), N)[:n, :n])


def test_bucket_and_budget():
    assert [graph.bucket(c) for c in (1, 16, 17, 100, 1000)] == [1, 16, 18, 104, 1024]
    for c in range(1, 5000, 37):
        b = graph.bucket(c)
        assert c <= b <= c * 1.125 + 1
    budget = graph.graph_budget(SIZES)
    assert budget.nodes >= SIZES.sum() + 1 and budget.edges >= (SIZES * (SIZES - 1)).sum()
    with pytest.raises(ValueError, match="too small"):
        graph.check_budget(SIZES, graph.GraphBudget(10, 100))
    with pytest.raises(ValueError, match=">= 2"):
        graph.graph_budget([3, 1])


def test_super_graph_is_jraphs_batch_padded_with_graphs():
    """The traced construction equals jraph.batch + jraph.pad_with_graphs of the tasks."""
    states, st = _padded(0)
    sizes = graph.Sizes.of(SIZES)
    ours, position = jax.jit(graph.tasks_to_graphs)(states[:, 0], st, sizes)
    singles = []
    for g, n in enumerate(SIZES):
        r, s = graph.edge_index(n)
        singles.append(
            jraph.GraphsTuple(
                nodes=np.asarray(states[g, 0, :n]),
                edges=_own(st[g], n),
                senders=s,
                receivers=r,
                n_node=np.array([n]),
                n_edge=np.array([n * (n - 1)]),
                globals=None,
            )
        )
    ref = jraph.pad_with_graphs(
        jraph.batch_np(singles), sizes.budget.nodes, sizes.budget.edges, len(SIZES) + 1
    )
    np.testing.assert_array_equal(np.asarray(ours.nodes), ref.nodes)
    np.testing.assert_array_equal(np.asarray(ours.n_node), ref.n_node)
    np.testing.assert_array_equal(np.asarray(ours.n_edge), ref.n_edge)
    real = int((SIZES * (SIZES - 1)).sum())
    for field in ("senders", "receivers", "edges"):
        np.testing.assert_array_equal(
            np.asarray(getattr(ours, field))[:real], getattr(ref, field)[:real]
        )
    # Padding edges join jraph's padding graph (our choice: its last node).
    assert np.all(np.asarray(ours.receivers)[real:] >= SIZES.sum())
    assert np.all(np.diff(np.asarray(ours.receivers)) >= 0)  # sorted, for segment_sum
    back = graph.graphs_to_tasks(ours.nodes, N, position)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(states[:, 0]))


def test_ragged_rollout_equals_each_system_alone_and_ignores_padding(model):
    bank, params = model
    states, st = _padded(2)
    sizes = graph.Sizes.of(SIZES)
    roll = jax.jit(lambda s, z, q: gnn.rollout(bank, params, s, z, 3, sizes=q))
    preds = roll(states[:, 0], st, sizes)
    for g, n in enumerate(SIZES):
        alone = gnn.rollout(
            bank, params, states[g : g + 1, 0, :n], jnp.asarray(_own(st[g], n))[None], 3
        )
        chex.assert_trees_all_close(preds[g, :, :n], alone[0], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(preds[g, :, n:]), 0.0)
    garbage, _ = _padded(2, garbage=7.0)
    other = np.asarray(st).copy()
    other[~np.asarray(sizes.edge_mask(N))] ^= 1  # change every padded edge's module
    np.testing.assert_array_equal(
        np.asarray(roll(garbage[:, 0], jnp.asarray(other), sizes)), np.asarray(preds)
    )


@pytest.mark.parametrize("huber_delta", [None, 0.3])
def test_ragged_loss_and_gradient_equal_each_system_alone(model, huber_delta):
    bank, params = model
    states, st = _padded(4, t=9)
    sizes = graph.Sizes.of(SIZES)
    loss = lambda p, s, z, q: gnn.rollout_loss(bank, p, s, z, 3, huber_delta=huber_delta, sizes=q)  # noqa: E731
    ours = jax.jit(loss)(params, states, st, sizes)
    alone = [
        float(loss(params, states[g : g + 1, :, :n], jnp.asarray(_own(st[g], n))[None], None)[0])
        for g, n in enumerate(SIZES)
    ]
    np.testing.assert_allclose(np.asarray(ours), alone, rtol=1e-5)
    grad = jax.grad(lambda p: loss(p, states, st, sizes).sum())(params)
    grad_alone = [
        jax.grad(
            lambda p, g=g, n=n: loss(
                p, states[g : g + 1, :, :n], jnp.asarray(_own(st[g], n))[None], None
            ).sum()
        )(params)
        for g, n in enumerate(SIZES)
    ]
    chex.assert_trees_all_close(grad, jax.tree.map(lambda *a: sum(a), *grad_alone), atol=1e-5)


def test_ragged_incoming_config_losses_ignore_padded_senders(model):
    bank, params = model
    states, _ = _padded(6)
    configs = jnp.asarray(structure_lib.incoming_configs(N, 2))  # [16, 4]
    sizes = graph.Sizes.of(SIZES)
    ours = np.asarray(gnn.incoming_config_losses(bank, params, states, configs, sizes=sizes))
    for g, n in enumerate(SIZES):
        own_configs = jnp.asarray(structure_lib.incoming_configs(n, 2))
        alone = np.asarray(
            gnn.incoming_config_losses(bank, params, states[g : g + 1, :, :n], own_configs)
        )[0]
        for c, setting in enumerate(np.asarray(configs)):
            for i in range(n):
                # Node i's incoming slots over N objects: senders j != i; keep the real ones.
                senders = [j for j in range(N) if j != i]
                real = [setting[k] for k, j in enumerate(senders) if j < n]
                c_own = int(np.flatnonzero((np.asarray(own_configs) == real).all(1))[0])
                np.testing.assert_allclose(ours[g, i, c], alone[i, c_own], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(ours[g, n:], 0.0)


def test_groups_with_sizes_is_an_error(model):
    bank, params = model
    states, st = _padded(8)
    with pytest.raises(ValueError, match="one group"):
        gnn.rollout(bank, params, states[:, 0], st, 1, groups=2, sizes=graph.Sizes.of(SIZES))


def _write_ragged(folder, n=5, seed=0):
    """A tiny labelled own dataset of 3..n objects per system (random walks, NaN padding)."""
    import os

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for split, sims, frames in (("train", 12, 8), ("valid", 4, 8), ("test", 4, 14)):
        sizes = rng.integers(3, n + 1, size=sims)
        sizes[0] = n
        loc = np.cumsum(rng.normal(size=(sims, frames, 2, n)), axis=1)
        pad = np.arange(n)[None, :] >= sizes[:, None]  # [sims, n]
        loc = np.where(pad[:, None, None, :], np.nan, loc)
        np.save(os.path.join(folder, f"loc_{split}_mine.npy"), loc)
        np.save(os.path.join(folder, f"edges_{split}_mine.npy"), rng.integers(0, 2, (sims, n, n)))
        np.save(os.path.join(folder, f"sizes_{split}_mine.npy"), sizes)
    return str(folder)


def test_train_search_and_save_systems_of_different_sizes(tmp_path):
    from conftest import own_config

    from nri_modular import evaluate_saved, reporting, train
    from nri_modular.data import own

    folder = _write_ragged(tmp_path / "data")
    config = own_config(
        folder,
        num_particles=5,
        state_dim=4,
        proposal="exact_sweep",
        test_proposal="exact_local",
    )
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    assert 0.0 <= results["edge_accuracy"] <= 1.0 and np.isfinite(results["mse_1"])
    by_size = results["edge_accuracy_by_size"]
    assert set(by_size) == {str(n) for n in np.unique(own.load(folder, "mine").test.sizes)}
    assert "| edge accuracy, 5 objects |" in reporting.format_run_results(results)
    assert sum(results["module_usage"]) == pytest.approx(1.0)
    evaluated = evaluate_saved.evaluate_run(workdir, folder, split="test", num_plots=1)
    saved = np.load(evaluated["inferred"])
    test = own.load(folder, "mine").test
    real = graph.edge_mask(test.sizes, N)
    np.testing.assert_array_equal(saved["sizes"], test.sizes)
    assert np.all(saved["structures"][~real] == -1) and np.all(saved["structures"][real] >= 0)
    np.testing.assert_array_equal(saved["labels"][~real], -1)
    assert "figure" not in evaluated
    # settings that do not handle different sizes yet are refused before training
    with pytest.raises(ValueError, match="do not support"):
        train.train_and_evaluate(
            dataclasses.replace(config, test_proposal="blocked_gibbs", proposal="blocked_gibbs"),
            str(tmp_path / "run2"),
        )


def test_ragged_exact_scores_need_configs_in_product_order(model):
    bank, params = model
    states, _ = _padded(10)
    configs = np.asarray(structure_lib.incoming_configs(N, 2))
    sizes = graph.Sizes.of(SIZES)
    with pytest.raises(ValueError, match="product order"):
        gnn.incoming_config_losses(bank, params, states, jnp.asarray(configs[::-1]), sizes=sizes)
    with pytest.raises(ValueError, match="all 2"):
        gnn.incoming_config_losses(bank, params, states, jnp.asarray(configs[:4]), sizes=sizes)


def test_review_guards(model, tmp_path):
    """A too-small budget, unsorted receivers, groups not dividing the graphs, baselines on
    systems of different sizes: each an error naming it; saved penalties NaN on padding."""
    from nri_modular import evaluate_saved
    from nri_modular.baselines import base
    from nri_modular.data import datasets, own

    bank, params = model
    states, st = _padded(12)
    with pytest.raises(ValueError, match="too small"):
        gnn.rollout(
            bank, params, states[:, 0], st, 1, sizes=graph.Sizes(SIZES, graph.GraphBudget(10, 48))
        )
    graphs, _ = graph.tasks_to_graphs(states[:, 0], st)
    with pytest.raises(ValueError, match="sorted receivers"):
        gnn.graph_step(bank, params, graphs._replace(receivers=graphs.receivers[::-1]))
    with pytest.raises(ValueError, match="divide the 3 graphs"):
        gnn.rollout(bank, params, states[:3, 0], st[:3], 1, groups=2)
    data = own.load(_write_ragged(tmp_path / "data"), "mine")
    with pytest.raises(ValueError, match="handle one size only"):
        base.check_one_size(data)
    base.check_one_size(datasets.Dataset("springs", 5, data.normalization, {}))
    path = str(tmp_path / "inferred.npz")
    e = N * (N - 1)
    evaluate_saved.save_inferred(
        path, np.zeros((4, e), int), [0, 1], None, np.ones((4, e, 2)), np.ones((4, e)), SIZES
    )
    saved = np.load(path)
    real = graph.edge_mask(SIZES, N)
    assert (
        np.isnan(saved["edge_penalties"][~real]).all()
        and np.isnan(saved["edge_evidence"][~real]).all()
    )
    assert np.isfinite(saved["edge_penalties"][real]).all() and np.all(
        saved["relations"][~real] == -1
    )
