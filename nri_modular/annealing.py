"""Simulated annealing over structures: a jitted ``lax.scan`` of propose -> evaluate -> accept.

Batched over tasks: every task has its own structure and energy, all tasks share one
temperature. The scan carries a typed :class:`AnnealState` and emits per-step
:class:`AnnealDiagnostics` (stacked over steps).

Energies are per-task losses (lower is better). A proposal with a non-finite energy is
never accepted. Metropolis: accept if ``E' <= E`` or ``u < exp(-(E' - E) / T)``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp

from nri_modular.structure import MoveFn

# Signature: (structure [B, E] int32) -> energy [B]
EnergyFn = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class AnnealState:
    """Carry of the annealing scan.

    Attributes:
      structure: int32 ``[B, E]`` current structures.
      energy: ``[B]`` their energies (``inf`` = not evaluated yet: any finite proposal wins).
      key: PRNG key.
      temperature: scalar.
    """

    structure: jax.Array
    energy: jax.Array
    key: jax.Array
    temperature: jax.Array


@flax.struct.dataclass
class AnnealDiagnostics:
    """Per-step statistics over the batch (each a scalar; stacked ``[steps]`` by the scan)."""

    accept_rate: jax.Array  # accepted proposals that changed the structure / proposals
    worse_rate: jax.Array  # proposals worse than the current structure / proposals
    worse_accept_rate: jax.Array  # accepted worse proposals / worse proposals (nan if none)
    mean_energy: jax.Array  # mean current energy after the step
    temperature: jax.Array


def metropolis(key, energy, proposed_energy, temperature):
    """Metropolis acceptance for a batch.

    Args:
      energy, proposed_energy: ``[B]``.
      temperature: scalar > 0.

    Returns:
      ``(accept, worse)``: bool ``[B]``; ``worse`` marks finite proposals with a higher
      energy. Equal-energy (e.g. unchanged) proposals are accepted and not counted as worse.
    """
    finite = jnp.isfinite(proposed_energy)
    delta = proposed_energy - energy
    better = finite & ((delta <= 0) | ~jnp.isfinite(energy))
    worse = finite & ~better
    u = jax.random.uniform(key, energy.shape, dtype=proposed_energy.dtype)
    safe_delta = jnp.where(worse, delta, 0.0)
    accept_worse = worse & (u < jnp.exp(-safe_delta / temperature))
    return better | accept_worse, worse


def anneal_step(
    state: AnnealState,
    energy_fn: EnergyFn,
    proposal_fn: MoveFn,
    aux: jax.Array | None = None,
) -> tuple[AnnealState, AnnealDiagnostics]:
    """One propose -> evaluate -> accept step for every task in the batch (``aux``: the
    move's fixed input, see :func:`anneal`)."""
    key, k_prop, k_acc = jax.random.split(state.key, 3)
    proposed = proposal_fn(k_prop, state.structure, aux)
    changed = (proposed != state.structure).any(axis=-1)
    # An unchanged proposal keeps the current energy exactly: re-evaluating it can differ
    # in the last bits (other fusion / partitioning), which must not count as a worse move.
    proposed_energy = jnp.where(
        changed | ~jnp.isfinite(state.energy), energy_fn(proposed), state.energy
    )
    accept, worse = metropolis(k_acc, state.energy, proposed_energy, state.temperature)
    structure = jnp.where(accept[:, None], proposed, state.structure)
    energy = jnp.where(accept, proposed_energy, state.energy)
    n_worse = worse.sum()
    moved = accept & changed
    diag = AnnealDiagnostics(
        accept_rate=moved.mean(),
        worse_rate=worse.mean(),
        worse_accept_rate=jnp.where(
            n_worse > 0, (accept & worse).sum() / jnp.maximum(n_worse, 1), jnp.nan
        ),
        mean_energy=jnp.where(jnp.isfinite(energy), energy, jnp.nan).mean(),
        temperature=state.temperature,
    )
    return AnnealState(structure, energy, key, state.temperature), diag


def anneal(
    state: AnnealState,
    energy_fn: EnergyFn,
    proposal_fn: MoveFn,
    temperatures: jax.Array,
    aux: jax.Array | None = None,
) -> tuple[AnnealState, AnnealDiagnostics]:
    """Runs ``len(temperatures)`` annealing steps as one ``lax.scan``.

    Args:
      state: initial :class:`AnnealState` (its temperature is overwritten per step).
      temperatures: ``[steps]`` temperature of each step.
      aux: the move's input, fixed during the scan: the learned proposal's logits
        ``[B, E, K]`` (blocked Gibbs), the exact one-step scores of every node's incoming
        settings ``[B, n, K^(n-1)]`` (exact kinds), or None (uniform).

    Returns:
      Final state and :class:`AnnealDiagnostics` with leaves ``[steps]``.
    """

    def body(s, temperature):
        s = s.replace(temperature=temperature)
        return anneal_step(s, energy_fn, proposal_fn, aux)

    return jax.lax.scan(body, state, temperatures)


def geometric_temperatures(t_start: float, t_end: float, num_steps: int) -> jax.Array:
    """``[num_steps]`` temperatures decaying geometrically from ``t_start`` to ``t_end``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if t_start <= 0 or t_end <= 0:
        raise ValueError(f"temperatures must be positive, got {t_start}, {t_end}")
    return jnp.geomspace(t_start, t_end, num_steps).astype(jnp.float32)


def target_worse_acceptance(step: jax.Array, decay_steps: float) -> jax.Array:
    """Target rate of accepted worse moves, ``exp(-1 - 5 * step / decay_steps)`` (paper's code)."""
    return jnp.exp(-1.0 - 5.0 * step / decay_steps)


def adapt_temperature(temperature, worse_accept_rate, target_rate, factor: float = 1.1):
    """Divides the temperature by ``factor`` if too many worse moves are accepted, else
    multiplies it; unchanged when there were no worse proposals (rate is nan)."""
    return jnp.where(
        jnp.isnan(worse_accept_rate),
        temperature,
        jnp.where(worse_accept_rate > target_rate, temperature / factor, temperature * factor),
    )
