"""The GNN: blocked module dispatch, the jraph path, rollouts and the one-step decomposition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import gnn, graph
from nri_modular import structure as structure_lib
from nri_modular.modules import ModuleBank

N = 4  # particles
E = N * (N - 1)


@pytest.fixture(scope="module")
def model():
    bank = ModuleBank(3, (16, 16), (16, 16))
    return bank, bank.init(jax.random.PRNGKey(0))


def _states(key, b, t=6):
    return 0.5 * jax.random.normal(jax.random.PRNGKey(key), (b, t, N, 4))


def _structure(key, b, k=3):
    return structure_lib.random_structures(jax.random.PRNGKey(key), b, N, k)


def test_layout_groups_rows_by_module():
    module = jnp.asarray(np.random.RandomState(0).randint(0, 3, size=101), jnp.int32)
    layout = gnn.make_layout(module, 3, block_rows=16)
    pos = np.asarray(layout.position)
    assert len(set(pos.tolist())) == 101  # every row has its own slot
    block_of_row = pos // layout.block_rows
    np.testing.assert_array_equal(np.asarray(layout.block_module)[block_of_row], module)
    src = np.asarray(layout.source)
    np.testing.assert_array_equal(src[pos], np.arange(101))


@pytest.mark.parametrize("block_rows", [8, 64, 512])
def test_blocked_equals_all_modules(model, block_rows):
    bank, params = model
    s = _states(1, 7)[:, 0]
    st = _structure(2, 7)
    layout = gnn.task_layout(st, 3, block_rows)
    a = gnn.message_passing_step(bank, params, s, layout, "blocked")
    b = gnn.message_passing_step(bank, params, s, layout, "all")
    chex.assert_trees_all_close(a, b, atol=1e-5)


def test_each_edge_uses_its_own_module(model):
    """Changing one edge's module changes only its receiver's next state."""
    bank, params = model
    s = _states(3, 1)[:, 0]
    st = jnp.zeros((1, E), jnp.int32)
    st2 = st.at[0, 5].set(2)  # edge 5 enters receiver 5 // (N-1) = 1
    a = gnn.rollout(bank, params, s, st, 1)[0, 0]
    b = gnn.rollout(bank, params, s, st2, 1)[0, 0]
    changed = np.abs(np.asarray(a - b)).max(axis=-1) > 0
    np.testing.assert_array_equal(changed, [False, True, False, False])


def _dense_step(bank, params, states, structure):
    """Independent reference: every module on every edge, pick, sum per receiver by reshape."""
    g, n, d = states.shape
    receivers, senders = graph.edge_index(n)
    x = jnp.concatenate([states[:, senders], states[:, receivers]], -1).reshape(-1, 2 * d)
    every = bank.apply_edge_all(params["edge"], x)  # [K, G E, M]
    msgs = jnp.take_along_axis(every, structure.reshape(1, -1, 1), axis=0)[0]
    agg = msgs.reshape(g, n, n - 1, -1).sum(axis=2)
    return states + bank.apply_node(params["node"], jnp.concatenate([states, agg], -1))


def test_rollout_runs_on_graphs_tuples_and_matches_a_dense_reference(model):
    bank, params = model
    s = _states(4, 5)[:, 0]
    st = _structure(5, 5)
    graphs, position = graph.tasks_to_graphs(s, st)
    assert position is None and graphs.nodes.shape == (5 * N, 4)
    step = jax.jit(lambda p, g: gnn.graph_step(bank, p, g))
    out = step(params, graphs)
    np.testing.assert_array_equal(np.asarray(out.edges), np.asarray(st).reshape(-1))
    expected = _dense_step(bank, params, s, st)
    chex.assert_trees_all_close(graph.graphs_to_tasks(out.nodes, N), expected, atol=1e-5)
    chex.assert_trees_all_close(gnn.rollout(bank, params, s, st, 1)[:, 0], expected, atol=1e-5)


def test_rollout_p1_equals_repeated_single_steps(model):
    bank, params = model
    states = _states(6, 3, t=5)
    st = _structure(7, 3)
    layout = gnn.task_layout(st, 3)
    preds, targets, mask = gnn.rollout_predictions(bank, params, states, st, p=1)
    chex.assert_shape(preds, (3, 4, 1, N, 4))
    for t in range(4):
        one = gnn.message_passing_step(bank, params, states[:, t], layout)
        chex.assert_trees_all_close(preds[:, t, 0], one, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask), 1.0)
    # Open-loop rollout feeds predictions back.
    roll = gnn.rollout(bank, params, states[:, 0], st, 3)
    s = states[:, 0]
    for t in range(3):
        s = gnn.message_passing_step(bank, params, s, layout)
        chex.assert_trees_all_close(roll[:, t], s, atol=1e-5)


def test_rollout_loss_masks_frames_past_the_end(model):
    bank, params = model
    states = _states(8, 2, t=6)  # 5 transitions, p=3: chunks at 0 and 3, last has 2 targets
    st = _structure(9, 2)
    preds, targets, mask = gnn.rollout_predictions(bank, params, states, st, p=3)
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1], [1, 1, 0]])
    loss = gnn.rollout_loss(bank, params, states, st, p=3)
    manual = (np.square(np.asarray(preds - targets)).mean(axis=(-1, -2)) * np.asarray(mask)).sum(
        axis=(1, 2)
    ) / 5
    np.testing.assert_allclose(np.asarray(loss), manual, rtol=1e-5)


@pytest.mark.parametrize("huber_delta", [None, 0.05])
def test_incoming_config_losses_decompose_the_one_step_loss(model, huber_delta):
    bank, params = model
    states = _states(10, 2, t=5)
    st = _structure(11, 2)
    configs = structure_lib.incoming_configs(N, 3)
    scores = gnn.incoming_config_losses(
        bank, params, states, jnp.asarray(configs), huber_delta=huber_delta
    )
    chex.assert_shape(scores, (2, N, 3 ** (N - 1)))
    # The score of the structure's own setting, summed over nodes, is the one-step loss.
    own = np.asarray(st).reshape(2, N, N - 1)
    index = {tuple(c): i for i, c in enumerate(configs.tolist())}
    total = np.zeros(2)
    for b in range(2):
        for i in range(N):
            total[b] += np.asarray(scores)[b, i, index[tuple(own[b, i])]]
    loss = gnn.rollout_loss(bank, params, states, st, p=1, huber_delta=huber_delta)
    np.testing.assert_allclose(total / N, np.asarray(loss), rtol=1e-4)
    if huber_delta is not None:  # the penalty is Huber's, not the squared error
        mse = gnn.rollout_loss(bank, params, states, st, p=1)
        assert np.all(np.asarray(loss) < 0.9 * np.asarray(mse))


def test_bad_structure_shape_is_an_error(model):
    bank, params = model
    with pytest.raises(ValueError, match="structure must be"):
        gnn.rollout(bank, params, _states(0, 2)[:, 0], jnp.zeros((2, E + 1), jnp.int32), 1)
    with pytest.raises(ValueError, match="unknown edge_compute"):
        gnn.edge_messages(bank, params["edge"], jnp.zeros((3, 8)), None, "magic")


def test_flops_count(model):
    bank, _ = model
    assert bank.flops_per_edge() == 2 * (8 * 16 + 16 * 16)
    assert bank.flops_per_node() == 2 * ((4 + 16) * 16 + 16 * 16 + 16 * 4)


def test_out_of_range_module_index_is_an_error(model):
    bank, params = model
    bad = jnp.full((2, E), 3, jnp.int32)  # the bank has modules 0..2
    with pytest.raises(ValueError, match="module indices in \\[3, 3\\]"):
        gnn.rollout(bank, params, _states(0, 2)[:, 0], bad, 1)


def test_structure_closed_over_in_jit(model):
    """A concrete structure captured by a jitted function is checked on the host, not traced."""
    bank, params = model
    states = _states(12, 2, t=4)
    st = _structure(13, 2)
    loss = jax.jit(lambda p: gnn.rollout_loss(bank, p, states, st, 2))(params)
    chex.assert_tree_all_finite(loss)


def test_node_module_split_at_its_first_layer(model):
    bank, params = model
    x = jax.random.normal(jax.random.PRNGKey(12), (7, 4 + 16))
    w_state, w_msg, bias = bank.node_first_layer(params["node"])
    pre = x[:, :4] @ w_state + x[:, 4:] @ w_msg + bias[None]
    chex.assert_trees_all_close(
        bank.apply_node_rest(params["node"], pre), bank.apply_node(params["node"], x), atol=1e-5
    )


@pytest.mark.parametrize("stride, chunk_rows", [(1, 0), (1, 7), (2, 512), (2, 5)])
def test_incoming_config_losses_score_every_setting(model, stride, chunk_rows):
    """Each setting's score is node i's one-step error with that setting on its edges
    (whatever the chunking of the per-setting pass, padded chunks included)."""
    bank, params = model
    states = _states(13, 2, t=6)
    configs = structure_lib.incoming_configs(N, 3)
    scores = np.asarray(
        gnn.incoming_config_losses(bank, params, states, jnp.asarray(configs), stride, chunk_rows)
    )
    rng = np.random.RandomState(0)
    for c in rng.choice(len(configs), 5, replace=False):
        st = jnp.asarray(np.tile(configs[c], (2, N)), jnp.int32)  # setting c on every node
        current, following = states[:, :-1:stride], states[:, 1::stride]
        t = current.shape[1]
        pred = gnn.rollout(bank, params, current.reshape(2 * t, N, 4), jnp.repeat(st, t, 0), 1)
        err = np.square(np.asarray(pred[:, 0]) - np.asarray(following).reshape(2 * t, N, 4))
        expected = err.mean(-1).reshape(2, t, N).mean(1)  # [B, n]
        np.testing.assert_allclose(scores[:, :, c], expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("edge_compute", ["blocked", "all"])
def test_grouped_layouts_give_the_same_rollout_and_gradient(model, edge_compute):
    """One super-graph and edge layout per each of 3 groups of tasks (what keeps the
    blocked dispatch device-local) changes the blocks, not the messages, the loss or its
    gradient."""
    bank, params = model
    states, st = _states(4, 6, t=8), _structure(5, 6)

    def loss(p, groups):
        return gnn.rollout_loss(
            bank, p, states, st, 3, block_rows=8, edge_compute=edge_compute, groups=groups
        )

    chex.assert_trees_all_close(loss(params, 3), loss(params, 1), rtol=1e-5)
    grads = [jax.grad(lambda p, g=g: loss(p, g).mean())(params) for g in (1, 3)]
    chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="groups=4 must be >= 1 and divide the 6 tasks"):
        loss(params, 4)
    with pytest.raises(ValueError, match="groups=5 must be >= 1 and divide the 6 graphs"):
        gnn.rollout(bank, params, states[:, 0], st, 1, groups=5)
    with pytest.raises(ValueError, match="groups=0 must be >= 1"):
        gnn.rollout(bank, params, states[:, 0], st, 1, groups=0)


def test_grouped_exact_scores_equal_one_group(model):
    bank, params = model
    states = _states(6, 6, t=5)
    configs = jnp.asarray(structure_lib.incoming_configs(N, 3))
    one = gnn.incoming_config_losses(bank, params, states, configs, chunk_rows=16)
    three = gnn.incoming_config_losses(bank, params, states, configs, chunk_rows=16, groups=3)
    chex.assert_trees_all_close(three, one, rtol=1e-5)
    with pytest.raises(ValueError, match="groups=4 must be >= 1 and divide the 6 tasks"):
        gnn.incoming_config_losses(bank, params, states, configs, groups=4)
