"""experiments/upper_bound.py: the true-relations upper bound next to BounceGrad, on valid."""

import dataclasses
import importlib.util
import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, flagfile_config

from nri_modular import gnn, plots
from nri_modular.modules import ModuleBank

_spec = importlib.util.spec_from_file_location(
    "upper_bound", os.path.join(REPO, "experiments", "upper_bound.py")
)
ub = sys.modules["upper_bound"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ub)


def test_label_structures_inverts_the_module_map():
    labels = np.array([[0, 1, 1], [1, 0, 0]], np.int32)
    np.testing.assert_array_equal(ub.label_structures(labels, np.array([0, 1])), labels)
    np.testing.assert_array_equal(ub.label_structures(labels, np.array([1, 0])), 1 - labels)
    # Three modules, two types: the first module mapped to a type computes it.
    np.testing.assert_array_equal(ub.label_structures(labels, np.array([1, 1, 0])), 2 - 2 * labels)
    with pytest.raises(ValueError, match=r"relation types \[1\] have no module"):
        ub.label_structures(labels, np.array([0, 0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 5, "max_seconds": -1.0}, "max_seconds"),
        ({"total_steps": 5, "eval_every_seconds": 0.0}, "eval_every_seconds"),
    ],
)
def test_budget_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ub.Budget(**kwargs)


def _bank_params_states(n=3, frames=5, tasks=2):
    bank = ModuleBank(2, (8, 8), (8, 8))
    params = bank.init(jax.random.PRNGKey(0))
    states = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (tasks, frames, n, 4)))
    return bank, params, states


def test_one_step_mse_is_the_mean_teacher_forced_error():
    bank, params, states = _bank_params_states(tasks=3)
    structures = np.array([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0] * 6], np.int32)
    steps = states.shape[1] - 1  # every transition of every task as one graph
    initial = jnp.asarray(states[:, :-1].reshape(-1, *states.shape[2:]))
    pred = gnn.rollout(bank, params, initial, np.repeat(structures, steps, axis=0), 1)[:, 0]
    expected = float(np.square(np.asarray(pred) - states[:, 1:].reshape(pred.shape)).mean())
    # Batches of 2 pad the last one: the padding must not count.
    got = ub.one_step_mse(bank, params, states, structures, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_exact_init_is_the_argmin_of_the_one_step_loss_over_all_structures():
    bank, params, states = _bank_params_states()
    every = np.array(list(itertools.product(range(2), repeat=6)), np.int32)  # [64, E]
    for task in range(states.shape[0]):
        reps = jnp.asarray(np.repeat(states[task : task + 1], len(every), axis=0))
        losses = np.asarray(gnn.rollout_loss(bank, params, reps, jnp.asarray(every), 1))
        best = ub.exact_init_structures(bank, params, states, batch_size=1)[task]
        assert losses[every.tolist().index(best.tolist())] <= losses.min() * (1 + 1e-5)


def _curve_rows(data_dir, tmp_path, arm, steps=3, **overrides):
    from nri_modular import loading

    config = flagfile_config(data_dir=data_dir, **overrides)  # 4 valid tasks
    data = loading.load_data(config)
    rows = []
    budget = ub.Budget(total_steps=steps, eval_every_seconds=1e-6)
    final = ub.run_arm(arm, config, data, budget, 3, rows.append, str(tmp_path))
    return config, data, rows, final


def _real_run(config, train_split, num_steps, structures=None):
    """The real run's first ``num_steps`` steps, by hand: :func:`nri_modular.train.build`'s
    state and step on the batches of ``train.train`` (``task_batches`` with the run's
    ``task_shards``); ``structures`` replaces the initial ones (the upper bound's labels).

    Returns:
      ``(initial structures, final params, [loss], [training edge accuracy])`` per step.
    """
    from nri_modular import bouncegrad, distributed, metrics, train
    from nri_modular.data import batching

    mesh = distributed.make_mesh(config.model_axis_size)
    setup = train.build(config, mesh, np.zeros((1, *train_split.states.shape[1:]), np.float32))
    state = setup.init_fn()
    if structures is not None:
        state = state.replace(structures=jnp.asarray(structures, jnp.int32))
    initial = np.asarray(state.structures)
    states, labels = np.asarray(train_split.states), np.asarray(train_split.labels)
    per_epoch = config.num_train // config.batch_size
    losses, accuracies = [], []
    for step in range(num_steps):
        epoch, offset = divmod(step, per_epoch)
        ids = batching.task_batches(
            config.num_train, config.batch_size, config.seed, epoch, shards=config.task_shards
        )[offset]
        batch = bouncegrad.Batch(
            jnp.asarray(ids), jnp.asarray(states[ids]), jnp.asarray(labels[ids])
        )
        state, step_metrics = setup.step_fn(state, batch)
        now = np.asarray(state.structures)
        mapping = metrics.module_mapping(now, labels, config.num_modules, 2)
        losses.append(float(step_metrics["loss"]))
        accuracies.append(float(metrics.edge_accuracy(now, labels, mapping)))
    return initial, state.params, losses, accuracies


def _assert_same_params(saved, expected):
    got, want = jax.tree.leaves(saved), jax.tree.leaves(expected)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_upper_bound_arm_trains_on_the_labels_and_writes_curve_points(tiny_data_dir, tmp_path):
    # 2 steps: the final exact start is then 52% right, not 50%, where a flipped module
    # map would give the same number.
    config, data, rows, final = _curve_rows(
        tiny_data_dir, tmp_path, "upper_bound", steps=2, test_sa_steps=2
    )
    assert [r["step"] for r in rows] == [1, 2] and [r["final"] for r in rows][-1]
    # The intermediate point scores 3 valid tasks, the final one all 4 (with search).
    assert [r["num_valid_scored"] for r in rows] == [3, 4]
    for r in rows:
        assert r["train_edge_accuracy"] == 1.0  # the structures stayed the labels
    assert final["tasks_seen"] == 2 * 10
    # Trained by the one true-edges trainer: its 2 steps with the run's settings (bank,
    # schedule, loss, edge layout: all from the config) give the saved modules bit for bit.
    import nri_modular as nm
    from nri_modular import checkpoints, evaluate
    from nri_modular import config as config_lib
    from nri_modular.baselines import true_edges

    saved, meta = checkpoints.load_model(str(tmp_path / "model_upper_bound"))
    assert meta["arm"] == "upper_bound" and meta["step"] == 2
    expected, _ = true_edges.train_true_edges_from_config(config, data.train, num_steps=2)
    _assert_same_params(saved, expected)
    # The final point's numbers, by hand from the saved modules on the 4 valid tasks
    # (module k = relation type k, the map of the label structures).
    bank, valid = config_lib.build_bank(config), data.valid
    states, labels = jnp.asarray(valid.states), np.asarray(valid.labels)
    # edge_compute="all": every module on every edge, then picked (no blocked layout).
    mse_true = gnn.rollout_loss(bank, saved, states, jnp.asarray(labels), 1, edge_compute="all")
    mse_true = float(np.asarray(mse_true).mean())
    np.testing.assert_allclose(final["valid_mse1_true_graph"], mse_true, rtol=1e-5)
    observed = np.asarray(valid.states)[:, : config.obs_frames]
    # The exact one-step start by hand: node i's one-step error depends only on its n-1
    # incoming edges, so 2^(n-1) structures (every node's incoming edges set alike) give
    # every node's error under each of its settings; the optimum takes each node's best.
    tasks, n = valid.num_tasks, config.num_particles
    settings = np.array(list(itertools.product(range(2), repeat=n - 1)), np.int32)  # [8, 3]
    preds, targets, _ = gnn.rollout_predictions(
        bank,
        saved,
        jnp.asarray(np.repeat(observed, len(settings), axis=0)),
        jnp.asarray(np.tile(settings, (tasks, n))),
        1,
        edge_compute="all",
    )
    node_errors = np.square(np.asarray(preds - targets)).mean(axis=(1, 2, 4))
    best = node_errors.reshape(tasks, len(settings), n).argmin(axis=1)  # [tasks, n]
    argmin = settings[best].reshape(tasks, -1)  # receiver-major: node i's edges in row i
    search_config = evaluate.search_config(config)
    start = ub.exact_init_structures(bank, saved, observed, config.test_batch_size, search_config)
    np.testing.assert_array_equal(start, argmin)
    assert final["valid_exact_init_accuracy"] == float((argmin == labels).mean())
    searched, _ = nm.search_structures(
        bank, saved, observed, jax.random.PRNGKey(config.seed + 1), search_config
    )
    assert final["valid_edge_accuracy"] == float((searched == labels).mean())
    searched_loss = gnn.rollout_loss(
        bank, saved, states, jnp.asarray(searched), 1, edge_compute="all"
    )
    np.testing.assert_allclose(final["valid_mse1_searched"], np.mean(searched_loss), rtol=1e-5)
    # The plot draws the rows: one line per series, at (training minutes, value).
    import matplotlib.figure

    drawn = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        for ax in fig.axes:
            for line in ax.get_lines():
                drawn[(ax.get_title(), line.get_label())] = line.get_xydata()
        return real_savefig(fig, *args, **kwargs)

    png = tmp_path / "curve.png"
    minutes = [r["train_seconds"] / 60 for r in rows]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "savefig", savefig)
        plots.upper_bound_curves(json.loads(json.dumps(rows)), str(png), "tiny")
    expected_lines = {
        ("valid edge accuracy", "upper_bound, after search"): "valid_edge_accuracy",
        ("valid edge accuracy", "upper_bound, exact one-step start"): "valid_exact_init_accuracy",
        ("valid 1-step MSE, true graph", "upper_bound"): "valid_mse1_true_graph",
        ("training loss (p-step rollout)", "upper_bound"): "loss",
    }
    assert set(drawn) == set(expected_lines)
    for where, key in expected_lines.items():
        np.testing.assert_allclose(drawn[where], np.c_[minutes, [r[key] for r in rows]])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upper_bound_arm_takes_the_real_runs_batches_with_task_shards(tiny_data_dir, tmp_path):
    # task_shards=2: slice v of every batch must hold tasks of block v (the step reads each
    # task's structure within its block); other batches would read other tasks' label
    # structures (an id outside its block is clamped or wraps) and train on those.
    config, data, rows, _ = _curve_rows(
        tiny_data_dir, tmp_path, "upper_bound", test_sa_steps=2, task_shards=2
    )
    assert [r["train_edge_accuracy"] for r in rows] == [1.0, 1.0, 1.0]
    from nri_modular import checkpoints

    saved, _ = checkpoints.load_model(str(tmp_path / "model_upper_bound"))
    labels = np.asarray(data.train.labels)
    _, params, losses, _ = _real_run(dataclasses.replace(config, sa_steps=0), data.train, 3, labels)
    _assert_same_params(saved, params)
    assert [r["loss"] for r in rows] == losses


def test_bouncegrad_arm_searches_structures(tiny_data_dir, tmp_path):
    from nri_modular import checkpoints

    config, data, rows, final = _curve_rows(
        tiny_data_dir, tmp_path, "bouncegrad", test_sa_steps=2, sa_steps=4
    )
    assert [r["arm"] for r in rows] == ["bouncegrad"] * 3 and final["step"] == 3
    # The real run's first 3 steps: the same losses, training structures and modules.
    _, params, losses, accuracies = _real_run(config, data.train, 3)
    assert [r["loss"] for r in rows] == losses
    assert [r["train_edge_accuracy"] for r in rows] == accuracies
    _assert_same_params(checkpoints.load_model(str(tmp_path / "model_bouncegrad"))[0], params)


@pytest.mark.parametrize(
    "prior", [{"node_types": 2}, {"symmetric_structure": True}], ids=["node_types", "symmetric"]
)
def test_bouncegrad_arm_starts_from_the_real_runs_state_under_the_prior(
    tiny_data_dir, tmp_path, prior
):
    from nri_modular import checkpoints, structure_priors

    # One step without annealing (sa_steps=0): the structures stay the initial ones, and
    # the step's gradient depends on them.
    config, data, rows, final = _curve_rows(
        tiny_data_dir, tmp_path, "bouncegrad", steps=1, sa_steps=0, test_sa_steps=2, **prior
    )
    initial, params, losses, accuracies = _real_run(config, data.train, 1)
    n = config.num_particles
    assert bool(structure_priors.is_symmetric(initial, n).all())  # both priors imply it
    if config.node_types:
        assert bool(structure_priors.is_type_structure(initial, n, config.node_types).all())
    assert final["train_edge_accuracy"] == accuracies[0] and final["loss"] == losses[0]
    saved, _ = checkpoints.load_model(str(tmp_path / "model_bouncegrad"))
    _assert_same_params(saved, params)
    # arm_setup's fresh structures are the real run's.
    _, state = ub.arm_setup("bouncegrad", config, data.train)
    np.testing.assert_array_equal(np.asarray(state.structures), initial)


def test_unknown_arm_and_missing_curve_keys_are_errors(tmp_path):
    config = flagfile_config()
    with pytest.raises(ValueError, match="unknown arm 'oracle'"):
        ub.run_arm("oracle", config, None, ub.Budget(1), 1, print, str(tmp_path))
    with pytest.raises(ValueError, match="missing"):
        plots.upper_bound_curves([{"arm": "upper_bound"}], str(tmp_path / "x.png"))


def test_module_optimizer_is_constant_adam_by_default_and_cosine_decays_to_the_final_rate():
    import optax

    from nri_modular import config as config_lib

    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}  # Adam's normalised step is then exactly the step size

    def step_sizes(optimizer, steps):
        state, sizes = optimizer.init(params), []
        for _ in range(steps):
            updates, state = optimizer.update(grads, state, params)
            sizes.append(-float(updates["w"][0]))
        return np.array(sizes)

    base = flagfile_config(learning_rate=2e-3)  # 40 tasks / batch 10 x 2 epochs = 8 steps
    np.testing.assert_allclose(
        step_sizes(config_lib.module_optimizer(base), 8), step_sizes(optax.adam(2e-3), 8)
    )
    decayed = dataclasses.replace(base, final_learning_rate=1e-4)
    sizes = step_sizes(config_lib.module_optimizer(decayed), 9)
    cosine = 1e-4 + (2e-3 - 1e-4) * 0.5 * (1 + np.cos(np.pi * np.arange(9) / 8))
    np.testing.assert_allclose(sizes, cosine, rtol=1e-4)  # 2e-3 at step 0, 1e-4 at step 8
    for bad in (-1e-4, 3e-3):
        with pytest.raises(ValueError, match="final_learning_rate must be in"):
            dataclasses.replace(base, final_learning_rate=bad)


def test_huber_loss_is_the_mse_below_delta_and_linear_above():
    from nri_modular import bouncegrad

    bank, params, states = _bank_params_states(frames=7)
    structures = jnp.asarray([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
    mse = gnn.rollout_loss(bank, params, jnp.asarray(states), structures, 3)
    wide = bouncegrad.huber_rollout_loss(bank, params, jnp.asarray(states), structures, 3, 1e6)
    np.testing.assert_allclose(wide, mse, rtol=1e-6)
    preds, targets, mask = gnn.rollout_predictions(bank, params, jnp.asarray(states), structures, 3)
    err = np.abs(np.asarray(preds - targets))
    delta = float(np.median(err))  # half the coordinates on each side
    cost = np.where(err <= delta, err**2, 2 * delta * err - delta**2).mean(axis=(-1, -2))
    expected = (cost * np.asarray(mask)[None]).sum(axis=(1, 2)) / np.asarray(mask).sum()
    got = bouncegrad.huber_rollout_loss(bank, params, jnp.asarray(states), structures, 3, delta)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(np.asarray(got) < np.asarray(mse))


def test_loss_flag_reaches_the_step_and_bad_values_are_errors():
    import optax

    import nri_modular as nm
    from nri_modular import bouncegrad
    from nri_modular import config as config_lib

    base = flagfile_config()
    assert config_lib.bouncegrad_config(base).loss == "mse"  # default: today's loss
    huber = config_lib.bouncegrad_config(dataclasses.replace(base, loss="huber", huber_delta=0.1))
    assert (huber.loss, huber.huber_delta) == ("huber", 0.1)
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        dataclasses.replace(base, loss="l1")
    with pytest.raises(ValueError, match="huber_delta must be positive"):
        dataclasses.replace(base, huber_delta=0.0)
    # The step's loss is the Huber loss of the batch (sa_steps=0: structures stay fixed).
    bank, params, states = _bank_params_states(frames=7)
    structures = jnp.asarray([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
    opt = optax.sgd(0.0)
    for loss, expected in (
        ("mse", gnn.rollout_loss(bank, params, jnp.asarray(states), structures, 3)),
        (
            "huber",
            bouncegrad.huber_rollout_loss(bank, params, jnp.asarray(states), structures, 3, 1e-3),
        ),
    ):
        cfg = nm.BounceGradConfig(p=3, sa_steps=0, loss=loss, huber_delta=1e-3)
        state = nm.init_train_state(jax.random.PRNGKey(0), bank, opt, 2, 3)
        state = state.replace(params=params, structures=structures)
        batch = nm.Batch(jnp.arange(2), jnp.asarray(states), structures)
        _, metrics = nm.make_bouncegrad_step(bank, opt, cfg, 3)(state, batch)
        np.testing.assert_allclose(metrics["loss"], np.mean(expected), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        nm.make_bouncegrad_step(bank, opt, nm.BounceGradConfig(loss="l2"), 3)
