"""Springs and charged-particle simulators of Kipf et al. (2018), vectorised in JAX.

The dynamics follow ``shared/DATA_SPEC.md`` (the generator the paper's numbers were
measured on):

* ``n`` particles in the box ``[-box, box]^2`` with elastic walls.
* springs: each unordered pair is linked with probability ``p = 0.5``; the force on ``i``
  is ``-k * sum_j A_ij (x_i - x_j)`` with ``k = 0.1``.
* charged: each particle has charge ``q = +-1`` with probability ``0.5``; the force on
  ``i`` is ``k * sum_{j != i} q_i q_j (x_i - x_j) / |x_i - x_j|^3`` with ``k = 1``.
* each force component is clipped to ``+-max_force`` (100).
* integration with step ``dt = 0.001``: one initial kick ``v += dt F(x)``, then each
  step ``x += dt v``, reflect at the walls, record every ``sample_freq`` steps,
  ``v += dt F(x)``.

Step counts follow the reference generator: a trajectory of ``num_steps`` steps
(``T`` there) records ``num_steps // sample_freq - 1`` frames, at steps
``sample_freq, 2 sample_freq, ...`` (the state at step 0 is not recorded), so 5000
steps give 49 frames and 10000 steps give 99 frames. Only
``frames * sample_freq`` integration steps are run (the last ``sample_freq - 1``
steps of the reference loop are never recorded).

Arithmetic order: rewriting the loop above as "kick with ``F(x)``, drift, reflect",
starting from the initial state, performs exactly the reference's operations in the
reference's order; the recorded velocity is the one after the step's reflection and
before its force kick, as in the reference.

Before the first kick the initial state is reflected at the walls once, as the
reference code does (a no-op unless a particle is sampled outside the box).

Layout: inside the compiled integrator simulations lie on the last (vector lane) axis,
``loc[c, i, b]``; the public functions take and return the Kipf layout ``[..., 2, n]``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SYSTEMS = ("springs", "charged")


@dataclasses.dataclass(frozen=True)
class SystemConfig:
    """Physical settings of one system (defaults from DATA_SPEC.md).

    Attributes:
      name: ``"springs"`` or ``"charged"``.
      box_size: walls at ``+-box_size``.
      loc_std: standard deviation of each initial coordinate.
      vel_norm: norm of each particle's initial velocity.
      interaction_strength: spring constant / Coulomb constant.
      dt: integration step.
      max_force: each force component is clipped to ``+-max_force``.
      edge_prob: probability of a spring (springs) or of charge ``+1`` (charged).
    """

    name: str
    box_size: float = 5.0
    loc_std: float = 0.5
    vel_norm: float = 0.5
    interaction_strength: float = 0.1
    dt: float = 0.001
    max_force: float = 100.0
    edge_prob: float = 0.5


_DEFAULTS = {
    "springs": SystemConfig(name="springs", loc_std=0.5, interaction_strength=0.1),
    "charged": SystemConfig(name="charged", loc_std=1.0, interaction_strength=1.0),
}


def system_config(system: str | SystemConfig, **overrides) -> SystemConfig:
    """The settings of ``system`` with the non-``None`` ``overrides`` applied.

    Args:
      system: a name in :data:`SYSTEMS` or a :class:`SystemConfig`.
      **overrides: fields of :class:`SystemConfig`; ``None`` keeps the default.

    Raises:
      ValueError: unknown system name, unknown field or non-positive setting.
    """
    if isinstance(system, SystemConfig):
        config = system
    elif system in _DEFAULTS:
        config = _DEFAULTS[system]
    else:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    fields = {f.name for f in dataclasses.fields(SystemConfig)} - {"name"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(
            f"unknown system settings {sorted(unknown)}; expected some of {sorted(fields)}"
        )
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    for field in ("box_size", "loc_std", "vel_norm", "dt", "max_force"):
        value = getattr(config, field)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{field} must be a positive finite number, got {value!r}")
    if not math.isfinite(config.interaction_strength):
        raise ValueError(
            f"interaction_strength must be finite, got {config.interaction_strength!r}"
        )
    if not 0.0 <= config.edge_prob <= 1.0:
        raise ValueError(f"edge_prob must be in [0, 1], got {config.edge_prob!r}")
    return config


def num_frames(num_steps: int, sample_freq: int) -> int:
    """Frames recorded by a trajectory of ``num_steps`` steps (5000, 100 -> 49).

    Raises:
      ValueError: ``sample_freq`` does not divide ``num_steps`` or fewer than 1 frame.
    """
    if not isinstance(num_steps, int | np.integer) or not isinstance(sample_freq, int | np.integer):
        raise ValueError(
            f"num_steps and sample_freq must be integers, got {num_steps!r}, {sample_freq!r}"
        )
    if sample_freq <= 0:
        raise ValueError(f"sample_freq must be positive, got {sample_freq}")
    if num_steps % sample_freq:
        raise ValueError(f"sample_freq={sample_freq} does not divide num_steps={num_steps}")
    frames = num_steps // sample_freq - 1
    if frames < 1:
        raise ValueError(
            f"num_steps={num_steps} with sample_freq={sample_freq} records no frame "
            "(need num_steps >= 2 * sample_freq)"
        )
    return int(frames)


# ----------------------------------------------------------------------------------------
# Sampling.


def sample_initial_states(
    rng: int | np.random.Generator,
    system: str | SystemConfig,
    num_sims: int,
    num_particles: int = 5,
    dtype=np.float64,
    **overrides,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples initial states and relations on the host (numpy; no compilation).

    Args:
      rng: a numpy ``Generator`` or a seed for ``np.random.default_rng``.
      system: name or :class:`SystemConfig`.
      num_sims: ``B`` (> 0).
      num_particles: ``n``.
      dtype: float dtype of the outputs (sampled in float64, then cast).
      **overrides: :class:`SystemConfig` fields (``loc_std``, ``vel_norm``, ``edge_prob``).

    Returns:
      ``(loc [B, 2, n], vel [B, 2, n], relations [B, n, n])``: positions
      ``N(0, loc_std^2)`` per coordinate, velocities of random direction and norm
      ``vel_norm``. ``relations`` is the matrix the force uses and the one stored on
      disk: springs, symmetric 0/1 with zero diagonal; charged, ``q_i q_j`` in
      ``{-1, +1}`` *including* the diagonal (``q_i^2 = 1``, never used), as in the
      released files of Kipf et al.
    """
    config = system_config(system, **overrides)
    _check_particles(num_particles)
    _check_num_sims(num_sims)
    rng = np.random.default_rng(rng)
    shape = (num_sims, 2, num_particles)
    loc = rng.standard_normal(shape) * config.loc_std
    vel = rng.standard_normal(shape)
    vel *= config.vel_norm / np.sqrt((vel**2).sum(axis=1, keepdims=True))
    if config.name == "springs":
        linked = rng.random((num_sims, num_particles, num_particles)) < config.edge_prob
        upper = np.triu(linked, k=1)
        relations = (upper | np.swapaxes(upper, 1, 2)).astype(np.float64)
    else:
        charges = np.where(rng.random((num_sims, num_particles)) < config.edge_prob, 1.0, -1.0)
        relations = charges[:, :, None] * charges[:, None, :]
    return loc.astype(dtype), vel.astype(dtype), relations.astype(dtype)


def _check_num_sims(num_sims: int) -> None:
    if not isinstance(num_sims, int | np.integer) or num_sims <= 0:
        raise ValueError(f"num_sims must be a positive integer, got {num_sims!r}")


def _check_particles(num_particles: int) -> None:
    if not isinstance(num_particles, int | np.integer) or num_particles < 2:
        raise ValueError(f"num_particles must be an integer >= 2, got {num_particles!r}")


# ----------------------------------------------------------------------------------------
# Dynamics on the lane layout. A state is a tuple ``(x, y, vx, vy)`` of ``n``-tuples of
# ``[B]`` arrays (simulations on the vector lanes); every step is then one elementwise
# fusion, ~15x faster on CPU than a dense ``[2, n, n, B]`` formulation whose reduction
# XLA does not vectorise. Pair terms are computed once per unordered pair and summed for
# each receiver in the order ``j = 0, ..., n - 1`` (the reference's order), so the result
# is the reference's arithmetic: bitwise equal in float64 when XLA does not contract
# ``a + b * c`` into an FMA (tests/test_physics.py checks both). The graph is unrolled over
# the ``n (n - 1) / 2`` pairs, which is fine for the few-particle systems here.

Lanes = tuple[jax.Array, ...]  # n arrays [B]
State = tuple[Lanes, Lanes, Lanes, Lanes]  # (x, y, vx, vy)


def _pair_coefficients(
    relations: jax.Array, config: SystemConfig
) -> dict[tuple[int, int], jax.Array]:
    """Time-independent factor of each unordered pair's force, ``{(i, j): [B]}`` for ``i < j``.

    springs: ``-k A_ij``; charged: ``k q_i q_j`` (divided by ``|x_i - x_j|^3`` each step).
    """
    n = relations.shape[0]
    sign = -1.0 if config.name == "springs" else 1.0
    return {
        (i, j): (sign * config.interaction_strength) * relations[i, j]
        for i in range(n)
        for j in range(i + 1, n)
    }


def _forces(x: Lanes, y: Lanes, coef: dict, config: SystemConfig) -> tuple[Lanes, Lanes]:
    """Clipped forces ``(fx, fy)`` on each particle; ``coef`` from :func:`_pair_coefficients`."""
    n = len(x)
    tx, ty = {}, {}  # force of j on i; tx[j, i] = -tx[i, j]
    for (i, j), c in coef.items():
        dx = x[i] - x[j]
        dy = y[i] - y[j]
        if config.name == "charged":
            dist = jnp.sqrt(dx * dx + dy * dy)
            c = c / (dist * dist * dist)
        tx[i, j], ty[i, j] = c * dx, c * dy
        tx[j, i], ty[j, i] = -tx[i, j], -ty[i, j]
    lim = config.max_force
    fx = tuple(jnp.clip(_ordered_sum(tx, i, n), -lim, lim) for i in range(n))
    fy = tuple(jnp.clip(_ordered_sum(ty, i, n), -lim, lim) for i in range(n))
    return fx, fy


def _ordered_sum(terms: dict, i: int, n: int) -> jax.Array:
    total = None
    for j in range(n):
        if j != i:
            total = terms[i, j] if total is None else total + terms[i, j]
    return total


def _reflect(loc: jax.Array, vel: jax.Array, box: float) -> tuple[jax.Array, jax.Array]:
    """Elastic walls at ``+-box`` for one coordinate (the reference's two passes)."""
    over = loc > box
    loc = jnp.where(over, 2 * box - loc, loc)
    vel = jnp.where(over, -jnp.abs(vel), vel)
    under = loc < -box
    loc = jnp.where(under, -2 * box - loc, loc)
    vel = jnp.where(under, jnp.abs(vel), vel)
    return loc, vel


def _kick_drift_reflect(state: State, coef: dict, config: SystemConfig) -> State:
    """One step: ``v += dt F(x)``, ``x += dt v``, reflect (see the module docstring)."""
    x, y, vx, vy = state
    fx, fy = _forces(x, y, coef, config)
    out = ([], [], [], [])
    for pos, vel, force, new_pos, new_vel in (
        (x, vx, fx, out[0], out[2]),
        (y, vy, fy, out[1], out[3]),
    ):
        for p, v, f in zip(pos, vel, force, strict=True):
            v = v + config.dt * f
            p = p + config.dt * v
            p, v = _reflect(p, v, config.box_size)
            new_pos.append(p)
            new_vel.append(v)
    return tuple(tuple(o) for o in out)


def _integrate_lanes(
    loc: jax.Array,
    vel: jax.Array,
    relations: jax.Array,
    config: SystemConfig,
    frames: int,
    sample_freq: int,
) -> tuple[jax.Array, jax.Array]:
    """Integrates ``B`` simulations laid out on the last axis.

    Args:
      loc: ``[2, n, B]`` initial positions.
      vel: ``[2, n, B]`` initial velocities.
      relations: ``[n, n, B]``.

    Returns:
      ``(loc, vel)``, each ``[frames, 2, n, B]``.
    """
    n = loc.shape[1]
    loc, vel = _reflect(loc, vel, config.box_size)
    coef = _pair_coefficients(relations, config)
    state = tuple(tuple(a[c, i] for i in range(n)) for a in (loc, vel) for c in range(2))

    def step(state, _):
        return _kick_drift_reflect(state, coef, config), None

    def frame(state, _):
        state, _ = lax.scan(step, state, None, length=sample_freq)
        x, y, vx, vy = (jnp.stack(lanes) for lanes in state)
        return state, (jnp.stack([x, y]), jnp.stack([vx, vy]))

    _, (locs, vels) = lax.scan(frame, state, None, length=frames)
    return locs, vels


def _integrate_kipf_layout(loc0, vel0, relations, config, frames, sample_freq):
    """:func:`_integrate_lanes` on ``[B, 2, n]`` / ``[B, n, n]``; returns ``[B, frames, 2, n]``."""
    loc = jnp.transpose(loc0, (1, 2, 0))
    vel = jnp.transpose(vel0, (1, 2, 0))
    rel = jnp.transpose(relations, (1, 2, 0))
    locs, vels = _integrate_lanes(loc, vel, rel, config, frames, sample_freq)
    return jnp.transpose(locs, (3, 0, 1, 2)), jnp.transpose(vels, (3, 0, 1, 2))


_integrate_batch_jit = jax.jit(
    _integrate_kipf_layout, static_argnames=("config", "frames", "sample_freq")
)


def integrate_batch(
    loc0: jax.Array,
    vel0: jax.Array,
    relations: jax.Array,
    *,
    system: str | SystemConfig,
    num_steps: int = 5000,
    sample_freq: int = 100,
    **overrides,
) -> tuple[jax.Array, jax.Array]:
    """Integrates a batch of simulations from given initial states (jitted).

    Args:
      loc0: ``[B, 2, n]`` initial positions.
      vel0: ``[B, 2, n]`` initial velocities.
      relations: ``[B, n, n]`` as returned by :func:`sample_initial_states`.
      system: name or :class:`SystemConfig`.
      num_steps: trajectory length ``T`` in integration steps.
      sample_freq: steps between recorded frames.
      **overrides: :class:`SystemConfig` fields (``box_size``, ``interaction_strength``,
        ``dt``, ``max_force``).

    Returns:
      ``(loc, vel)``, each ``[B, frames, 2, n]`` with ``frames = num_steps //
      sample_freq - 1``, in the dtype of ``loc0`` (float64 only under
      ``with jax.enable_x64(True):``; otherwise JAX computes in float32).
    """
    config = system_config(system, **overrides)
    frames = num_frames(num_steps, sample_freq)
    loc0, vel0, relations = (jnp.asarray(a) for a in (loc0, vel0, relations))
    if loc0.ndim != 3 or loc0.shape[1] != 2 or vel0.shape != loc0.shape:
        raise ValueError(f"loc0 and vel0 must both be [B, 2, n], got {loc0.shape} and {vel0.shape}")
    b, _, n = loc0.shape
    if relations.shape != (b, n, n):
        raise ValueError(f"relations must be [B, n, n] = {(b, n, n)}, got {relations.shape}")
    vel0 = vel0.astype(loc0.dtype)
    relations = relations.astype(loc0.dtype)
    return _integrate_batch_jit(loc0, vel0, relations, config, frames, sample_freq)


def integrate(
    loc0: jax.Array,
    vel0: jax.Array,
    relations: jax.Array,
    *,
    system: str | SystemConfig,
    num_steps: int = 5000,
    sample_freq: int = 100,
    **overrides,
) -> tuple[jax.Array, jax.Array]:
    """Integrates one simulation from a given initial state (pure, jitted).

    Args:
      loc0: ``[2, n]`` initial positions.
      vel0: ``[2, n]`` initial velocities.
      relations: ``[n, n]`` as returned by :func:`sample_initial_states`.
      system, num_steps, sample_freq, **overrides: as in :func:`integrate_batch`.

    Returns:
      ``(loc, vel)``, each ``[frames, 2, n]``.
    """
    locs, vels = integrate_batch(
        jnp.asarray(loc0)[None],
        jnp.asarray(vel0)[None],
        jnp.asarray(relations)[None],
        system=system,
        num_steps=num_steps,
        sample_freq=sample_freq,
        **overrides,
    )
    return locs[0], vels[0]


# ----------------------------------------------------------------------------------------
# Whole datasets.

# Signature: progress(sims_done: int, num_sims: int) -> None
ProgressFn = Callable[[int, int], None]


def _chunking(num_sims: int, chunk_size: int) -> tuple[int, int]:
    """``(num_chunks, size)``: equal chunks, at most ``num_chunks - 1`` padded sims."""
    num_chunks = -(-num_sims // chunk_size)
    return num_chunks, -(-num_sims // num_chunks)


def compile_simulate(
    system: str | SystemConfig,
    num_sims: int,
    num_particles: int = 5,
    num_steps: int = 5000,
    sample_freq: int = 100,
    *,
    dtype=np.float32,
    chunk_size: int = 4096,
    **overrides,
) -> None:
    """Compiles the integrator for the chunk shape :func:`simulate` will use.

    For benchmarks: a following :func:`simulate` with the same arguments runs without
    compiling. Arguments as in :func:`simulate`.
    """
    config = system_config(system, **overrides)
    frames = num_frames(num_steps, sample_freq)
    _check_num_sims(num_sims)
    _, size = _chunking(num_sims, chunk_size)
    dtype = np.dtype(dtype)
    with jax.enable_x64(dtype == np.float64):
        x = jax.ShapeDtypeStruct((size, 2, num_particles), dtype)
        r = jax.ShapeDtypeStruct((size, num_particles, num_particles), dtype)
        _integrate_batch_jit.lower(x, x, r, config, frames, sample_freq).compile()


def simulate(
    system: str | SystemConfig,
    seed: int | np.random.Generator,
    num_sims: int,
    num_particles: int = 5,
    num_steps: int = 5000,
    sample_freq: int = 100,
    *,
    dtype=np.float32,
    chunk_size: int = 4096,
    progress: ProgressFn | None = None,
    **overrides,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples and integrates ``num_sims`` simulations, chunk by chunk.

    Initial states come from :func:`sample_initial_states` (all at once, on the host),
    so the output does not depend on ``chunk_size``. Two chunks are kept in flight so
    that both CPU cores work (each XLA CPU execution runs on one core).

    Args:
      system: ``"springs"``, ``"charged"`` or a :class:`SystemConfig`.
      seed: integer seed (or numpy ``Generator``) of the initial states and relations.
      num_sims: number of simulations (> 0).
      num_particles: ``n``.
      num_steps: trajectory length in integration steps (5000 -> 49 frames).
      sample_freq: steps between frames.
      dtype: ``np.float32`` (fast) or ``np.float64`` (x64 is enabled for the call only).
      chunk_size: simulations integrated at once (one compilation per chunk shape);
        memory is about ``2 * chunk_size * frames * 4 n * itemsize`` bytes plus the
        outputs.
      progress: called as ``progress(sims_done, num_sims)`` after each chunk.
      **overrides: :class:`SystemConfig` fields.

    Returns:
      numpy ``(loc [sims, frames, 2, n], vel [sims, frames, 2, n], edges [sims, n, n])``;
      ``edges`` are the ``relations`` of :func:`sample_initial_states`.

    Raises:
      ValueError: unknown system, ``num_sims <= 0``, ``sample_freq`` not dividing
        ``num_steps``, bad dtype or chunk size.
    """
    config = system_config(system, **overrides)
    frames = num_frames(num_steps, sample_freq)
    _check_particles(num_particles)
    _check_num_sims(num_sims)
    if not isinstance(chunk_size, int | np.integer) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    loc0, vel0, edges = sample_initial_states(seed, config, num_sims, num_particles, dtype)
    num_chunks, size = _chunking(num_sims, chunk_size)
    pad = num_chunks * size - num_sims
    padded = [np.concatenate([a, a[:pad]]) if pad else a for a in (loc0, vel0, edges)]
    loc = np.empty((num_sims, frames, 2, num_particles), dtype)
    vel = np.empty_like(loc)

    def collect(start, out):
        stop = min(start + size, num_sims)
        loc[start:stop] = np.asarray(out[0])[: stop - start]
        vel[start:stop] = np.asarray(out[1])[: stop - start]
        if progress is not None:
            progress(stop, num_sims)

    with jax.enable_x64(dtype == np.float64):
        in_flight = collections.deque()  # (start, device outputs): dispatch is asynchronous
        for c in range(num_chunks):
            chunk = tuple(jnp.asarray(a[c * size : (c + 1) * size]) for a in padded)
            in_flight.append((c * size, _integrate_batch_jit(*chunk, config, frames, sample_freq)))
            if len(in_flight) == 2:
                collect(*in_flight.popleft())
        while in_flight:
            collect(*in_flight.popleft())
    return loc, vel, edges
