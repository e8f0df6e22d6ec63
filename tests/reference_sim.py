"""Plain numpy reference of the springs / charged generator, written from DATA_SPEC.md.

A per-step loop in the style of Kipf et al.'s generator, used only to check the JAX
simulator (fidelity and distribution tests, benchmark baseline). The step functions
broadcast over any leading axes, so the same code runs one simulation (``[2, n]``) or a
batch (``[sims, 2, n]``); :func:`simulate_loop` is the one-simulation-at-a-time loop the
benchmark compares against.
"""

from __future__ import annotations

import numpy as np

SETTINGS = {
    # loc_std, vel_norm, interaction_strength, box_size
    "springs": dict(loc_std=0.5, vel_norm=0.5, interaction_strength=0.1, box_size=5.0),
    "charged": dict(loc_std=1.0, vel_norm=0.5, interaction_strength=1.0, box_size=5.0),
}
DT = 0.001
MAX_FORCE = 100.0


def sample(rng: np.random.Generator, system: str, num_particles: int = 5, batch=()):
    """Initial state and relations: ``loc, vel [*batch, 2, n]``, ``edges [*batch, n, n]``."""
    s = SETTINGS[system]
    n = num_particles
    loc = rng.standard_normal(batch + (2, n)) * s["loc_std"]
    vel = rng.standard_normal(batch + (2, n))
    vel = vel * s["vel_norm"] / np.sqrt((vel**2).sum(axis=-2, keepdims=True))
    if system == "springs":
        # each unordered pair linked with p = 0.5; symmetric; no self edge
        upper = np.triu(rng.random(batch + (n, n)) < 0.5, k=1)
        edges = (upper | np.swapaxes(upper, -1, -2)).astype(np.float64)
    else:
        charges = np.where(rng.random(batch + (n, 1)) < 0.5, 1.0, -1.0)
        edges = charges * np.swapaxes(charges, -1, -2)  # q_i q_j, diagonal 1 (unused)
    return loc, vel, edges


def forces(loc: np.ndarray, edges: np.ndarray, system: str) -> np.ndarray:
    """Clipped forces ``[..., 2, n]`` from positions ``[..., 2, n]`` and edges ``[..., n, n]``."""
    k = SETTINGS[system]["interaction_strength"]
    n = loc.shape[-1]
    diff = loc[..., :, :, None] - loc[..., :, None, :]  # [..., 2, i, j] = x_i - x_j
    off_diagonal = ~np.eye(n, dtype=bool)
    if system == "springs":
        size = -k * edges * off_diagonal  # F_i = -k sum_j A_ij (x_i - x_j)
    else:
        dist = np.sqrt((diff**2).sum(axis=-3))  # [..., n, n]
        with np.errstate(divide="ignore", invalid="ignore"):
            size = np.where(off_diagonal, k * edges / (dist * dist * dist), 0.0)
    force = (size[..., None, :, :] * diff).sum(axis=-1)
    return np.clip(force, -MAX_FORCE, MAX_FORCE)


def reflect(loc: np.ndarray, vel: np.ndarray, box: float):
    """Elastic walls: beyond +box -> 2 box - x, v = -|v|; beyond -box -> -2 box - x, v = |v|."""
    loc, vel = loc.copy(), vel.copy()
    over = loc > box
    loc[over] = 2 * box - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -box
    loc[under] = -2 * box - loc[under]
    vel[under] = np.abs(vel[under])
    return loc, vel


def integrate(loc, vel, edges, system: str, num_steps: int = 5000, sample_freq: int = 100):
    """The reference loop (Kipf's order) from a given state; broadcasts over leading axes.

    Returns:
      ``(loc, vel)`` of shape ``[..., frames, 2, n]`` with ``frames = num_steps //
      sample_freq - 1``, recorded at steps ``sample_freq, 2 sample_freq, ...``.
    """
    assert num_steps % sample_freq == 0
    box = SETTINGS[system]["box_size"]
    frames = num_steps // sample_freq - 1
    loc, vel = reflect(np.array(loc, np.float64), np.array(vel, np.float64), box)
    out_loc, out_vel = [], []
    vel = vel + DT * forces(loc, edges, system)  # initial kick
    for step in range(1, num_steps):
        loc = loc + DT * vel
        loc, vel = reflect(loc, vel, box)
        if step % sample_freq == 0:
            out_loc.append(loc)
            out_vel.append(vel)
            if len(out_loc) == frames:
                break  # the remaining steps of the loop are never recorded
        vel = vel + DT * forces(loc, edges, system)
    return np.stack(out_loc, axis=-3), np.stack(out_vel, axis=-3)


def simulate_loop(system: str, num_sims: int, seed: int = 0, num_steps: int = 5000, **kw):
    """One simulation at a time, like the reference generator: ``[sims, frames, 2, n]``."""
    rng = np.random.default_rng(seed)
    locs, vels, edges = [], [], []
    for _ in range(num_sims):
        loc0, vel0, e = sample(rng, system, **kw)
        loc, vel = integrate(loc0, vel0, e, system, num_steps)
        locs.append(loc)
        vels.append(vel)
        edges.append(e)
    return np.stack(locs), np.stack(vels), np.stack(edges)


def simulate_vectorised(system: str, num_sims: int, seed: int = 0, num_steps: int = 5000, **kw):
    """Same loop, all simulations at once on a leading numpy axis (for statistics)."""
    rng = np.random.default_rng(seed)
    loc0, vel0, edges = sample(rng, system, batch=(num_sims,), **kw)
    loc, vel = integrate(loc0, vel0, edges, system, num_steps)
    return loc, vel, edges
