"""benchmarks/structure_search.py takes its modules and proposal from a meta-training run: a
missing run is an error naming the command that makes it, and settings that belong to the
run (or to one system) are errors instead of silently ignored flags. The run is searched with
meta-test's settings of that run (its loss as the energy, meta-test's exact stride), read
with the library's one run-config reader, and meta-training regimes use the trainer's own
state and step (benchmarks/search_bench_lib.py)."""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, build_once, flagfile_config, run_checked

from nri_modular import distributed, evaluate, evaluate_saved, gnn, loading, structure_priors, train
from nri_modular import structure as structure_lib
from nri_modular.config import Config
from nri_modular.data import task_batches

SCRIPT = os.path.join(REPO, "benchmarks", "structure_search.py")
_spec = importlib.util.spec_from_file_location(
    "search_bench_lib", os.path.join(REPO, "benchmarks", "search_bench_lib.py")
)
lib = sys.modules["search_bench_lib"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lib)

CHARGED_DEMO = os.path.join(REPO, "experiments", "flags", "charged_demo.flags")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--systems=springs", "--springs_workdir={missing}"],
            "python experiments/springs.py --flagfile=experiments/flags/springs_demo.flags "
            "--test_proposal=blocked_gibbs --workdir={missing}",
        ),
        (
            ["--systems=charged", "--workdir={missing}"],
            "--flagfile=experiments/flags/charged_demo.flags --test_proposal=blocked_gibbs "
            "--workdir={missing}",
        ),
        (["--systems=springs,charged", "--workdir={missing}"], "for one system: --systems="),
        (["--systems=", "--edge_hidden=32"], "--edge_hidden (the model's settings come from"),
        (["--systems=", "--meta_regimes=exact"], "unknown --meta_regimes ['exact']"),
    ],
)
def test_run_errors_name_the_fix(tmp_path, args, message):
    missing = str(tmp_path / "no_run")
    args = [a.format(missing=missing) for a in args]
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert message.format(missing=missing) in proc.stderr


def test_recommended_charged_run_is_searched_with_its_own_loss(tmp_path):
    """The charged run the error recommends (charged_demo.flags) trains with the Huber loss;
    the benchmark searches a run with its own loss, and the error says so."""
    assert flagfile_config(CHARGED_DEMO).loss == "huber"
    missing = str(tmp_path / "no_run")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--systems=charged", f"--workdir={missing}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "charged_demo.flags" in proc.stderr
    assert "searched with its own loss as the energy, as meta-test does" in proc.stderr


# ----------------------------------------------------------------------------------------
# A tiny Huber run with a learned proposal, searched by the benchmark.

HUBER_RUN = dict(loss="huber", huber_delta=0.01, test_proposal="blocked_gibbs", exact_stride=2)
# The benchmark's own Config (its flags): MSE, the default loss, and its search settings.
BENCH = Config(seed=3, test_sa_steps=10, test_batch_size=4)


@pytest.fixture(scope="module")
def huber_run(tmp_path_factory, tiny_data_dir):
    """``(workdir, config)`` of a finished CI-flagfile run trained with the Huber loss."""
    config = flagfile_config(data_dir=tiny_data_dir, **HUBER_RUN)
    workdir = build_once(
        tmp_path_factory, "structure_search_huber_run", lambda w: train.train(config, w)
    )
    return workdir, config


def _searched(huber_run):
    workdir, _ = huber_run
    trained, data, run_config = lib.load_run("springs", workdir, None, "MAKE", bench=BENCH)
    states = jnp.asarray(data.test.states[:4, : run_config.obs_frames])
    return trained, states, run_config


def test_huber_run_is_searched_with_its_huber_energy(huber_run):
    """Every method anneals the run's Huber energy (gnn.rollout_loss with its huber_delta),
    not the MSE one; method (d)'s exact scores are the Huber one-step scores."""
    trained, states, _ = _searched(huber_run)
    assert trained.config.loss == "huber"
    n = states.shape[2]
    structures = structure_lib.random_structures(jax.random.PRNGKey(5), 4, n, 2)
    huber = gnn.rollout_loss(trained.bank, trained.params, states, structures, 10, huber_delta=0.01)
    mse = gnn.rollout_loss(trained.bank, trained.params, states, structures, 10)
    assert not np.allclose(huber, mse, rtol=1e-2)
    for method in lib.METHODS:
        settings = lib.method_settings(method, trained.config, 0.1, 0.5)
        assert settings.huber_delta == 0.01
        _, start, _, _ = lib.make_search_fns(trained.bank, trained.proposal_apply, settings, n)
        state = start(trained.params, states, structures, jax.random.PRNGKey(0))
        np.testing.assert_allclose(state.energy, huber, rtol=1e-5)
    init, _, _, _ = lib.make_search_fns(
        trained.bank, None, lib.method_settings("d", trained.config, 0.1, 0.5), n
    )
    _, _, scores = init(trained.params, None, states, jax.random.PRNGKey(0))
    configs = jnp.asarray(structure_lib.incoming_configs(n, 2))
    args = (trained.bank, trained.params, states, configs, 1)
    np.testing.assert_allclose(
        scores, gnn.incoming_config_losses(*args, huber_delta=0.01), rtol=1e-5
    )
    assert not np.allclose(scores, gnn.incoming_config_losses(*args), rtol=1e-2)


def test_exact_method_uses_meta_tests_stride(huber_run):
    """Method (d) scores exact moves at meta-test's stride (evaluate.search_config: 1), not
    the run's training stride (2) nor the benchmark's meta-training default (4); its scores
    and start are evaluate.exact_scores' with the run's search config."""
    trained, states, run_config = _searched(huber_run)
    assert run_config.exact_stride == 2
    settings = lib.method_settings("d", trained.config, 0.1, 0.5)
    assert settings.exact_stride == evaluate.search_config(run_config).exact_stride == 1
    init, _, _, _ = lib.make_search_fns(trained.bank, None, settings, states.shape[2])
    s0, _, scores = init(trained.params, None, states, jax.random.PRNGKey(0))
    want_scores, want_start = evaluate.exact_scores(
        trained.bank, trained.params, states, evaluate.search_config(run_config)
    )
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    np.testing.assert_array_equal(s0, want_start)


def test_benchmark_reports_each_methods_energy_and_stride(tmp_path, huber_run, subprocess_env):
    """The script on the Huber run: every method's row and JSON entry name the Huber energy,
    (d) also meta-test's stride 1."""
    workdir, _ = huber_run
    out = str(tmp_path / "bench.json")
    proc = run_checked(
        [
            sys.executable,
            SCRIPT,
            "--systems=springs",
            f"--workdir={workdir}",
            "--num_tasks=8",
            "--loop_tasks=2",
            "--test_sa_steps=10",
            "--test_batch_size=4",
            f"--out={out}",
        ],
        subprocess_env,
    )
    with open(out, encoding="utf-8") as f:
        results = json.load(f)["springs"]
    assert results["setup"]["loss"] == "huber"
    for method in lib.METHODS:
        assert results[method]["energy"] == "Huber delta=0.01"
        assert results[method]["huber_delta"] == 0.01
        assert f"({method}) searches with 10-step rollout Huber delta=0.01" in proc.stdout
    assert [results[m]["exact_stride"] for m in lib.METHODS] == [None, None, None, 1]
    assert "exact one-step Huber delta=0.01 scores at stride 1" in proc.stdout


def test_run_config_is_the_librarys_reader(tmp_path, huber_run):
    """The benchmark reads a run with evaluate_saved.run_config (run.json first): a run whose
    config.json has a field this version does not know still loads, with run.json's config."""
    workdir = str(tmp_path / "run")
    shutil.copytree(huber_run[0], workdir)
    path = os.path.join(workdir, "config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**saved, "a_later_field": 1}, f)
    trained, _, run_config = lib.load_run("springs", workdir, None, "MAKE", bench=BENCH)
    assert run_config == evaluate_saved.run_config(workdir)[0]
    assert trained.config == lib.searched_config(run_config, BENCH)
    assert not hasattr(lib, "read_run_config")  # one reader


# ----------------------------------------------------------------------------------------
# Meta-training regimes: the trainer's own state and step.


def test_meta_train_step_is_the_runs(tiny_data_dir):
    """A regime's run is the benchmark's config with the regime's move, and its state and
    step are train.build's: Huber loss, cosine step size, initial temperature and the
    symmetric-structure prior all carried (same parameters as train.build after a whole
    decayed schedule)."""
    config = flagfile_config(
        data_dir=tiny_data_dir,
        loss="huber",
        final_learning_rate=1e-4,
        initial_temperature=1e-3,
        symmetric_structure=True,
        exact_stride=2,
    )
    data = loading.load_data(config)
    run, setup = lib.meta_train_setup("exact_sweep", config, data.train.states[:1])
    expected = dataclasses.replace(config, proposal="exact_sweep", test_proposal="blocked_gibbs")
    assert run == expected
    ref = train.build(expected, distributed.make_mesh(), data.train.states[:1])
    state, ref_state = setup.init_fn(), ref.init_fn()
    assert float(state.temperature) == pytest.approx(1e-3)
    assert bool(structure_priors.is_symmetric(state.structures, config.num_particles).all())
    per_epoch = config.num_train // config.batch_size
    for i in range(config.num_epochs * per_epoch):
        epoch, offset = divmod(i, per_epoch)
        ids = task_batches(config.num_train, config.batch_size, config.seed, epoch)[offset]
        batch = lib.bouncegrad.Batch(
            jnp.asarray(ids),
            jnp.asarray(data.train.states[ids]),
            jnp.asarray(data.train.labels[ids]),
        )
        params_before = jax.tree.map(np.array, state.params)  # the step donates the state
        state, metrics = setup.step_fn(state, batch)
        ref_state, ref_metrics = ref.step_fn(ref_state, batch)
        if i == 0:  # the loss is the Huber rollout loss of the annealed structures
            huber = gnn.rollout_loss(
                setup.bank,
                params_before,
                batch.states,
                jnp.asarray(state.structures)[batch.task_ids],
                config.p,
                huber_delta=0.01,
            )
            assert float(metrics["loss"]) == pytest.approx(float(huber.mean()), rel=1e-5)
    jax.tree.map(np.testing.assert_array_equal, state.params, ref_state.params)


# ----------------------------------------------------------------------------------------
# --supervised: modules trained on the true structures by the one true-edges trainer.


def test_supervised_models_take_the_configs_schedule_and_cache_key(tmp_path, tiny_data_dir):
    """``--supervised`` modules are the true-edges trainer's of the benchmark's config
    (:func:`true_edges.train_true_edges_from_config`): its step-size schedule (a cosine to
    ``final_learning_rate``, once silently dropped for a constant step) and bank, with the
    MSE loss whatever ``--loss`` says; the schedule is in the cache key only when set, so
    the cache folders of default settings keep their names."""
    from nri_modular.baselines import true_edges

    config = flagfile_config(data_dir=tiny_data_dir, final_learning_rate=1e-4, loss="huber")
    data = loading.load_data(config)
    default_meta = lib.model_meta("springs", dataclasses.replace(config, final_learning_rate=0.0))
    assert "final_learning_rate" not in default_meta
    assert lib.model_meta("springs", config) == {**default_meta, "final_learning_rate": 1e-4}

    trained = lib.train_or_load("springs", data.train, config, str(tmp_path), log=lambda _: None)
    assert not trained.from_cache and trained.config.loss == "mse"
    mse_run = dataclasses.replace(config, loss="mse")
    expected, _ = true_edges.train_true_edges_from_config(mse_run, data.train)
    constant, _ = true_edges.train_true_edges_from_config(
        dataclasses.replace(mse_run, final_learning_rate=0.0), data.train
    )
    got = jax.tree.leaves(trained.params)
    for a, b in zip(got, jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert not all(
        np.allclose(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(got, jax.tree.leaves(constant), strict=True)
    )
    again = lib.train_or_load("springs", data.train, config, str(tmp_path), log=lambda _: None)
    assert again.from_cache and again.cache_path == trained.cache_path
    jax.tree.map(np.testing.assert_array_equal, again.params, trained.params)
