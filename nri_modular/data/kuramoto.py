r"""Kuramoto oscillators of NRI's benchmark grid (Kipf et al., 2018), vectorised in JAX.

The facts follow the generator NRI's authors used, published with ACD
(``loeweX/AmortizedCausalDiscovery``, ``codebase/data/kuramoto.py`` and
``generate_ODE_dataset.py``; see ``shared/DATA_SPEC.md``):

* ``n`` phase oscillators, ``dphi_i/dt = omega_i + sum_{j != i} k_ij sin(phi_j - phi_i)``:
  the coupling sum is neither divided by ``n`` nor scaled (coupling strength 1; the
  generator's ``--interaction_strength`` flag only renames its files).
* ``omega_i ~ U[1, 10)``, ``phi_i(0) ~ U[0, 2 pi)``; ``k_ij`` is 0 or 1 with probability
  1/2, each ordered pair on its own (directed: ``k_ij`` and ``k_ji`` independent), and
  ``k_ii = 0``.
* Direction: ``couplings[s, i, j] = k_ij`` is the edge *j drives i* (row ``i`` lists the
  oscillators that drive ``i``), which is the stored ``edges`` array. In NRI's loader the
  flattened off-diagonal index ``(i, j)`` has receiver ``i`` and sender ``j``.
* The reference integrates with scipy's adaptive Dormand-Prince ``ode(...).set_integrator(
  "dopri5")`` (scipy's defaults ``rtol=1e-6``, ``atol=1e-12``), called from grid point to
  grid point of ``t_k = k dt``, ``dt = 0.01``, ``k = 0, ..., G - 1``
  (``np.arange(0, 10, 0.01)``: ``G = 1000``); its right-hand side is evaluated in float32
  (``omega.astype(float32)`` plus the coupling sum, added in place). For ``F`` kept frames
  it simulates ``G = 10 (F + 1)`` grid points.
* Frames: grid points ``10 f`` (``t = 0.1 f``), ``f = 0, ..., F`` (``F + 1`` samples; the
  initial state is the first frame). Features per oscillator and sample, in this order:

  0. ``dphi/dt``: the forward difference ``(phi(t_{10f+1}) - phi(t_{10f})) / dt`` over one
     grid step (``np.diff(phi)[:, ::10] / dt``), min-max scaled to ``[-1, 1]`` per
     oscillator and trajectory, then set to 0 for an oscillator nothing drives
     (``sum_j k_ij == 0``, i.e. an all-zero row of ``edges``);
  1. ``sin phi(t_{10f})``;
  2. ``phi(t_{10f})`` (unwrapped) min-max scaled to ``[-1, 1]`` per oscillator and trajectory;
  3. ``omega`` scaled from ``[1, 10]`` to ``[-1, 1]``: ``(omega - 1) * 2 / 9 - 1``.

  Min and max are taken over all ``F + 1`` samples, *then* only the first ``F`` are kept
  (99 of 100 for ``F = 99``: the sample at ``t = 9.9`` enters the scaling but is not
  stored). Features are computed in float64 and stored as float32, edges as int64.
  Train and valid trajectories are generated like test ones (99 frames, normalised over
  100 samples) and cut to their first 49 frames, so their scaling sees the whole 10 s.

Integration (ours): fixed-step classical RK4 with ``substeps`` equal steps per grid step,
``h = dt / substeps``, by default :func:`default_substeps`: ``h = dt`` for ``n <= 5``,
``h = dt / 2`` above. Chosen by measuring the phases against DOP853 at ``rtol = atol =
1e-12`` (``benchmarks/simulate_kuramoto.py --accuracy``): per trajectory the largest
``|phi - phi_DOP853|`` over the 100 samples of ``t < 10``, then max / 99th percentile /
median over 200 trajectories (published generator: 50), in rad::

    n   float64, h = dt            float64, h = dt / 2        float32, default h
    5   1.6e-6 / 1.2e-6 / 7.7e-8   1.0e-7 / 7.4e-8 / 4.8e-9   8.5e-5 / 3.4e-5 / 4.8e-7
    10  9.7e-4 / 2.3e-4 / 4.6e-7   6.1e-5 / 1.4e-5 / 2.9e-8   2.1e-3 / 2.3e-4 / 6.6e-7

    n   initial phases moved by <= 1e-7 (float64)   published dopri5 generator
    5   2.4e-5 / 1.2e-5 / 2.0e-7                    2.1e-6 / 1.9e-6 / 1.4e-7
    10  2.7e-3 / 8.4e-4 / 5.8e-7                    1.8e-4 / 1.2e-4 / 4.1e-7

The truncation error falls as ``h^4`` (16x per halving). At the default step it is below
the float32 rounding: n = 5, 6x at the median and 30-50x in the tail; n = 10, 20x at the
median and 15-35x in the tail (halving ``h`` again leaves the float32 errors as they are).
The float32 tail is the ODE's own sensitivity: moving the initial phases by 1e-7 rad (a
float32 rounding) moves the most sensitive trajectories by as much (second table); the
published generator, with its float32 right-hand side, deviates there too. Where that
matters, :func:`simulate` and :func:`integrate` run in float64.

Float32: phases grow to ~200 rad, where a float32 ulp is 1.5e-5, so the state is a
compensated wrapped phase ``phi = theta + theta_lo + 2 pi m``: ``theta`` in ``[-pi, pi)``,
``theta_lo`` its rounding error carried by an error-free two-sum (without it the typical
error is 15x larger), ``m`` an int32 turn count; ``phi`` is rebuilt in float64 on the host.
The increment over the first grid step of each frame (feature 0's difference) is summed
from the RK4 increments, so it carries no rounding of ``phi``; ``h / 6`` is applied as a
``hi + lo`` pair so that the rounding of the constant does not bias every step.

Right-hand side: ``sum_j k_ij sin(phi_j - phi_i) = cos(phi_i) sum_j k_ij sin(phi_j)
- sin(phi_i) sum_j k_ij cos(phi_j)``: ``2 n`` sines and cosines per evaluation instead of
``n (n - 1)``, by our own vectorisable polynomial :func:`_sincos` (the wrapping bounds
the arguments).

Layout: inside the compiled integrator, ``[n, B]`` arrays with the simulations on the
last (vector lane) axis and one loop iteration per RK stage (see the comment above
:func:`_sincos`); the public functions take and return ``[sims, n, ...]``.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DT = 0.01  # grid step of the reference solver's output
RECORD_EVERY = 10  # grid steps between frames
OMEGA_RANGE = (1.0, 10.0)  # omega ~ U[1, 10), scaled from [1, 10] to [-1, 1]
SIMULATED_FRAMES = 99  # every split is simulated at the test length ...
SPLIT_FRAMES = {"train": 49, "valid": 49, "test": 99}  # ... and cut to this many frames
NAME = "kuramoto"

_TWO_PI = 2.0 * math.pi
_HALF_PI = 0.5 * math.pi
# Real value minus its float64 rounding, for the pairs of :func:`_split`.
_TWO_PI_F64_LO = 2.4492935982947064e-16
_HALF_PI_F64_LO = 6.123233995736766e-17

# Signature: progress(sims_done: int, num_sims: int) -> None
ProgressFn = Callable[[int, int], None]


class Trajectories(NamedTuple):
    """Simulated trajectories at the frame times ``t = 0.1 f``, ``f = 0, ..., F``.

    Attributes:
      phase: ``[sims, n, F + 1]`` float64, unwrapped ``phi(t_{10 f})``.
      rate: ``[sims, n, F + 1]`` float64, ``(phi(t_{10 f + 1}) - phi(t_{10 f})) / dt``.
      omega: ``[sims, n]`` intrinsic frequencies (the values integrated).
      couplings: ``[sims, n, n]`` int64, ``couplings[s, i, j] = k_ij`` (j drives i).
    """

    phase: np.ndarray
    rate: np.ndarray
    omega: np.ndarray
    couplings: np.ndarray


def default_substeps(n: int) -> int:
    """RK4 steps per grid step, chosen by measurement (module docstring): ``h = dt`` for up
    to 5 oscillators, ``h = dt / 2`` above (measured up to 10)."""
    return 1 if n <= 5 else 2


# ----------------------------------------------------------------------------------------
# Sampling.


def sample_couplings(key: jax.Array, num_sims: int, n: int) -> jax.Array:
    """Directed 0/1 couplings ``[num_sims, n, n]`` int32: each ``k_ij`` (i != j) is 1 with
    probability 1/2, independently of ``k_ji``; the diagonal is 0."""
    _check_num_sims(num_sims)
    _check_oscillators(n)
    linked = jax.random.bernoulli(key, 0.5, (num_sims, n, n))
    return (linked & ~jnp.eye(n, dtype=bool)[None]).astype(jnp.int32)


def sample_initial(key: jax.Array, num_sims: int, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Initial phases, frequencies and couplings (float32 whatever the x64 setting).

    Returns:
      ``(phase0 [num_sims, n] ~ U[0, 2 pi), omega [num_sims, n] ~ U[1, 10),
      couplings [num_sims, n, n])`` (couplings from :func:`sample_couplings`).
    """
    _check_num_sims(num_sims)
    _check_oscillators(n)
    k_phase, k_omega, k_coupling = jax.random.split(key, 3)
    phase0 = jax.random.uniform(k_phase, (num_sims, n), jnp.float32, 0.0, _TWO_PI)
    omega = jax.random.uniform(k_omega, (num_sims, n), jnp.float32, *OMEGA_RANGE)
    return phase0, omega, sample_couplings(k_coupling, num_sims, n)


def _check_num_sims(num_sims: int) -> None:
    if not isinstance(num_sims, int | np.integer) or num_sims <= 0:
        raise ValueError(f"num_sims must be a positive integer, got {num_sims!r}")


def _check_oscillators(n: int) -> None:
    if not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"the number of oscillators must be an integer >= 2, got {n!r}")


def _check_frames(num_frames: int) -> None:
    if not isinstance(num_frames, int | np.integer) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")


def _substeps(substeps: int | None, n: int) -> int:
    """``substeps``, or :func:`default_substeps` for ``None``."""
    if substeps is None:
        return default_substeps(n)
    if not isinstance(substeps, int | np.integer) or substeps < 1:
        raise ValueError(f"substeps must be a positive integer, got {substeps!r}")
    return int(substeps)


# ----------------------------------------------------------------------------------------
# Dynamics on the lane layout: ``[n, B]`` arrays, simulations on the last (vector) axis.
#
# XLA:CPU compiles each output array of a loop body into its own elementwise fusion and
# recomputes inside it everything that output depends on (an optimisation barrier does
# not stop it: the CPU pipeline expands barriers before fusion). A whole RK4 step in one
# loop body is thus recomputed by every output, sines and cosines included. One loop
# iteration per RK *stage* bounds that: the loop carry is materialised, each sine and
# cosine is computed once per stage, and only the ``O(n)`` rate of one oscillator is
# recomputed by the four outputs of a stage. XLA's own ``sin``/``cos``, built for any
# argument, do not vectorise inside such fusions; :func:`_sincos` (arguments bounded by
# the wrapping) does, 3x faster.


def _taylor(x2: jax.Array, coefficients: tuple[float, ...]) -> jax.Array:
    """``sum_m c_m x2^m`` by Horner's rule."""
    out = coefficients[-1]
    for c in coefficients[-2::-1]:
        out = out * x2 + c
    return out


# Taylor coefficients for |r| <= pi/4: the first omitted term is below 1e-11 (float32,
# sin to r^11, cos to r^12) and 1e-19 (float64, sin to r^19, cos to r^20) in absolute
# value, under the rounding of the working precision.
_SIN_TERMS = {np.dtype(np.float32): 6, np.dtype(np.float64): 10}
_COS_TERMS = {np.dtype(np.float32): 7, np.dtype(np.float64): 11}


def _sincos(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sin y, cos y)`` to about one ulp for ``|y| < 5 pi / 4``.

    Quadrant ``q = round(2 y / pi)`` (``|q| <= 2``), ``r = (y - q hi) - q lo`` with
    ``pi / 2 = hi + lo``: ``q hi`` and ``y - q hi`` are exact for these ``q`` (a power of
    two times ``hi``; Sterbenz), ``|r| <= pi / 4``; Taylor polynomials of ``r``, then the
    quadrant's signs and swap. The wrapped phases keep ``|y| < pi + 0.4`` (a grid step
    moves a phase by at most ``(10 + n - 1) dt``; fine up to ``n = 31``).
    """
    dtype = np.dtype(y.dtype)
    hi, lo = _split(_HALF_PI, dtype, _HALF_PI_F64_LO)
    q = jnp.round(y * (1.0 / _HALF_PI))
    r = (y - q * hi) - q * lo
    r2 = r * r
    sin_coef = tuple((-1) ** m / math.factorial(2 * m + 1) for m in range(_SIN_TERMS[dtype]))
    cos_coef = tuple((-1) ** m / math.factorial(2 * m) for m in range(_COS_TERMS[dtype]))
    sin_r = r * _taylor(r2, sin_coef)
    cos_r = _taylor(r2, cos_coef)
    quadrant = q.astype(jnp.int32) & 3  # two's complement: -1 -> 3, -2 -> 2
    swap = (quadrant & 1) == 1
    sin_y = jnp.where(swap, cos_r, sin_r)
    cos_y = jnp.where(swap, sin_r, cos_r)
    sin_y = jnp.where(quadrant >= 2, -sin_y, sin_y)
    cos_y = jnp.where((quadrant == 1) | (quadrant == 2), -cos_y, cos_y)
    return sin_y, cos_y


def _rates(sin: jax.Array, cos: jax.Array, omega: jax.Array, couplings: jax.Array) -> jax.Array:
    """``dphi/dt [n, B]`` from ``sin phi``, ``cos phi [n, B]``, ``omega [n, B]`` and
    ``couplings [n, n, B]``: ``omega_i + cos_i sum_j k_ij sin_j - sin_i sum_j k_ij cos_j``
    (sums in the order ``j = 0, 1, ...``; ``k_ii = 0``)."""
    n = sin.shape[0]
    ks = couplings[:, 0] * sin[0][None]
    kc = couplings[:, 0] * cos[0][None]
    for j in range(1, n):
        ks = ks + couplings[:, j] * sin[j][None]
        kc = kc + couplings[:, j] * cos[j][None]
    return omega + (cos * ks - sin * kc)


def _split(value: float, dtype: np.dtype, f64_lo: float = 0.0) -> tuple[float, float]:
    """``value = hi + lo`` with ``hi`` representable in ``dtype``: for float32 ``lo`` is
    computed in float64; for float64 ``hi = value`` and ``lo = f64_lo`` (the real number's
    residual, known for the constants used)."""
    if dtype == np.float64:
        return value, f64_lo
    hi = float(np.float32(value))
    return hi, value - hi


def _grid_step(
    theta: jax.Array, theta_lo: jax.Array, omega: jax.Array, couplings: jax.Array, substeps: int
) -> jax.Array:
    """Increment ``[n, B]`` of the phases ``theta + theta_lo`` over one grid step ``dt``.

    ``substeps`` classical RK4 steps of ``h = dt / substeps``, one loop iteration per
    stage ``r = it mod 4``: ``k_r = f(y_r)``, ``y_0 = theta + theta_lo + delta``,
    ``y_1 = y_0 + h/2 k_0``,
    ``y_2 = y_0 + h/2 k_1``, ``y_3 = y_0 + h k_2``, then ``delta += h/6 (k_0 + 2 k_1 + 2 k_2
    + k_3)`` (``h / 6`` as a pair ``hi + lo``, so that no rounding of the constant biases
    every step). The increments are summed apart from ``theta``.
    """
    dtype = np.dtype(theta.dtype)
    h = DT / substeps
    sixth_hi, sixth_lo = _split(h / 6.0, dtype)

    def stage(it, carry):
        delta, acc, sin, cos = carry
        r = lax.rem(it, 4)
        k = _rates(sin, cos, omega, couplings)
        weight = jnp.where((r == 1) | (r == 2), 2.0, 1.0).astype(dtype)
        acc = acc + weight * k
        last = r == 3
        delta = jnp.where(last, delta + (acc * sixth_hi + acc * sixth_lo), delta)
        shift = jnp.where(r == 2, h, 0.5 * h).astype(dtype)
        y = theta + (theta_lo + jnp.where(last, delta, delta + shift * k))
        acc = jnp.where(last, jnp.zeros_like(acc), acc)
        return (delta, acc) + _sincos(y)

    zeros = jnp.zeros_like(theta)
    init = (zeros, zeros) + _sincos(theta + theta_lo)
    delta, _, _, _ = lax.fori_loop(0, 4 * substeps, stage, init)
    return delta


# The phase state: ``phi = theta + theta_lo + 2 pi turns`` with ``theta`` in ``[-pi, pi)``,
# ``|theta_lo|`` below a few ulp of ``theta`` and ``turns`` int32.
Phase = tuple[jax.Array, jax.Array, jax.Array]


def _advance(state: Phase, delta: jax.Array) -> Phase:
    """``state + delta``, compensated and wrapped to ``[-pi, pi)`` (one turn at most).

    ``theta + b`` (``b = theta_lo + delta``) by an error-free two-sum, so ``theta``'s
    rounding is carried in ``theta_lo`` instead of accumulating; ``2 pi = hi + lo``
    (``hi = fl(2 pi)``) with ``x - hi`` exact (Sterbenz) for ``x`` in ``[hi / 2, hi]`` and
    ``lo`` moved into ``theta_lo``.
    """
    theta, theta_lo, turns = state
    hi, lo = _split(_TWO_PI, np.dtype(theta.dtype), _TWO_PI_F64_LO)
    b = theta_lo + delta
    total = theta + b
    b_part = total - theta
    err = (theta - (total - b_part)) + (b - b_part)
    up = total >= 0.5 * hi
    down = total < -0.5 * hi
    theta = jnp.where(up, total - hi, jnp.where(down, total + hi, total))
    theta_lo = jnp.where(up, err - lo, jnp.where(down, err + lo, err))
    turns = turns + up.astype(turns.dtype) - down.astype(turns.dtype)
    return theta, theta_lo, turns


def _integrate_lanes(
    phase0: jax.Array, omega: jax.Array, couplings: jax.Array, num_frames: int, substeps: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Integrates ``B`` simulations laid out on the last axis.

    Args:
      phase0: ``[n, B]`` initial phases in ``[-3 pi, 3 pi)`` (one wrap brings them to
        ``[-pi, pi)``).
      omega: ``[n, B]``.
      couplings: ``[n, n, B]`` in the dtype of ``phase0``.
      num_frames: ``F``; ``F + 1`` samples are recorded.

    Returns:
      ``(theta, theta_lo, turns, delta)``, each ``[F + 1, n, B]``: the phase at ``t = 0.1 f``
      (``phi = theta + theta_lo + 2 pi turns``) and its increment over the next grid step.
    """

    def grid_step(state):
        delta = _grid_step(state[0], state[1], omega, couplings, substeps)
        return _advance(state, delta), delta

    def frame(state, _):
        after_one, delta = grid_step(state)
        rest = lax.fori_loop(0, RECORD_EVERY - 1, lambda _, s: grid_step(s)[0], after_one)
        return rest, state + (delta,)

    zeros = jnp.zeros_like(phase0)
    start = _advance((zeros, zeros, jnp.zeros(phase0.shape, jnp.int32)), phase0)
    state, record = lax.scan(frame, start, None, length=num_frames)
    _, last_delta = grid_step(state)  # the (F + 1)-th sample needs one grid step only
    last = state + (last_delta,)
    return tuple(jnp.concatenate([a, b[None]]) for a, b in zip(record, last, strict=True))


def _integrate_sims_first(phase0, omega, couplings, num_frames, substeps):
    """:func:`_integrate_lanes` on ``[B, n]`` / ``[B, n, n]``; returns ``[B, n, F + 1]``."""
    out = _integrate_lanes(
        phase0.T, omega.T, jnp.transpose(couplings, (1, 2, 0)), num_frames, substeps
    )
    return tuple(jnp.transpose(a, (2, 1, 0)) for a in out)


_integrate_jit = jax.jit(_integrate_sims_first, static_argnames=("num_frames", "substeps"))


def _to_trajectories(theta, theta_lo, turns, delta, omega, couplings) -> Trajectories:
    """Host float64 ``phi = theta + theta_lo + 2 pi turns`` and ``rate = delta / dt``."""
    theta = np.asarray(theta, np.float64) + np.asarray(theta_lo, np.float64)
    phase = theta + _TWO_PI * np.asarray(turns, np.float64)
    rate = np.asarray(delta, np.float64) / DT
    return Trajectories(phase, rate, np.asarray(omega), np.asarray(couplings, np.int64))


def integrate(
    phase0: jax.Array,
    omega: jax.Array,
    couplings: jax.Array,
    *,
    num_frames: int = SIMULATED_FRAMES,
    substeps: int | None = None,
) -> Trajectories:
    """Integrates a batch from given initial phases, in one compiled call (no chunking).

    Args:
      phase0: ``[B, n]`` initial phases, in ``[-3 pi, 3 pi)`` (the sampler's are in
        ``[0, 2 pi)``).
      omega: ``[B, n]`` intrinsic frequencies.
      couplings: ``[B, n, n]``, ``couplings[b, i, j] = k_ij`` (j drives i).
      num_frames: ``F``; ``F + 1`` samples are returned (the last one is for normalisation).
      substeps: RK4 steps per grid step ``dt = 0.01``; ``None``: :func:`default_substeps`.

    Returns:
      :class:`Trajectories` (numpy). The integration runs in the dtype of ``phase0``
      (float64 only under ``with jax.enable_x64(True):``; otherwise float32).
    """
    _check_frames(num_frames)
    phase0, omega, couplings = (jnp.asarray(a) for a in (phase0, omega, couplings))
    if phase0.ndim != 2 or omega.shape != phase0.shape:
        raise ValueError(
            f"phase0 and omega must both be [B, n], got {phase0.shape} and {omega.shape}"
        )
    b, n = phase0.shape
    _check_oscillators(n)
    if couplings.shape != (b, n, n):
        raise ValueError(f"couplings must be [B, n, n] = {(b, n, n)}, got {couplings.shape}")
    substeps = _substeps(substeps, n)
    if not np.all(np.abs(np.asarray(phase0)) < 1.5 * _TWO_PI):
        raise ValueError("phase0 must be finite and in [-3 pi, 3 pi); reduce it modulo 2 pi")
    dtype = phase0.dtype
    out = _integrate_jit(phase0, omega.astype(dtype), couplings.astype(dtype), num_frames, substeps)
    return _to_trajectories(*out, omega, couplings)


# ----------------------------------------------------------------------------------------
# Features.


def _minmax(x: np.ndarray) -> np.ndarray:
    """``(x - min) * 2 / (max - min) - 1`` over the last axis (0 where ``max == min``)."""
    lo = x.min(axis=-1, keepdims=True)
    span = x.max(axis=-1, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (x - lo) * 2 / safe - 1, 0.0)


def features(
    phase: np.ndarray,
    rate: np.ndarray,
    omega: np.ndarray,
    couplings: np.ndarray,
    num_frames: int | None = None,
) -> np.ndarray:
    """NRI's Kuramoto features (see the module docstring), normalised over all samples.

    Args:
      phase: ``[sims, n, S]`` unwrapped phases at the frame times.
      rate: ``[sims, n, S]`` forward differences ``dphi/dt``.
      omega: ``[sims, n]``.
      couplings: ``[sims, n, n]``, ``k_ij`` (an oscillator with ``sum_j k_ij == 0`` gets
        feature 0 equal to 0).
      num_frames: frames kept after normalisation (the first ones); default ``S - 1``.

    Returns:
      ``[sims, n, num_frames, 4]`` float32: ``[dphi/dt, sin phi, phi, omega]``.
    """
    phase = np.asarray(phase, np.float64)
    rate = np.asarray(rate, np.float64)
    samples = phase.shape[-1]
    if phase.ndim != 3 or rate.shape != phase.shape:
        raise ValueError(
            f"phase and rate must both be [sims, n, S], got {phase.shape}, {rate.shape}"
        )
    sims, n, _ = phase.shape
    if np.shape(omega) != (sims, n) or np.shape(couplings) != (sims, n, n):
        raise ValueError(
            f"omega must be [sims, n] = {(sims, n)} and couplings [sims, n, n], got "
            f"{np.shape(omega)} and {np.shape(couplings)}"
        )
    num_frames = samples - 1 if num_frames is None else num_frames
    if not 1 <= num_frames <= samples:
        raise ValueError(f"num_frames must be in [1, {samples}], got {num_frames}")
    driven = np.asarray(couplings).sum(axis=-1) != 0  # [sims, n]
    scaled_rate = np.where(driven[..., None], _minmax(rate), 0.0)
    low, high = OMEGA_RANGE
    scaled_omega = (np.asarray(omega, np.float64) - low) * 2 / (high - low) - 1
    out = np.stack(
        [
            scaled_rate,
            np.sin(phase),
            _minmax(phase),
            np.broadcast_to(scaled_omega[..., None], phase.shape),
        ],
        axis=-1,
    )
    return out[:, :, :num_frames].astype(np.float32)


# ----------------------------------------------------------------------------------------
# Whole splits, chunk by chunk.


def _chunking(num_sims: int, chunk_size: int) -> tuple[int, int]:
    """``(num_chunks, size)``: equal chunks, at most ``num_chunks - 1`` padded sims."""
    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    num_chunks = -(-num_sims // chunk_size)
    return num_chunks, -(-num_sims // num_chunks)


def _run_chunks(
    initial: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_frames: int,
    substeps: int,
    chunk_size: int,
    dtype,
    consume: Callable[[int, int, Trajectories], None],
    progress: ProgressFn | None,
) -> None:
    """Integrates ``initial = (phase0, omega, couplings)`` chunk by chunk and calls
    ``consume(start, stop, trajectories_of_chunk)``. Two chunks are kept in flight (dispatch
    is asynchronous), so the host's work on one overlaps the integration of the next."""
    num_sims = initial[0].shape[0]
    num_chunks, size = _chunking(num_sims, chunk_size)
    pad = num_chunks * size - num_sims
    padded = [np.concatenate([a, a[:pad]]) if pad else a for a in initial]

    def collect(start, out, chunk):
        stop = min(start + size, num_sims)
        cut = slice(0, stop - start)
        traj = _to_trajectories(*(np.asarray(a)[cut] for a in out), chunk[1][cut], chunk[2][cut])
        consume(start, stop, traj)
        if progress is not None:
            progress(stop, num_sims)

    with jax.enable_x64(dtype == np.float64):
        in_flight = collections.deque()  # dispatch is asynchronous
        for c in range(num_chunks):
            chunk = tuple(a[c * size : (c + 1) * size] for a in padded)
            args = (chunk[0].astype(dtype), chunk[1].astype(dtype), chunk[2].astype(dtype))
            in_flight.append((c * size, _integrate_jit(*args, num_frames, substeps), chunk))
            if len(in_flight) == 2:
                collect(*in_flight.popleft())
        while in_flight:
            collect(*in_flight.popleft())


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _host_initial(key, num_sims, n):
    return tuple(np.asarray(a) for a in sample_initial(key, num_sims, n))


def simulate(
    key: jax.Array,
    num_sims: int,
    n: int = 5,
    num_frames: int = SIMULATED_FRAMES,
    *,
    substeps: int | None = None,
    chunk_size: int = 4096,
    dtype=np.float32,
    progress: ProgressFn | None = None,
) -> Trajectories:
    """Samples (:func:`sample_initial`, all at once) and integrates ``num_sims`` systems.

    The output does not depend on ``chunk_size``.

    Args:
      key: JAX PRNG key.
      num_sims: number of simulations.
      n: oscillators.
      num_frames: ``F``; ``F + 1`` samples are returned.
      substeps: RK4 steps per grid step; ``None``: :func:`default_substeps`.
      chunk_size: simulations integrated at once (one compilation per chunk shape).
      dtype: ``np.float32`` (fast) or ``np.float64`` (x64 enabled for the call only).
      progress: called as ``progress(sims_done, num_sims)`` after each chunk.

    Returns:
      :class:`Trajectories`, ``phase`` and ``rate`` ``[num_sims, n, F + 1]``.
    """
    _check_frames(num_frames)
    _check_oscillators(n)
    substeps = _substeps(substeps, n)
    _chunking(1, chunk_size)
    dtype = _check_dtype(dtype)
    initial = _host_initial(key, num_sims, n)
    phase = np.empty((num_sims, n, num_frames + 1))
    rate = np.empty_like(phase)

    def consume(start, stop, traj):
        phase[start:stop] = traj.phase
        rate[start:stop] = traj.rate

    _run_chunks(initial, num_frames, substeps, chunk_size, dtype, consume, progress)
    return Trajectories(phase, rate, initial[1], initial[2].astype(np.int64))


def generate_split(
    key: jax.Array,
    num_sims: int,
    n: int = 5,
    frames: int = SIMULATED_FRAMES,
    *,
    simulated_frames: int = SIMULATED_FRAMES,
    substeps: int | None = None,
    chunk_size: int = 4096,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A split in NRI's Kuramoto layout, features computed chunk by chunk.

    Every trajectory is simulated for ``simulated_frames`` frames, normalised over its
    ``simulated_frames + 1`` samples and cut to its first ``frames`` frames: the reference
    uses ``simulated_frames = 99`` for every split and ``frames`` 49 (train, valid) or 99
    (test), see :data:`SPLIT_FRAMES`. ``substeps``: RK4 steps per grid step (``None``:
    :func:`default_substeps`). Memory: the output plus ~``100 chunk_size n
    (simulated_frames + 1)`` bytes (two chunks' device outputs, one chunk's float64
    trajectories and features).

    Returns:
      ``(feat [num_sims, n, frames, 4] float32, edges [num_sims, n, n] int64)`` with
      ``edges[s, i, j] = k_ij`` (j drives i).
    """
    _check_frames(simulated_frames)
    _check_oscillators(n)
    substeps = _substeps(substeps, n)
    if not isinstance(frames, int | np.integer) or not 1 <= frames <= simulated_frames:
        raise ValueError(f"frames must be an integer in [1, {simulated_frames}], got {frames!r}")
    _chunking(1, chunk_size)
    initial = _host_initial(key, num_sims, n)
    feat = np.empty((num_sims, n, frames, 4), np.float32)

    def consume(start, stop, traj):
        feat[start:stop] = features(*traj, num_frames=frames)

    _run_chunks(initial, simulated_frames, substeps, chunk_size, np.float32, consume, progress)
    return feat, initial[2].astype(np.int64)


def compile_split(
    num_sims: int,
    n: int = 5,
    *,
    simulated_frames: int = SIMULATED_FRAMES,
    substeps: int | None = None,
    chunk_size: int = 4096,
) -> None:
    """Compiles the integrator for the chunk shape :func:`generate_split` will use (for
    benchmarks: a following call with the same arguments runs without compiling)."""
    _check_num_sims(num_sims)
    _check_oscillators(n)
    _check_frames(simulated_frames)
    substeps = _substeps(substeps, n)
    _, size = _chunking(num_sims, chunk_size)
    x = jax.ShapeDtypeStruct((size, n), jnp.float32)
    k = jax.ShapeDtypeStruct((size, n, n), jnp.float32)
    _integrate_jit.lower(x, x, k, simulated_frames, substeps).compile()


def file_names(split: str, n: int) -> tuple[str, str]:
    """``("feat_{split}_kuramoto{n}.npy", "edges_{split}_kuramoto{n}.npy")``."""
    return f"feat_{split}_{NAME}{n}.npy", f"edges_{split}_{NAME}{n}.npy"


def write_split(folder: str, split: str, feat: np.ndarray, edges: np.ndarray) -> list[str]:
    """Writes ``feat`` / ``edges`` in NRI's layout into ``folder`` (created if needed).

    Args:
      folder: output folder.
      split: ``"train"``, ``"valid"``, ``"test"`` (or any name NRI's loader is given).
      feat: ``[sims, n, frames, 4]``, stored as float32.
      edges: ``[sims, n, n]``, stored as int64.

    Returns:
      The two paths written.

    Raises:
      FileExistsError: either file exists already (nothing is written).
      ValueError: inconsistent shapes.
    """
    feat = np.asarray(feat, np.float32)
    edges = np.asarray(edges, np.int64)
    if (
        feat.ndim != 4
        or feat.shape[-1] != 4
        or edges.shape != (feat.shape[0],) + (feat.shape[1],) * 2
    ):
        raise ValueError(
            f"feat must be [sims, n, frames, 4] and edges [sims, n, n], got {feat.shape}, "
            f"{edges.shape}"
        )
    paths = [os.path.join(folder, name) for name in file_names(split, feat.shape[1])]
    for path in paths:
        if os.path.exists(path):
            raise FileExistsError(f"refusing to overwrite {path}")
    os.makedirs(folder, exist_ok=True)
    for path, array in zip(paths, (feat, edges), strict=True):
        with open(path, "xb") as f:  # exclusive: fails rather than overwrite
            np.save(f, array)
    return paths
