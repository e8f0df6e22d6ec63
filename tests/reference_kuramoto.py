"""Independent numpy + scipy reference of the Kuramoto generator (test and benchmark only).

Written from the facts in ``shared/DATA_SPEC.md`` / ``nri_modular/data/kuramoto.py``'s
docstring, one trajectory at a time and with none of the simulator's code:

* :func:`solve` integrates ``dphi_i/dt = omega_i + sum_j k_ij sin(phi_j - phi_i)`` with
  ``scipy.integrate.solve_ivp`` (DOP853, ``rtol = atol = 1e-12`` by default) and returns
  ``phi`` on the grid ``t_k = k dt``, ``k = 0, ..., 10 (F + 1) - 1``.
* :func:`trajectory_features` turns one such grid solution into the four features.
* :func:`published_generator` re-implements the loop of the published generator for the
  benchmark: per trajectory, numpy's global-style ``RandomState`` draws, scipy's
  ``ode(...).set_integrator("dopri5")`` with its default tolerances stepped from grid point
  to grid point, and a right-hand side evaluated in float32 (the published code starts
  from ``omega.astype(float32)`` and adds the coupling sum in place).
"""

from __future__ import annotations

import numpy as np

DT = 0.01
RECORD_EVERY = 10


def grid(num_frames: int) -> np.ndarray:
    """The ``10 (num_frames + 1)`` grid times ``k dt`` (``np.arange(0, 10, 0.01)`` for 99)."""
    return np.arange(RECORD_EVERY * (num_frames + 1)) * DT


def rhs(t: float, phi: np.ndarray, omega: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``omega_i + sum_j k_ij sin(phi_j - phi_i)`` for one trajectory (``phi [n]``)."""
    del t
    return omega + (k * np.sin(phi[np.newaxis, :] - phi[:, np.newaxis])).sum(axis=1)


def solve(
    phase0: np.ndarray,
    omega: np.ndarray,
    k: np.ndarray,
    num_frames: int = 99,
    method: str = "DOP853",
    rtol: float = 1e-12,
    atol: float = 1e-12,
) -> np.ndarray:
    """``phi [n, 10 (num_frames + 1)]`` on the grid, by an adaptive scipy solver."""
    from scipy.integrate import solve_ivp

    times = grid(num_frames)
    args = (np.asarray(omega, np.float64), np.asarray(k, np.float64))
    sol = solve_ivp(
        rhs,
        (times[0], times[-1]),
        np.asarray(phase0, np.float64),
        method=method,
        t_eval=times,
        rtol=rtol,
        atol=atol,
        args=args,
    )
    assert sol.success, sol.message
    return sol.y


def frame_samples(phi_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(phase, rate)`` ``[n, F + 1]`` at grid points ``10 f``: ``phi`` and the forward
    difference ``(phi[10 f + 1] - phi[10 f]) / dt``."""
    phase = phi_grid[:, ::RECORD_EVERY]
    rate = (phi_grid[:, 1::RECORD_EVERY] - phi_grid[:, ::RECORD_EVERY]) / DT
    return phase, rate


def _scale(row: np.ndarray) -> np.ndarray:
    low, high = row.min(), row.max()
    return (row - low) * 2 / (high - low) - 1


def trajectory_features(
    phi_grid: np.ndarray, omega: np.ndarray, k: np.ndarray, num_frames: int | None = None
) -> np.ndarray:
    """Features ``[n, num_frames, 4]`` (float64) of one grid solution ``phi [n, G]``.

    Per oscillator: ``[scaled dphi/dt (0 if no j drives i), sin phi, scaled phi,
    scaled omega]``, min-max over all ``G / 10`` samples, then the first ``num_frames``
    kept (default ``G / 10 - 1``).
    """
    phase, rate = frame_samples(phi_grid)
    n, samples = phase.shape
    num_frames = samples - 1 if num_frames is None else num_frames
    out = np.zeros((n, samples, 4))
    for i in range(n):
        if np.any(np.asarray(k)[i] != 0):
            out[i, :, 0] = _scale(rate[i])
        out[i, :, 1] = np.sin(phase[i])
        out[i, :, 2] = _scale(phase[i])
        out[i, :, 3] = (omega[i] - 1.0) * 2 / 9.0 - 1.0
    return out[:, :num_frames]


def published_generator(
    num_sims: int, n: int = 5, seed: int = 0, num_frames: int = 99
) -> tuple[np.ndarray, np.ndarray]:
    """The published generator's per-trajectory loop (our code; for the benchmark).

    Returns:
      ``(feat [num_sims, n, num_frames, 4] float32, edges [num_sims, n, n] int64)``.
    """
    from scipy.integrate import ode

    rng = np.random.RandomState(seed)
    times = np.arange(0, (num_frames + 1) // RECORD_EVERY, DT)

    def f(t, y, omega, k):  # float32 result, as the published right-hand side
        out = omega.astype(np.float32)
        out += (k * np.sin(y[np.newaxis, :] - y[:, np.newaxis])).sum(axis=1)
        return out

    feats, edges_all = [], []
    for _ in range(num_sims):
        omega = rng.rand(n) * 9 + 1.0
        phase0 = rng.rand(n) * 2 * np.pi
        edges = rng.choice(2, size=(n, n), p=[0.5, 0.5])
        np.fill_diagonal(edges, 0)
        solver = ode(f).set_integrator("dopri5")
        solver.set_initial_value(phase0, times[0])
        solver.set_f_params(omega, edges)
        phi = np.empty((n, len(times)))
        for idx in range(len(times) - 1):
            phi[:, idx] = solver.y
            solver.integrate(times[idx + 1])
        phi[:, -1] = solver.y
        feats.append(trajectory_features(phi, omega, edges, num_frames))
        edges_all.append(edges)
    return np.array(feats, np.float32), np.array(edges_all, np.int64)
