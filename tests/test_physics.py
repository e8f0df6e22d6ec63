"""Tests of the JAX simulators against the numpy reference loop (tests/reference_sim.py)."""

import os
import platform
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_sim as ref

from nri_modular.data import physics

SYSTEMS = ("springs", "charged")


def _initial_states(system, num_sims, seed=0, dtype=np.float64):
    """Our sampler's ``loc0 [B, 2, n]``, ``vel0 [B, 2, n]``, ``relations [B, n, n]``."""
    return physics.sample_initial_states(seed, system, num_sims, 5, dtype)


def _integrate64(loc0, vel0, edges, system, num_steps, sample_freq=100):
    with jax.enable_x64(True):
        out = physics.integrate_batch(
            loc0, vel0, edges, system=system, num_steps=num_steps, sample_freq=sample_freq
        )
        return tuple(np.asarray(a) for a in out)


def test_frame_count_and_first_frame_is_step_100():
    assert physics.num_frames(5000, 100) == 49
    assert physics.num_frames(10000, 100) == 99
    # No interaction: x(frame k) = x0 + (k + 1) * 100 * dt * v0 (frame 0 is step 100).
    loc0 = np.array([[[0.0, 1.0, -1.0], [0.5, 0.0, 0.2]]])
    vel0 = np.array([[[0.3, -0.4, 0.0], [0.4, 0.3, -0.5]]])
    loc, vel = _integrate64(loc0, vel0, np.zeros((1, 3, 3)), "springs", 1000)
    chex.assert_shape(loc, (1, 9, 2, 3))
    steps = 100 * np.arange(1, 10)
    expected = loc0[:, None] + steps[None, :, None, None] * 0.001 * vel0[:, None]
    np.testing.assert_allclose(loc, expected, atol=1e-12)
    np.testing.assert_array_equal(vel, np.broadcast_to(vel0[:, None], vel.shape))


def test_springs_float64_matches_reference_over_5000_steps():
    loc0, vel0, edges = _initial_states("springs", 8, seed=1)
    loc, vel = _integrate64(loc0, vel0, edges, "springs", 5000)
    chex.assert_shape(loc, (8, 49, 2, 5))
    for s in range(8):  # the plain per-simulation loop
        rloc, rvel = ref.integrate(loc0[s], vel0[s], edges[s], "springs", 5000)
        np.testing.assert_allclose(loc[s], rloc, rtol=0, atol=1e-9)
        np.testing.assert_allclose(vel[s], rvel, rtol=0, atol=1e-9)


def test_charged_float64_matches_reference_frame_by_frame():
    """From every reference frame, our next frame (100 steps) matches to 1e-9.

    Free runs of a chaotic system separate once rounding differs by one ulp (XLA fuses
    ``x + dt * v`` into an FMA); restarting from the reference's state at each frame
    bounds the divergence to 100 steps. The bitwise free-run check is the next test.
    """
    loc0, vel0, edges = _initial_states("charged", 16, seed=2)
    rloc, rvel = ref.integrate(loc0, vel0, edges, "charged", 5000)  # [16, 49, 2, 5]
    start_loc = np.concatenate([loc0[:, None], rloc[:, :-1]], axis=1).reshape(-1, 2, 5)
    start_vel = np.concatenate([vel0[:, None], rvel[:, :-1]], axis=1).reshape(-1, 2, 5)
    # a recorded state's next operation in the reference is a force kick, as for an
    # initial state, so integrating one frame from it continues the reference loop
    loc, vel = _integrate64(start_loc, start_vel, np.repeat(edges, 49, axis=0), "charged", 200)
    np.testing.assert_allclose(loc[:, 0], rloc.reshape(-1, 2, 5), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vel[:, 0], rvel.reshape(-1, 2, 5), rtol=0, atol=1e-9)
    # and the first 1000 steps in one free run, for most simulations
    free_loc, _ = _integrate64(loc0, vel0, edges, "charged", 1100)
    err = np.abs(free_loc - rloc[:, :10]).max(axis=(1, 2, 3))
    assert np.median(err) < 1e-12, err


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 ISA flag")
def test_float64_bitwise_equal_to_reference_without_fma():
    """With FMA contraction off (AVX without FMA), free runs equal the reference exactly."""
    script = textwrap.dedent(
        """
        import jax, numpy as np, reference_sim as ref
        from nri_modular.data import physics
        jax.config.update("jax_enable_x64", True)
        for system, steps in (("charged", 1100), ("springs", 1100)):
            l0, v0, e = physics.sample_initial_states(3, system, 16)
            loc, vel = physics.integrate_batch(l0, v0, e, system=system, num_steps=steps)
            rloc, rvel = ref.integrate(l0, v0, e, system, steps)
            assert np.array_equal(np.asarray(loc), rloc), system
            assert np.array_equal(np.asarray(vel), rvel), system
        print("bitwise-ok")
        """
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX").strip()
    env["JAX_PLATFORMS"] = "cpu"
    tests_dir = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join([tests_dir, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "bitwise-ok" in out.stdout, out.stderr[-3000:]


def test_walls_and_force_clipping_match_reference():
    # particle 0 starts 1 mm inside the right wall moving out; particles 1, 2 of charged
    # are 0.05 apart (Coulomb force 400 > 100: clipped).
    loc0 = np.array([[4.999, 0.0, 0.05, -2.0, 1.0], [0.0, -4.999, -4.999, 1.0, 2.0]])
    vel0 = np.array([[0.5, 0.0, 0.0, 0.3, -0.4], [0.0, -0.5, 0.0, 0.4, 0.3]])
    charged = np.outer([1.0, 1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0, -1.0])
    springs = np.ones((5, 5)) - np.eye(5)
    # the charged force between particles 1 and 2 is 1 / 0.05^2 = 400: clipped to 100
    assert np.abs(ref.forces(loc0, charged, "charged")).max() == 100.0
    for system, edges in (("springs", springs), ("charged", charged)):
        loc, vel = _integrate64(loc0[None], vel0[None], edges[None], system, 300, sample_freq=10)
        rloc, rvel = ref.integrate(loc0, vel0, edges, system, 300, sample_freq=10)
        assert np.all(np.abs(loc) <= 5.0)
        assert vel[0, 0, 0, 0] < 0  # reflected off +box
        assert vel[0, 0, 1, 1] > 0  # reflected off -box
        np.testing.assert_allclose(loc[0], rloc, rtol=0, atol=1e-9)
        np.testing.assert_allclose(vel[0], rvel, rtol=0, atol=1e-9)


def test_float32_drift_from_float64_is_small_for_springs():
    loc0, vel0, edges = _initial_states("springs", 16, seed=4)
    loc64, _ = _integrate64(loc0, vel0, edges, "springs", 5000)
    loc32, _ = physics.integrate_batch(
        loc0.astype(np.float32), vel0.astype(np.float32), edges.astype(np.float32),
        system="springs", num_steps=5000,
    )  # fmt: skip
    assert loc32.dtype == jnp.float32
    drift = np.abs(np.asarray(loc32)[:, -1] - loc64[:, -1]).max()
    assert drift < 1e-3, drift  # measured: max 3e-4, median 3e-6 over 200 sims


def _per_sim_stats(loc, vel, frames=(0, 24, 48)):
    """Per-simulation statistics ``{name: [sims]}`` at the given frames."""
    out = {}
    for f in frames:
        x, v = loc[:, f], vel[:, f]  # [sims, 2, n]
        speed = np.sqrt((v**2).sum(axis=1))
        out[f"mean_x@{f}"] = x.mean(axis=(1, 2))
        out[f"mean_x2@{f}"] = (x**2).mean(axis=(1, 2))
        out[f"speed@{f}"] = speed.mean(axis=1)
        out[f"kinetic@{f}"] = 0.5 * (v**2).sum(axis=(1, 2))
    return out


def _z_scores(a, b):
    return {
        k: (a[k].mean() - b[k].mean())
        / np.sqrt(a[k].var(ddof=1) / len(a[k]) + b[k].var(ddof=1) / len(b[k]) + 1e-30)
        for k in a
    }


@pytest.mark.parametrize("system", SYSTEMS)
def test_distribution_matches_reference(system):
    """Means of per-simulation statistics agree within sampling error (|z| < 4.5)."""
    num = 300
    loc, vel, edges = physics.simulate(system, 7, num, chunk_size=150)
    rloc, rvel, redges = ref.simulate_vectorised(system, num, seed=8)  # independent draws
    z = _z_scores(_per_sim_stats(loc, vel), _per_sim_stats(rloc, rvel))
    off = ~np.eye(5, dtype=bool)
    z["edge_frac"] = _z_scores(
        {"e": (edges[:, off] > 0).mean(axis=1)}, {"e": (redges[:, off] > 0).mean(axis=1)}
    )["e"]
    bad = {k: round(float(v), 2) for k, v in z.items() if abs(v) > 4.5}
    assert not bad, bad


def test_relations():
    _, _, springs = _initial_states("springs", 64, dtype=np.float32)
    np.testing.assert_array_equal(springs, np.swapaxes(springs, 1, 2))
    np.testing.assert_array_equal(np.diagonal(springs, axis1=1, axis2=2), 0)
    assert set(np.unique(springs)) == {0.0, 1.0}
    _, vel, charged = _initial_states("charged", 64, dtype=np.float32)
    np.testing.assert_allclose(np.sqrt((vel**2).sum(axis=1)), 0.5, rtol=1e-6)
    q = charged[:, :, 0] * charged[:, 0, 0][:, None]  # charges up to a global sign
    np.testing.assert_array_equal(charged, q[:, :, None] * q[:, None, :])
    assert set(np.unique(q)) == {-1.0, 1.0}


def test_simulate_is_independent_of_chunk_size_and_float64_is_scoped():
    a = physics.simulate("charged", 3, 10, num_steps=300, chunk_size=4)
    b = physics.simulate("charged", 3, 10, num_steps=300, chunk_size=10)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    chex.assert_shape(a, [(10, 2, 2, 5), (10, 2, 2, 5), (10, 5, 5)])
    loc, _, _ = physics.simulate("springs", 3, 2, num_steps=300, dtype=np.float64)
    assert loc.dtype == np.float64
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(system="gravity"), "unknown system 'gravity'"),
        (dict(num_sims=0), "num_sims must be a positive integer"),
        (dict(num_sims=-3), "num_sims must be a positive integer"),
        (dict(num_steps=5050), "sample_freq=100 does not divide num_steps=5050"),
        (dict(num_steps=100), "records no frame"),
        (dict(sample_freq=0), "sample_freq must be positive"),
        (dict(num_particles=1), "num_particles must be an integer >= 2"),
        (dict(box_size=-1.0), "box_size must be a positive finite number"),
        (dict(dtype=np.int32), "dtype must be float32 or float64"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(spring_constant=1.0), "unknown system settings"),
    ],
)
def test_simulate_bad_arguments(kwargs, message):
    args = dict(system="springs", seed=0, num_sims=2, num_steps=300)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        physics.simulate(**args)


def test_integrate_bad_shapes():
    with pytest.raises(ValueError, match="relations must be"):
        physics.integrate_batch(
            np.zeros((2, 2, 5)), np.zeros((2, 2, 5)), np.zeros((2, 4, 4)), system="springs"
        )
    with pytest.raises(ValueError, match="loc0 and vel0 must both be"):
        physics.integrate_batch(
            np.zeros((2, 3, 5)), np.zeros((2, 3, 5)), np.zeros((2, 5, 5)), system="springs"
        )


def test_conftest_makes_rank_promotion_strict():
    with pytest.raises(ValueError, match="jax_numpy_rank_promotion=.raise."):
        jnp.zeros((2, 3)) + jnp.zeros(3)
