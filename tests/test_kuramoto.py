"""Tests of the Kuramoto simulator against an independent scipy reference
(tests/reference_kuramoto.py: DOP853 at rtol = atol = 1e-12, one trajectory at a time).

Tolerances are the errors measured on these seeds (each test says which) with a margin of
about 10x; the module docstring has the table over many trajectories. Float64 RK4 at the
default step has a truncation error of ~1e-7 rad or less; float32 adds rounding, ~5e-7
rad on a typical trajectory, amplified up to ~1000x on the few trajectories that are
sensitive to perturbations (the ODE itself: moving the initial phases by 1e-7 rad moves
those by as much, and the published generator, whose right-hand side is float32,
deviates there too). A wrong sign, direction, stage weight, step or sample index moves phases by
1e-3 rad or (much) more.
"""

import os

import chex
import jax
import numpy as np
import pytest
import reference_kuramoto as ref

from nri_modular.data import kuramoto

CASES = {5: 12, 10: 6}  # oscillators: trajectories compared with the reference


@pytest.fixture(scope="module")
def cases():
    """Per ``n``: initial conditions (our sampler, float32) and the reference's grid
    solutions ``phi [sims, n, 1000]``."""
    pytest.importorskip("scipy")
    out = {}
    for n, sims in CASES.items():
        phase0, omega, couplings = (
            np.asarray(a) for a in kuramoto.sample_initial(jax.random.key(n), sims, n)
        )
        grid = np.stack([ref.solve(phase0[s], omega[s], couplings[s]) for s in range(sims)])
        out[n] = (phase0, omega, couplings, grid)
    return out


def _reference_samples(grid):
    """``(phase, rate)`` ``[sims, n, 100]`` of the reference at the frame times."""
    samples = [ref.frame_samples(g) for g in grid]
    return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])


def _ours(phase0, omega, couplings, dtype=np.float32, **kwargs):
    with jax.enable_x64(dtype == np.float64):
        return kuramoto.integrate(phase0.astype(dtype), omega.astype(dtype), couplings, **kwargs)


@pytest.mark.parametrize("n, phase_tol, rate_tol", [(5, 4e-6, 1e-5), (10, 1e-6, 2e-6)])
def test_float64_trajectories_match_reference(cases, n, phase_tol, rate_tol):
    """The RK4 scheme itself (float64, default steps h = dt for n = 5, dt / 2 for n = 10):
    measured max 4.0e-7 / 6.7e-8 rad for the phase and 9.3e-7 / 1.9e-7 rad/s for the rate
    (n = 5 / 10). The next test checks the order."""
    phase0, omega, couplings, grid = cases[n]
    ours = _ours(phase0, omega, couplings, np.float64)
    ref_phase, ref_rate = _reference_samples(grid)
    chex.assert_shape(ours.phase, (CASES[n], n, 100))
    chex.assert_shape(ours.rate, (CASES[n], n, 100))
    np.testing.assert_allclose(ours.phase, ref_phase, rtol=0, atol=phase_tol)
    np.testing.assert_allclose(ours.rate, ref_rate, rtol=0, atol=rate_tol)
    # the first frame is t = 0 (phi rebuilt from theta + theta_lo + 2 pi turns: 1 ulp)
    np.testing.assert_allclose(ours.phase[:, :, 0], phase0, rtol=0, atol=1e-15)


def test_rk4_error_falls_as_h_to_the_fourth(cases):
    """Halving the step divides the float64 error by ~16 (measured 16.0)."""
    phase0, omega, couplings, grid = cases[5]
    ref_phase, _ = _reference_samples(grid)
    errors = [
        np.abs(_ours(phase0, omega, couplings, np.float64, substeps=s).phase - ref_phase).max()
        for s in (1, 2)
    ]
    assert 10 < errors[0] / errors[1] < 25, errors


@pytest.mark.parametrize(
    "n, phase_tols, rate_tols", [(5, (3e-6, 2e-5), (1e-5, 3e-5)), (10, (5e-6, 5e-4), (2e-5, 2e-3))]
)
def test_float32_trajectories_match_reference(cases, n, phase_tols, rate_tols):
    """The production path (float32, compensated phases, default steps). Per-trajectory max
    error, median and max over the trajectories: phase 4.2e-7 and 1.7e-6 rad (n = 5),
    8.3e-7 and 5.9e-5 rad (n = 10, one sensitive trajectory); rate 1.1e-6 and 2.2e-6 (n = 5),
    2.3e-6 and 1.9e-4 rad/s (n = 10). Without the compensation the median phase error is
    ~7e-6 rad."""
    phase0, omega, couplings, grid = cases[n]
    ours = _ours(phase0, omega, couplings)
    ref_phase, ref_rate = _reference_samples(grid)
    for got, expected, (median_tol, max_tol) in (
        (ours.phase, ref_phase, phase_tols),
        (ours.rate, ref_rate, rate_tols),
    ):
        per_sim = np.abs(got - expected).max(axis=(1, 2))
        assert np.median(per_sim) < median_tol, per_sim
        assert per_sim.max() < max_tol, per_sim


def test_features_of_reference_samples_equal_reference_features(cases):
    """:func:`kuramoto.features` is the reference's feature rule, to float32 rounding."""
    for n in CASES:
        phase0, omega, couplings, grid = cases[n]
        ref_phase, ref_rate = _reference_samples(grid)
        expected = np.stack(
            [ref.trajectory_features(g, omega[s], couplings[s]) for s, g in enumerate(grid)]
        )
        got = kuramoto.features(ref_phase, ref_rate, omega, couplings)
        chex.assert_shape(got, (CASES[n], n, 99, 4))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n, tol", [(5, 5e-5), (10, 5e-4)])
def test_simulated_features_match_reference(cases, n, tol):
    """Our float32 trajectories' features against the reference's: measured max 6.2e-6 /
    3.7e-5 (n = 5 / 10), the errors above times 2 / range of each scaled feature."""
    phase0, omega, couplings, grid = cases[n]
    ours = kuramoto.features(*_ours(phase0, omega, couplings))
    expected = np.stack(
        [ref.trajectory_features(g, omega[s], couplings[s]) for s, g in enumerate(grid)]
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tol)


# ----------------------------------------------------------------------------------------
# Conventions.


def _fixed(n, links, sims=1):
    """Initial conditions with the couplings ``links = [(i, j), ...]`` (k_ij = 1)."""
    rng = np.random.default_rng(7)
    phase0 = rng.uniform(0, 2 * np.pi, (sims, n)).astype(np.float32)
    omega = rng.uniform(1, 10, (sims, n)).astype(np.float32)
    couplings = np.zeros((sims, n, n), np.int32)
    for i, j in links:
        couplings[:, i, j] = 1
    return phase0, omega, couplings


def test_an_oscillator_nothing_drives_runs_free_and_has_zero_rate_feature():
    """Row ``k_0.`` all zero (0 drives others but nothing drives 0): ``dphi_0/dt = omega_0``
    exactly, so ``phi_0 = phi_0(0) + omega_0 t`` and its feature 0 is 0; oscillator 1,
    driven by 0, is not free."""
    phase0, omega, couplings = _fixed(3, [(1, 0), (2, 1), (1, 2)])
    traj = _ours(phase0, omega, couplings)
    t = 0.1 * np.arange(100)
    # float32: each step's increment rounds alike, <= 2e-7 of the advance (< 100 rad)
    np.testing.assert_allclose(traj.phase[0, 0], phase0[0, 0] + omega[0, 0] * t, atol=2e-5)
    np.testing.assert_allclose(traj.rate[0, 0], omega[0, 0], rtol=1e-6)
    assert np.ptp(traj.rate[0, 0]) == 0  # every grid step sums the same increments
    assert np.ptp(traj.rate[0, 1]) > 0.5  # driven by 0: speeds up and slows down
    feat = kuramoto.features(*traj, num_frames=100)
    np.testing.assert_array_equal(feat[0, 0, :, 0], 0.0)
    assert feat[0, 1, :, 0].min() == -1.0 and feat[0, 1, :, 0].max() == 1.0


def test_couplings_i_j_means_j_drives_i():
    """``k_01 = 1`` changes oscillator 0 only; ``k_10 = 1`` changes oscillator 1 only; the
    coupled oscillator's speed is ``omega_i + sin(phi_j - phi_i)`` (sign and direction)."""
    free = _ours(*_fixed(3, []))
    zero_from_one = _ours(*_fixed(3, [(0, 1)]))
    one_from_zero = _ours(*_fixed(3, [(1, 0)]))
    for traj, driven, untouched in ((zero_from_one, 0, (1, 2)), (one_from_zero, 1, (0, 2))):
        np.testing.assert_array_equal(traj.phase[0, untouched], free.phase[0, untouched])
        assert np.abs(traj.phase[0, driven] - free.phase[0, driven]).max() > 0.05
    # the first forward difference, (phi(dt) - phi(0)) / dt = f + dt/2 f' + O(dt^2) with
    # f = omega_0 + sin(d), d = phi_1 - phi_0, f' = cos(d) (omega_1 - f); the other sign
    # omega_0 - sin(d) is 2 |sin(d)| away
    phase0, omega, _ = _fixed(3, [])
    d = float(phase0[0, 1]) - float(phase0[0, 0])
    f = omega[0, 0] + np.sin(d)
    expected = f + 0.005 * np.cos(d) * (omega[0, 1] - f)
    assert abs(zero_from_one.rate[0, 0, 0] - expected) < 2e-3
    assert 2 * abs(np.sin(d)) > 0.1


def test_sample_couplings_are_directed_half_dense_without_self_loops():
    k = np.asarray(kuramoto.sample_couplings(jax.random.key(0), 4000, 5))
    chex.assert_shape(k, (4000, 5, 5))
    assert set(np.unique(k)) == {0, 1}
    assert not k[:, np.arange(5), np.arange(5)].any()
    off = ~np.eye(5, dtype=bool)
    per_entry = k.mean(axis=0)[off]  # 20 entries, sd 0.0079 each
    assert np.abs(per_entry - 0.5).max() < 0.04, per_entry
    upper = np.triu(np.ones((5, 5), bool), 1)
    both = (k & np.swapaxes(k, 1, 2))[:, upper].mean()  # independent: 1/4 (symmetric: 1/2)
    assert abs(both - 0.25) < 0.01, both
    same = (k == np.swapaxes(k, 1, 2))[:, upper].mean()  # independent: 1/2 (symmetric: 1)
    assert abs(same - 0.5) < 0.015, same


def test_sample_initial_distribution():
    phase0, omega, couplings = (
        np.asarray(a) for a in kuramoto.sample_initial(jax.random.key(1), 4000, 5)
    )
    assert phase0.dtype == omega.dtype == np.float32
    assert 0 <= phase0.min() and phase0.max() < 2 * np.pi
    assert 1 <= omega.min() and omega.max() < 10
    # means and spreads of U[0, 2 pi) and U[1, 10) (20000 draws: sd 0.013 and 0.018)
    assert abs(phase0.mean() - np.pi) < 0.06 and abs(phase0.std() - 2 * np.pi / 12**0.5) < 0.05
    assert abs(omega.mean() - 5.5) < 0.08 and abs(omega.std() - 9 / 12**0.5) < 0.06
    np.testing.assert_array_equal(
        couplings, kuramoto.sample_couplings(jax.random.split(jax.random.key(1), 3)[2], 4000, 5)
    )


# ----------------------------------------------------------------------------------------
# Splits.


@pytest.fixture(scope="module")
def split_key():
    return jax.random.key(11)


@pytest.fixture(scope="module")
def test_split(split_key):
    return kuramoto.generate_split(split_key, 24, 5, 99, chunk_size=12)


def test_split_shapes_dtypes_and_scaling(split_key, test_split):
    feat, edges = test_split
    chex.assert_shape(feat, (24, 5, 99, 4))
    chex.assert_shape(edges, (24, 5, 5))
    assert feat.dtype == np.float32 and edges.dtype == np.int64
    assert np.isfinite(feat).all()
    traj = kuramoto.simulate(split_key, 24, 5, chunk_size=12)
    np.testing.assert_array_equal(edges, traj.couplings)
    full = kuramoto.features(*traj, num_frames=100)  # the 100 samples normalised over
    np.testing.assert_array_equal(feat, full[:, :, :99])
    driven = edges.sum(axis=-1) > 0
    for f in (0, 2):  # min-max per oscillator and trajectory: exactly -1 and +1
        lo, hi = full[..., f].min(axis=-1), full[..., f].max(axis=-1)
        mask = driven if f == 0 else np.ones_like(driven)
        np.testing.assert_array_equal(lo[mask], -1.0)
        np.testing.assert_array_equal(hi[mask], 1.0)
    np.testing.assert_array_equal(full[~driven][..., 0], 0.0)
    np.testing.assert_allclose(full[..., 1], np.sin(traj.phase), atol=1e-7)
    scaled_omega = ((traj.omega.astype(np.float64) - 1) * 2 / 9 - 1).astype(np.float32)
    np.testing.assert_array_equal(full[..., 3], np.repeat(scaled_omega[..., None], 100, -1))
    # the phase grows overall, so its scaled feature starts near -1 and ends near +1
    assert (feat[:, :, 0, 2] < -0.8).mean() > 0.9 and (feat[:, :, -1, 2] > 0.8).mean() > 0.9


def test_train_split_is_the_first_49_frames_of_the_test_length(split_key, test_split):
    feat49, edges49 = kuramoto.generate_split(split_key, 24, 5, 49, chunk_size=12)
    chex.assert_shape(feat49, (24, 5, 49, 4))
    np.testing.assert_array_equal(feat49, test_split[0][:, :, :49])
    np.testing.assert_array_equal(edges49, test_split[1])
    # ... which is not what normalising a 49-frame simulation would give
    short = kuramoto.features(*kuramoto.simulate(split_key, 24, 5, 49, chunk_size=12))
    np.testing.assert_array_equal(short[..., 3], feat49[..., 3])
    assert np.abs(short[..., 2] - feat49[..., 2]).max() > 0.5


def test_reproducible_from_the_seed_and_independent_of_chunking(split_key, test_split):
    again = kuramoto.generate_split(split_key, 24, 5, 99, chunk_size=12)
    np.testing.assert_array_equal(again[0], test_split[0])
    np.testing.assert_array_equal(again[1], test_split[1])
    other_chunks = kuramoto.generate_split(split_key, 24, 5, 99, chunk_size=7)
    np.testing.assert_allclose(other_chunks[0], test_split[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(other_chunks[1], test_split[1])
    other_seed = kuramoto.generate_split(jax.random.key(12), 24, 5, 99, chunk_size=12)
    assert not np.array_equal(other_seed[1], test_split[1])
    assert np.abs(other_seed[0] - test_split[0]).max() > 0.5


def test_write_split_in_nri_layout_refuses_to_overwrite(tmp_path, test_split):
    feat, edges = test_split
    folder = str(tmp_path / "kuramoto")
    paths = kuramoto.write_split(folder, "test", feat, edges)
    assert [os.path.basename(p) for p in paths] == [
        "feat_test_kuramoto5.npy",
        "edges_test_kuramoto5.npy",
    ]
    loaded_feat, loaded_edges = (np.load(p) for p in paths)
    assert loaded_feat.dtype == np.float32 and loaded_edges.dtype == np.int64
    np.testing.assert_array_equal(loaded_feat, feat)
    np.testing.assert_array_equal(loaded_edges, edges)
    with pytest.raises(FileExistsError, match="feat_test_kuramoto5.npy"):
        kuramoto.write_split(folder, "test", feat, edges)
    # an existing edges file alone also stops the write, before anything is written
    os.remove(paths[0])
    with pytest.raises(FileExistsError, match="edges_test_kuramoto5.npy"):
        kuramoto.write_split(folder, "test", feat, edges)
    assert not os.path.exists(paths[0])


_KEY = jax.random.key(0)
_Z = np.zeros


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kuramoto.sample_couplings(_KEY, 0, 5), "num_sims"),
        (lambda: kuramoto.sample_initial(_KEY, 4, 1), "oscillators"),
        (lambda: kuramoto.generate_split(_KEY, 4, 5, 100), "frames"),
        (lambda: kuramoto.simulate(_KEY, 4, 5, substeps=0), "substeps"),
        (lambda: kuramoto.simulate(_KEY, 4, 5, chunk_size=0), "chunk_size"),
        (lambda: kuramoto.simulate(_KEY, 4, 5, dtype=np.int32), "dtype"),
        (lambda: kuramoto.integrate(_Z((2, 3)), _Z((2, 3)), _Z((2, 3, 2))), "couplings"),
        (lambda: kuramoto.integrate(_Z((2, 3)) + 10, _Z((2, 3)), _Z((2, 3, 3))), "phase0"),
        (
            lambda: kuramoto.features(_Z((2, 3, 5)), _Z((2, 3, 5)), _Z((2, 3)), _Z((2, 3, 3)), 6),
            "num_frames",
        ),
        (lambda: kuramoto.write_split("unused", "test", _Z((2, 3, 4, 4)), _Z((2, 3, 4))), "edges"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
