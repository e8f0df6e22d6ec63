"""Structure priors (symmetric structures, node types) against brute force on tiny cases."""

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_modular import gnn, graph
from nri_modular import structure as structure_lib
from nri_modular import structure_priors as sp
from nri_modular.modules import ModuleBank

# Jitted once per shape: eager dispatch of these small ops is far slower than compiling.
symmetric_move_losses = jax.jit(sp.symmetric_move_losses, static_argnums=(3, 4))
exact_local_symmetric = jax.jit(sp.propose_exact_local_symmetric, static_argnums=(3, 4))
symmetric_exact_best = jax.jit(sp.symmetric_exact_best, static_argnums=(1, 2))
type_move_losses = jax.jit(sp.type_move_losses, static_argnums=(3, 4))
types_exact_best = jax.jit(sp.types_exact_best, static_argnums=(1, 2))


def _index_of(setting, num_nodes, num_modules):
    """Index of a node's incoming setting, by lookup in the enumerated list (no radix)."""
    configs = [tuple(c) for c in structure_lib.incoming_configs(num_nodes, num_modules)]
    return configs.index(tuple(int(v) for v in setting))


def _brute_loss(scores, structure, num_nodes, num_modules):
    """``sum_j scores[j, setting of j]`` for one task: scores ``[n, C]``, structure ``[E]``."""
    incoming = np.asarray(structure).reshape(num_nodes, num_nodes - 1)
    return sum(
        float(scores[j, _index_of(incoming[j], num_nodes, num_modules)]) for j in range(num_nodes)
    )


def _symmetric_from_matrix(matrix):
    return graph.matrix_to_edges(np.asarray(matrix)).astype(np.int32)


def _pair_matrix(num_nodes, node, values, base):
    """Symmetric module matrix ``base`` with row/column ``node`` set to ``values`` (others
    in increasing order): the brute-force meaning of a node's pair setting."""
    m = np.array(base)
    others = [j for j in range(num_nodes) if j != node]
    for j, v in zip(others, values, strict=True):
        m[node, j] = m[j, node] = v
    return m


@pytest.mark.parametrize("num_nodes,num_modules", [(4, 3), (5, 2)])
def test_symmetric_move_losses_match_brute_force(num_nodes, num_modules):
    n, k = num_nodes, num_modules
    b = 3
    c = k ** (n - 1)
    scores = jax.random.uniform(jax.random.PRNGKey(0), (b, n, c))
    structure = sp.random_symmetric_structures(jax.random.PRNGKey(1), b, n, k)
    node = jnp.asarray([0, n - 1, 1])
    losses = np.asarray(symmetric_move_losses(scores, structure, node, n, k))
    configs = structure_lib.incoming_configs(n, k)
    for t in range(b):
        base = graph.edges_to_matrix(np.asarray(structure[t]), n)
        for ci, setting in enumerate(configs):
            moved = _symmetric_from_matrix(_pair_matrix(n, int(node[t]), setting, base))
            expect = _brute_loss(np.asarray(scores[t]), moved, n, k)
            np.testing.assert_allclose(losses[t, ci], expect, rtol=1e-6)


def test_symmetric_move_losses_are_the_models_one_step_loss():
    """The scores of gnn.incoming_config_losses, combined under the symmetric constraint,
    give the one-step loss of the moved structure computed directly with the model."""
    n, k = 4, 2
    bank = ModuleBank(k, (16,), (16,))
    params = jax.jit(bank.init)(jax.random.PRNGKey(0))
    states = jax.random.normal(jax.random.PRNGKey(1), (2, 6, n, 4))
    configs = structure_lib.incoming_configs(n, k)
    scores = jax.jit(
        lambda p, s: gnn.incoming_config_losses(bank, p, s, jnp.asarray(configs), chunk_rows=0)
    )(params, states)
    structure = sp.random_symmetric_structures(jax.random.PRNGKey(2), 2, n, k)
    node = jnp.asarray([2, 0])
    losses = np.asarray(symmetric_move_losses(scores, structure, node, n, k))

    @jax.jit
    def one_step_loss(moved, s):  # moved [M, E], s [T, n, 4] -> [M] sum of per-node MSEs
        m = moved.shape[0]
        layout = gnn.task_layout(jnp.repeat(moved, s.shape[0] - 1, axis=0), k)
        x = jnp.broadcast_to(s[None, :-1], (m, *s[:-1].shape)).reshape(-1, n, 4)
        pred = gnn.message_passing_step(bank, params, x, layout).reshape(m, -1, n, 4)
        return jnp.square(pred - s[None, 1:]).mean(axis=(1, 3)).sum(-1)

    for t in range(2):
        base = graph.edges_to_matrix(np.asarray(structure[t]), n)
        moved = np.stack(
            [_symmetric_from_matrix(_pair_matrix(n, int(node[t]), c, base)) for c in configs]
        )
        direct = np.asarray(one_step_loss(jnp.asarray(moved), states[t]))
        np.testing.assert_allclose(losses[t], direct, rtol=1e-4)


def test_exact_local_symmetric_move_is_the_best_over_the_nodes_pairs():
    n, k, b = 5, 2, 8
    scores = jax.random.uniform(jax.random.PRNGKey(3), (b, n, k ** (n - 1)))
    structure = sp.random_symmetric_structures(jax.random.PRNGKey(4), b, n, k)
    key = jax.random.PRNGKey(5)
    moved = np.asarray(exact_local_symmetric(key, structure, scores, n, k))
    node = np.asarray(jax.random.randint(key, (b,), 0, n))  # the node the move picked
    assert np.asarray(sp.is_symmetric(jnp.asarray(moved), n)).all()
    for t in range(b):
        base = graph.edges_to_matrix(np.asarray(structure[t]), n)
        best = min(
            _brute_loss(
                np.asarray(scores[t]),
                _symmetric_from_matrix(_pair_matrix(n, node[t], s, base)),
                n,
                k,
            )
            for s in itertools.product(range(k), repeat=n - 1)
        )
        np.testing.assert_allclose(_brute_loss(np.asarray(scores[t]), moved[t], n, k), best)


@pytest.mark.parametrize("enumerate_all", [True, False])
def test_symmetric_exact_best(monkeypatch, enumerate_all):
    """Enumeration finds the brute-force optimum over all symmetric structures; coordinate
    descent (when there are too many) is symmetric and no worse than its start."""
    n, k, b = 4, 2, 6
    scores = np.asarray(jax.random.uniform(jax.random.PRNGKey(6), (b, n, k ** (n - 1))))
    if not enumerate_all:
        monkeypatch.setattr(sp, "MAX_ENUMERATED", 0)
    best = np.asarray(symmetric_exact_best(jnp.asarray(scores), n, k))
    assert np.asarray(sp.is_symmetric(jnp.asarray(best), n)).all()
    all_sym = []
    for values in itertools.product(range(k), repeat=n * (n - 1) // 2):
        m = np.zeros((n, n), np.int32)
        for (a, c), v in zip(itertools.combinations(range(n), 2), values, strict=True):
            m[a, c] = m[c, a] = v
        all_sym.append(_symmetric_from_matrix(m))
    start = np.asarray(
        jax.jit(lambda x: sp.symmetrize(structure_lib.exact_best_structure(x, n, k), n))(scores)
    )
    for t in range(b):
        optimum = min(_brute_loss(scores[t], s, n, k) for s in all_sym)
        got = _brute_loss(scores[t], best[t], n, k)
        if enumerate_all:
            np.testing.assert_allclose(got, optimum, rtol=1e-6)
        else:
            assert optimum - 1e-6 <= got <= _brute_loss(scores[t], start[t], n, k) + 1e-6


@pytest.mark.parametrize("kind", sp.MOVE_KINDS)
def test_symmetric_moves_keep_symmetry_and_touch_one_node(kind):
    n, k, b = 5, 3, 64
    e = n * (n - 1)
    structure = sp.random_symmetric_structures(jax.random.PRNGKey(7), b, n, k)
    aux = None
    if kind == "blocked_gibbs":
        aux = 3.0 * jax.random.normal(jax.random.PRNGKey(8), (b, e, k))
    elif kind != "uniform":
        aux = jax.random.uniform(jax.random.PRNGKey(8), (b, n, k ** (n - 1)))
    move = jax.jit(sp.make_prior_move(kind, k, n, symmetric=True, node_types=0))
    new = move(jax.random.PRNGKey(9), structure, aux)
    assert np.asarray(sp.is_symmetric(new, n)).all()
    changed = np.asarray(new != structure)
    receivers, senders = graph.edge_index(n)
    if kind == "uniform":
        np.testing.assert_array_equal(changed.sum(1), 2)  # exactly one pair
    if kind in ("uniform", "blocked_gibbs", "exact_local"):
        for t in range(b):  # all changed edges share one node
            ends = [
                {int(r), int(s)}
                for r, s in zip(receivers[changed[t]], senders[changed[t]], strict=True)
            ]
            assert not ends or set.intersection(*ends)


def test_blocked_gibbs_symmetric_samples_the_product_of_both_edges():
    n, b = 3, 20000
    logits = jnp.zeros((b, n * (n - 1), 2))
    # Pair (0, 1): edge 1->0 is edge 0, edge 0->1 is edge 2. p(module 1) = .8 and .6.
    logits = logits.at[:, 0, 1].set(np.log(4.0)).at[:, 2, 1].set(np.log(1.5))
    structure = jnp.zeros((b, n * (n - 1)), jnp.int32)
    new = np.asarray(
        sp.propose_blocked_gibbs_symmetric(jax.random.PRNGKey(0), structure, logits, n)
    )
    node = np.asarray(jax.random.randint(jax.random.split(jax.random.PRNGKey(0))[0], (b,), 0, n))
    touches = node != 2  # nodes 0 and 1 resample pair (0, 1)
    expect = 0.8 * 0.6 / (0.8 * 0.6 + 0.2 * 0.4)
    assert abs(new[touches, 0].mean() - expect) < 0.015
    np.testing.assert_array_equal(new[:, 0], new[:, 2])


def _types_structure(types):
    """Brute force: module 1 on edge j->i iff types i and j are equal; ``[E]``."""
    return graph.matrix_to_edges(np.array([[int(a == b) for b in types] for a in types]))


def _partitions(num_nodes, node_types):
    """Distinct structures of <= T types, found by brute force over assignments."""
    return {
        tuple(_types_structure(t)) for t in itertools.product(range(node_types), repeat=num_nodes)
    }


@pytest.mark.parametrize("node_types,count", [(2, 16), (3, 41)])
def test_type_candidates_and_round_trip(node_types, count):
    n = 5
    cands = sp.type_candidates(n, node_types)
    assert cands.shape == (count, n * (n - 1))
    assert {tuple(c) for c in cands} == _partitions(n, node_types)
    types = jax.random.randint(jax.random.PRNGKey(0), (200, n), 0, node_types)
    s = np.asarray(jax.jit(sp.types_to_structure, static_argnums=1)(types, n))
    np.testing.assert_array_equal(s, np.stack([_types_structure(t) for t in np.asarray(types)]))
    back = jax.jit(sp.types_from_structure, static_argnums=1)(s, n)
    np.testing.assert_array_equal(np.stack([_types_structure(t) for t in np.asarray(back)]), s)
    assert np.asarray(jax.jit(sp.is_type_structure, static_argnums=(1, 2))(s, n, node_types)).all()
    assert np.asarray(sp.is_symmetric(jnp.asarray(s), n)).all()
    # A structure no types make (a path 0-1-2 of module-1 edges, 0 and 2 apart) is rejected.
    m = np.zeros((n, n), np.int32)
    m[0, 1] = m[1, 0] = m[1, 2] = m[2, 1] = 1
    path = jnp.asarray(graph.matrix_to_edges(m))[None]
    assert not bool(sp.is_type_structure(path, n, node_types)[0])


def test_type_move_losses_and_exact_best_match_brute_force():
    n, t_types, b = 5, 3, 4
    c = 2 ** (n - 1)
    scores = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (b, n, c)))
    types = jax.random.randint(jax.random.PRNGKey(2), (b, n), 0, t_types)
    structure = sp.types_to_structure(types, n)
    node = jnp.asarray([0, 4, 2, 3])
    losses = np.asarray(type_move_losses(jnp.asarray(scores), structure, node, n, t_types))
    canon = np.asarray(sp.types_from_structure(structure, n))
    for i in range(b):
        for t in range(t_types):
            moved = canon[i].copy()
            moved[int(node[i])] = t
            s = _types_structure(moved)
            np.testing.assert_allclose(losses[i, t], _brute_loss(scores[i], s, n, 2), rtol=1e-6)
    best = np.asarray(types_exact_best(jnp.asarray(scores), n, t_types))
    for i in range(b):
        optimum = min(_brute_loss(scores[i], np.asarray(s), n, 2) for s in _partitions(n, t_types))
        np.testing.assert_allclose(_brute_loss(scores[i], best[i], n, 2), optimum, rtol=1e-6)


@pytest.mark.parametrize("kind", sp.MOVE_KINDS)
def test_type_moves_keep_type_structures(kind):
    n, b, t_types = 5, 64, 2
    e = n * (n - 1)
    structure = sp.random_type_structures(jax.random.PRNGKey(3), b, n, t_types)
    aux = None
    if kind == "blocked_gibbs":
        aux = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (b, e, 2))
    elif kind != "uniform":
        aux = jax.random.uniform(jax.random.PRNGKey(4), (b, n, 2 ** (n - 1)))
    move = jax.jit(
        sp.make_prior_move(kind, 2, n, symmetric=False, node_types=t_types, uniform_mix=0.3)
    )
    new = move(jax.random.PRNGKey(5), structure, aux)
    assert np.asarray(sp.is_type_structure(new, n, t_types)).all()
    if kind == "uniform":  # one node changes type: its n-1 pairs flip (T = 2)
        np.testing.assert_array_equal(np.asarray((new != structure).sum(1)), 2 * (n - 1))


def test_blocked_gibbs_types_follows_confident_logits():
    """Logits that (confidently) encode planted types move the chosen node to its type."""
    n, b = 5, 32
    planted = jax.random.randint(jax.random.PRNGKey(0), (b, n), 0, 2)
    target = sp.types_to_structure(planted, n)
    logits = 20.0 * (jax.nn.one_hot(target, 2) - 0.5)
    start = sp.random_type_structures(jax.random.PRNGKey(1), b, n, 2)
    move = jax.jit(lambda key, s: sp.propose_blocked_gibbs_types(key, s, logits, n, 2))
    s = start
    for i in range(30):
        s = move(jax.random.PRNGKey(10 + i), s)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(target))


def test_exhaustive_search_finds_the_least_energy_candidate():
    n, b = 5, 6
    cands = sp.type_candidates(n, 2)
    planted = jnp.asarray(cands)[jnp.asarray([3, 0, 15, 7, 7, 9])]

    def energy(s):
        e = (s != planted).mean(-1).astype(jnp.float32)
        nan = (s == jnp.asarray(cands[0])[None]).all(-1)
        return jnp.where(nan, jnp.nan, e)  # a non-finite candidate never wins

    best, energies = sp.exhaustive_search(energy, cands, b)
    expect = np.asarray(planted)  # task 1's planted candidate has nan energy: next best wins
    hamming = (np.asarray(cands)[None] != np.asarray(planted)[:, None]).mean(-1)
    assert np.asarray(best)[1].tolist() != cands[0].tolist()
    np.testing.assert_allclose(np.asarray(energies)[[0, 2, 3, 4, 5]], 0.0)
    np.testing.assert_array_equal(np.asarray(best)[[0, 2, 3, 4, 5]], expect[[0, 2, 3, 4, 5]])
    np.testing.assert_allclose(float(energies[1]), np.sort(hamming[1])[1])


def test_random_prior_structures_and_bad_settings():
    s = sp.random_prior_structures(jax.random.PRNGKey(0), 10, 5, 3, True, 0)
    assert np.asarray(sp.is_symmetric(s, 5)).all() and int(s.max()) == 2
    s = sp.random_prior_structures(jax.random.PRNGKey(0), 10, 5, 2, False, 2)
    assert np.asarray(sp.is_type_structure(s, 5, 2)).all()
    with pytest.raises(ValueError, match="num_modules=2"):
        sp.make_prior_move("uniform", 3, 5, symmetric=False, node_types=2)
    with pytest.raises(ValueError, match="node_types must be >= 2"):
        sp.check_prior(2, 5, False, 1)
    with pytest.raises(ValueError, match="unknown move"):
        sp.make_prior_move("gibbs", 2, 5, symmetric=True, node_types=0)
    with pytest.raises(ValueError, match="needs symmetric=True or node_types"):
        sp.make_prior_move("uniform", 2, 5, symmetric=False, node_types=0)
    with pytest.raises(ValueError, match="too many to enumerate"):
        sp.type_candidates(17, 2)


# ---------------------------------------------------------------------------------------
# The doors search takes the prior through: the plain thing without a prior, else the prior's.

DOOR_PRIORS = [(False, 0), (True, 0), (False, 2)]  # (symmetric, node_types)


def _move_aux(kind, key, b, n, k):
    if kind == "blocked_gibbs":
        return 3.0 * jax.random.normal(key, (b, n * (n - 1), k))
    if kind in structure_lib.EXACT_KINDS:
        return jax.random.uniform(key, (b, n, k ** (n - 1)))
    return None


@pytest.mark.parametrize("kind", structure_lib.MOVE_KINDS)
@pytest.mark.parametrize(
    "k, symmetric, node_types", [(1, False, 0), (3, False, 0), (3, True, 0), (2, False, 2)]
)
def test_search_move_is_the_plain_move_without_a_prior_else_the_prior_move(
    kind, k, symmetric, node_types
):
    n, b, mix = 4, 16, 0.3
    structure = sp.random_prior_structures(jax.random.PRNGKey(0), b, n, k, symmetric, node_types)
    aux = _move_aux(kind, jax.random.PRNGKey(1), b, n, k)
    got = jax.jit(sp.make_search_move(kind, k, n, mix, symmetric, node_types))
    if sp.uses_prior(symmetric, node_types):
        want = jax.jit(sp.make_prior_move(kind, k, n, symmetric, node_types, mix))
    else:
        want = jax.jit(structure_lib.make_move(kind, k, n, mix))
    for seed in (2, 3):
        key = jax.random.PRNGKey(seed)
        moved = np.asarray(got(key, structure, aux))
        np.testing.assert_array_equal(moved, np.asarray(want(key, structure, aux)))
        if k == 1:  # one module: the only structure, kept
            np.testing.assert_array_equal(moved, np.asarray(structure))


@pytest.mark.parametrize("symmetric, node_types", DOOR_PRIORS)
def test_search_move_rejects_an_unknown_kind_naming_the_kinds(symmetric, node_types):
    assert sp.MOVE_KINDS is structure_lib.MOVE_KINDS  # one home, re-exported
    with pytest.raises(
        ValueError,
        match=re.escape(f"'gibbs'; expected one of the moves {structure_lib.MOVE_KINDS}"),
    ):
        sp.make_search_move("gibbs", 2, 4, 0.0, symmetric, node_types)


@pytest.mark.parametrize("aux_kind", [None, "scores", "logits"])
@pytest.mark.parametrize("symmetric, node_types", DOOR_PRIORS)
def test_search_initial_structure_is_the_plain_start_without_a_prior(
    aux_kind, symmetric, node_types
):
    n, k, b = 4, 2, 8
    key = jax.random.PRNGKey(0)
    aux = {
        None: None,
        "scores": jax.random.uniform(jax.random.PRNGKey(1), (b, n, k ** (n - 1))),
        "logits": jax.random.normal(jax.random.PRNGKey(1), (b, n * (n - 1), k)),
    }[aux_kind]
    weights = jax.random.normal(jax.random.PRNGKey(2), (b, n * (n - 1)))

    def energy_fn(s):
        return (s * weights).sum(-1)

    got = sp.search_initial_structure(key, energy_fn, aux, aux_kind, b, n, k, symmetric, node_types)
    if sp.uses_prior(symmetric, node_types):
        want = sp.prior_initial_structure(
            key, energy_fn, aux, aux_kind, b, n, k, symmetric, node_types
        )
    elif aux_kind == "scores":  # the exact one-step optimum
        want = structure_lib.exact_best_structure(aux, n, k)
    elif aux_kind == "logits":  # the proposal network's most likely module per edge
        want = jnp.argmax(aux, axis=-1).astype(jnp.int32)
    else:
        want = structure_lib.random_structures(key, b, n, k)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------------------
# Wired into the BounceGrad step, the meta-test search and the Config.


def _teacher(structures):
    """Trajectories ``[B, 8, 4, 4]`` of a random teacher bank on the given structures."""
    bank = ModuleBank(2, (16,), (16,))
    teacher = jax.jit(bank.init)(jax.random.PRNGKey(42))
    out = teacher["node"]["params"]["Dense_1"]
    teacher["node"]["params"]["Dense_1"] = {**out, "kernel": out["kernel"] * 0.2}
    initial = jax.random.normal(jax.random.PRNGKey(2), (structures.shape[0], 4, 4))
    traj = jax.jit(lambda p, x, s: gnn.rollout(bank, p, x, s, 7))(teacher, initial, structures)
    return bank, teacher, np.asarray(jnp.concatenate([initial[:, None], traj], axis=1))


def test_meta_test_search_under_each_prior():
    """Node types: the search starts from the exact energy optimum over all type structures,
    so one uniform step finds the planted types; symmetric: every searched structure is
    symmetric (from a random symmetric start, with uniform pair moves)."""
    from nri_modular import evaluate

    n, b = 4, 8
    planted = jnp.asarray(sp.random_type_structures(jax.random.PRNGKey(1), b, n, 2))
    bank, teacher, states = _teacher(planted)
    base = evaluate.SearchConfig(num_steps=1, p=4, batch_size=b, proposal="uniform")
    cfg = dataclasses.replace(base, node_types=2)
    found, energies = evaluate.search_structures(bank, teacher, states, jax.random.PRNGKey(3), cfg)
    np.testing.assert_array_equal(found, np.asarray(planted))
    cfg = dataclasses.replace(base, num_steps=5, symmetric_structure=True)
    found, _ = evaluate.search_structures(bank, teacher, states, jax.random.PRNGKey(3), cfg)
    assert np.asarray(sp.is_symmetric(jnp.asarray(found), n)).all()


@pytest.mark.parametrize("symmetric,node_types", [(True, 0), (False, 2)])
def test_bouncegrad_steps_keep_the_prior(symmetric, node_types):
    import optax

    from nri_modular import bouncegrad

    n, b = 4, 8
    labels = jnp.asarray(sp.random_type_structures(jax.random.PRNGKey(1), b, n, 2))
    bank, _, states = _teacher(labels)
    opt = optax.adam(1e-3)
    state = bouncegrad.init_train_state(
        jax.random.PRNGKey(0), bank, opt, b, n, symmetric_structure=symmetric, node_types=node_types
    )
    check = sp.is_symmetric if symmetric else (lambda s, n: sp.is_type_structure(s, n, 2))
    assert np.asarray(check(state.structures, n)).all()
    batch = bouncegrad.Batch(jnp.arange(b), jnp.asarray(states), labels)
    for kind in ("uniform", "exact_local", "exact_sweep"):
        cfg = bouncegrad.BounceGradConfig(
            p=4,
            sa_steps=3,
            proposal=kind,
            uniform_mix=0.3,
            symmetric_structure=symmetric,
            node_types=node_types,
        )
        step = jax.jit(bouncegrad.make_bouncegrad_step(bank, opt, cfg, n))
        for _ in range(2):
            state, _ = step(state, batch)
        assert np.asarray(check(state.structures, n)).all(), kind


def test_config_rejects_impossible_priors():
    from nri_modular.config import Config

    assert not Config().symmetric_structure and Config().node_types == 0  # off by default
    Config(symmetric_structure=True, num_modules=3)
    Config(node_types=3)
    with pytest.raises(ValueError, match="need num_modules=2"):
        Config(node_types=2, num_modules=3)
    with pytest.raises(ValueError, match="node_types must be >= 2"):
        Config(node_types=1)
    with pytest.raises(ValueError, match="node_types must be >= 0"):
        Config(node_types=-2)
