"""Inferring an unobserved particle from its pull on the others (paper section 5.2, Figure 4).

We observe ``n - 1`` particles' trajectories and have a model of ``n``-particle dynamics.
A latent node is added to the graph (always the last node, index ``n - 1``; the GNN is
permutation equivariant so its position does not matter) and only its **initial state**
(4 numbers) is inferred; its later states are the model's rollout from it (a continuous
latent trajectory, never re-fed with truth, because there is none).

Loss of a candidate (``hidden_loss``): the observed particles are rolled out together
with the latent node, the observed ones re-fed with their true states every ``refeed``
frames (``refeed = 1``: teacher forcing, ``refeed >= T``: fully open loop), the latent
one carried on continuously across those re-feeds; the loss is the MSE of the observed
particles' predicted states against their trajectories. The latent node's trajectory is
consistent with the model by construction (it *is* a model rollout), so its
"consistency" term is a soft box prior: a penalty on the latent states leaving the range
seen in the data (``box``), which keeps far-away candidates out; an optional Gaussian
prior on the initial state (``prior_weight``) makes it a MAP estimate.

Why teacher forcing (``refeed = 1``) by default: measured on 50 test systems with the
learned model, re-feeding every frame gave a median hidden MSE of 2.3e-3 against 3.0e-3
for ``refeed = 10`` (the training loss's ``p``): the latent node is then driven by the
true observed states, and the observed particles' own model error does not compound.

Search (``infer_hidden``), batched over systems ``B`` and candidates ``C`` (flattened into
the ``G = B * C`` axis of one rollout) and jitted:

1. sample many random initial states (and random latent edges when they are unknown),
   keep the best ``C`` per system;
2. rounds of: a few Adam steps on all ``C`` candidates' initial states (each keeps its
   best iterate); ``sa_steps`` simulated-annealing moves on the latent node's
   ``2 (n - 1)`` edges (when unknown); fresh radically different random samples (and
   perturbations of the best) replacing the worst candidates when better ("keep on
   sampling");
3. a window curriculum: early rounds fit only the first frames (short rollouts are
   nearly convex in the initial state), later rounds extend the window to all frames.

``existence_scores`` compares the best loss with a latent node (edges searched) against
the best loss without an interacting one (a latent node whose edges are all the "no
relation" module; see :func:`existence_test` for why not the ``n - 1`` particles alone):
a large ratio means an unobserved particle is pulling on the observed ones.

Dynamics are abstract (``DynamicsFn``): the learned GNN (:func:`gnn_dynamics`) in the
experiment, the exact springs integrator (:func:`springs_dynamics`) as a planted model
in the tests.

The end of this module holds the experiment driver (train the springs model with true
edges, hide a particle in each test system, infer it, measure); it does file I/O and is
kept separate from the pure functions above.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular import gnn
from nri_modular import graph as graph_lib
from nri_modular.modules import ModuleBank, Params

STATE_DIM = 4

# Signature: (states [G, n, 4], structure int32 [G, n(n-1)]) -> next states [G, n, 4]
DynamicsFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------
# Dynamics.


def gnn_dynamics(bank: ModuleBank, params: Params, *, edge_compute: str = "all") -> DynamicsFn:
    """One learned message-passing step as a :data:`DynamicsFn`.

    ``edge_compute="all"`` (every module on every edge, then select) is the default: it
    needs no per-step edge layout and, for the ``K = 2`` springs model, costs 2x the
    edge FLOPs of the blocked path but no gathers/scatters.
    """

    params = jax.tree.map(jnp.asarray, params)  # numpy leaves cannot be indexed by tracers

    def step(states: jax.Array, structure: jax.Array) -> jax.Array:
        layout = gnn.task_layout(structure, bank.num_modules)
        return gnn.message_passing_step(bank, params, states, layout, edge_compute)

    return step


def springs_dynamics(
    spring_constant: float = 0.1, dt: float = 0.001, substeps: int = 100
) -> DynamicsFn:
    """The exact springs integrator (no walls) as a :data:`DynamicsFn`: a planted model.

    ``substeps`` steps of ``v += dt F(x); x += dt v`` with
    ``F_i = -k sum_j A_ji (x_i - x_j)``, ``A_ji = structure[edge j -> i]`` in {0, 1}, the
    update of :mod:`nri_modular.data.physics` without the walls. States are physical
    (unnormalised) ``(x, y, vx, vy)``.
    """
    if substeps < 1 or dt <= 0:
        raise ValueError(f"need substeps >= 1 and dt > 0, got {substeps}, {dt}")

    def step(states: jax.Array, structure: jax.Array) -> jax.Array:
        g, n, _ = states.shape
        receivers, senders = graph_lib.edge_index(n)
        springs = structure.astype(states.dtype).reshape(g, n, n - 1, 1)

        def substep(s, _):
            x, v = s[..., :2], s[..., 2:]
            diff = (x[:, receivers] - x[:, senders]).reshape(g, n, n - 1, 2)
            v = v - dt * spring_constant * (springs * diff).sum(axis=2)
            return jnp.concatenate([x + dt * v, v], axis=-1), None

        return jax.lax.scan(substep, states, None, length=substeps)[0]

    return step


# ----------------------------------------------------------------------------------------
# Structures with a latent node (always the last node).


@functools.cache
def _structure_gather(num_observed: int) -> np.ndarray:
    """Index of each edge of the ``n = m + 1`` graph in ``[observed (m(m-1)), hidden (2m)]``."""
    m = num_observed
    n = m + 1
    obs_r, obs_s = graph_lib.edge_index(m)
    obs_pos = {(int(r), int(s)): e for e, (r, s) in enumerate(zip(obs_r, obs_s, strict=True))}
    base = m * (m - 1)
    out = []
    for r, s in zip(*graph_lib.edge_index(n), strict=True):
        r, s = int(r), int(s)
        if r == n - 1:
            out.append(base + s)  # observed s -> hidden (incoming)
        elif s == n - 1:
            out.append(base + m + r)  # hidden -> observed r (outgoing)
        else:
            out.append(obs_pos[(r, s)])
    return np.asarray(out, np.int32)


def full_structure(observed_structure: jax.Array, hidden_edges: jax.Array) -> jax.Array:
    """The ``n``-node structure with the latent node last.

    Args:
      observed_structure: int32 ``[..., m(m-1)]`` edges among the ``m`` observed particles.
      hidden_edges: int32 ``[..., 2m]``: ``[:m]`` observed ``j`` -> latent, ``[m:]``
        latent -> observed ``i``.

    Returns:
      int32 ``[..., n(n-1)]``, ``n = m + 1``, receiver-major.
    """
    m = hidden_edges.shape[-1] // 2
    if hidden_edges.shape[-1] != 2 * m or observed_structure.shape[-1] != m * (m - 1):
        raise ValueError(
            f"hidden_edges [..., 2m] and observed_structure [..., m(m-1)] disagree: "
            f"{hidden_edges.shape}, {observed_structure.shape}"
        )
    both = jnp.concatenate([observed_structure, hidden_edges], axis=-1)
    return both[..., _structure_gather(m)]


def split_structure(structure: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`full_structure`: ``[..., n(n-1)] -> ([..., m(m-1)], [..., 2m])``."""
    m = num_nodes - 1
    gather = _structure_gather(m)
    out = np.zeros(structure.shape[:-1] + (m * (m - 1) + 2 * m,), structure.dtype)
    out[..., gather] = structure
    return out[..., : m * (m - 1)], out[..., m * (m - 1) :]


@flax.struct.dataclass
class HiddenSystems:
    """Systems with one particle hidden (moved to the last position).

    Attributes:
      observed: ``[B, T, m, 4]`` the ``m = n - 1`` observed particles.
      observed_structure: int32 ``[B, m(m-1)]`` their relations.
      hidden_edges: int32 ``[B, 2m]`` the hidden particle's true relations (in, out).
      hidden_states: ``[B, T, 4]`` the hidden particle's true trajectory (evaluation only).
      hidden_index: int32 ``[B]`` which particle was hidden.
    """

    observed: np.ndarray
    observed_structure: np.ndarray
    hidden_edges: np.ndarray
    hidden_states: np.ndarray
    hidden_index: np.ndarray


def hide_particle(states: np.ndarray, labels: np.ndarray, hidden: np.ndarray) -> HiddenSystems:
    """Hides particle ``hidden[b]`` of system ``b`` (numpy, host side).

    Args:
      states: ``[B, T, n, 4]``.
      labels: int ``[B, n(n-1)]`` relations, receiver-major.
      hidden: int ``[B]`` index of the particle to hide.

    Returns:
      :class:`HiddenSystems`; the other particles keep their order.
    """
    states, labels, hidden = np.asarray(states), np.asarray(labels), np.asarray(hidden)
    if states.ndim != 4 or states.shape[-1] != STATE_DIM:
        raise ValueError(f"states must be [B, T, n, 4], got {states.shape}")
    b, _, n, _ = states.shape
    if labels.shape != (b, graph_lib.num_edges(n)):
        raise ValueError(f"labels must be [{b}, {n * (n - 1)}], got {labels.shape}")
    if hidden.shape != (b,) or hidden.min() < 0 or hidden.max() >= n:
        raise ValueError(f"hidden must be [{b}] indices in [0, {n}), got {hidden}")
    perm = np.stack([np.r_[np.delete(np.arange(n), k), k] for k in hidden])  # [B, n]
    permuted = np.take_along_axis(states, perm[:, None, :, None], axis=2)
    matrix = graph_lib.edges_to_matrix(labels, n)
    matrix = np.take_along_axis(np.take_along_axis(matrix, perm[:, :, None], 1), perm[:, None], 2)
    obs_structure, hidden_edges = split_structure(graph_lib.matrix_to_edges(matrix), n)
    return HiddenSystems(
        observed=permuted[:, :, :-1],
        observed_structure=obs_structure.astype(np.int32),
        hidden_edges=hidden_edges.astype(np.int32),
        hidden_states=permuted[:, :, -1],
        hidden_index=hidden.astype(np.int32),
    )


# ----------------------------------------------------------------------------------------
# Rollouts and losses.


def latent_rollout(
    dynamics: DynamicsFn,
    observed: jax.Array,
    hidden_initial: jax.Array,
    structure: jax.Array,
    refeed: int,
) -> tuple[jax.Array, jax.Array]:
    """Rolls out the observed particles plus a latent node over the observed window.

    The observed particles are reset to their true states at frames ``0, refeed,
    2 refeed, ...``; the latent node is never reset (a continuous model rollout).

    Args:
      observed: ``[G, T, m, 4]``.
      hidden_initial: ``[G, 4]`` latent state at frame 0.
      structure: int32 ``[G, n(n-1)]``, ``n = m + 1``, latent node last.
      refeed: frames between resets of the observed particles (>= 1).

    Returns:
      ``(pred_observed [G, T-1, m, 4], hidden [G, T, 4])``: predicted observed states at
      frames ``1..T-1`` and the latent trajectory at frames ``0..T-1``.
    """
    m = observed.shape[2]
    reset = jnp.asarray(np.arange(observed.shape[1] - 1) % refeed == 0)
    start = jnp.concatenate([observed[:, 0], hidden_initial[:, None]], axis=1)

    def body(s, xs):
        truth, do_reset = xs
        obs = jnp.where(do_reset, truth, s[:, :m])
        s = dynamics(jnp.concatenate([obs, s[:, m:]], axis=1), structure)
        return s, s

    xs = (jnp.swapaxes(observed[:, :-1], 0, 1), reset)
    _, preds = jax.lax.scan(body, start, xs)  # [T-1, G, n, 4]
    preds = jnp.swapaxes(preds, 0, 1)
    hidden = jnp.concatenate([hidden_initial[:, None], preds[:, :, m]], axis=1)
    return preds[:, :, :m], hidden


def observed_rollout(
    dynamics: DynamicsFn, observed: jax.Array, structure: jax.Array, refeed: int
) -> jax.Array:
    """The observed particles alone (no latent node), reset every ``refeed`` frames.

    Args:
      observed: ``[G, T, m, 4]``; structure: int32 ``[G, m(m-1)]``.

    Returns:
      ``[G, T-1, m, 4]`` predictions of frames ``1..T-1``.
    """
    reset = jnp.asarray(np.arange(observed.shape[1] - 1) % refeed == 0)

    def body(s, xs):
        truth, do_reset = xs
        s = dynamics(jnp.where(do_reset, truth, s), structure)
        return s, s

    xs = (jnp.swapaxes(observed[:, :-1], 0, 1), reset)
    return jnp.swapaxes(jax.lax.scan(body, observed[:, 0], xs)[1], 0, 1)


def box_penalty(hidden: jax.Array, box: float) -> jax.Array:
    """Mean squared excess of ``|hidden|`` over ``box`` per trajectory: ``[G, T, 4] -> [G]``."""
    return jnp.square(jax.nn.relu(jnp.abs(hidden) - box)).mean(axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Settings of the latent-node search.

    Attributes:
      num_modules: K of the model (edge types of the latent node's relations).
      refeed: observed particles are reset to the truth every ``refeed`` frames.
      box: latent states beyond ``+-box`` are penalised (``inf`` = no prior); normalised
        data live in [-1, 1].
      box_weight: weight of that penalty.
      num_candidates: ``C`` candidates per system refined by gradient descent.
      num_initial_samples: random initial states evaluated at the start.
      samples_per_round: fresh samples per round (radically different + near the best).
      local_fraction: fraction of each round's samples drawn near the current best.
      local_scale: their spread, in prior standard deviations.
      windows: observed frames fitted in each round (a curriculum; the last should be the
        whole window, longer values are clipped to it).
      grad_steps: Adam steps per round.
      learning_rates: Adam step size per round (same length as ``windows``).
      sa_steps: annealing proposals on the latent edges per round (edges unknown only).
      sa_temperature: Metropolis temperature on ``log(loss)``.
      prior_scale: the random samples are ``N(mean, (prior_scale * std)^2)``.
      num_particles: particles the model was trained on (``m + 1``), checked if given.
      prior_weight: weight of ``mean(((initial - prior_mean) / prior_std)^2)`` added to
        the loss (a MAP estimate: when the observations hardly constrain the latent node,
        e.g. it has no springs, the answer falls back to the prior mean).
    """

    num_modules: int = 2
    refeed: int = 1
    box: float = 1.0
    box_weight: float = 1.0
    num_candidates: int = 8
    num_initial_samples: int = 256
    samples_per_round: int = 32
    local_fraction: float = 0.5
    local_scale: float = 0.3
    windows: tuple[int, ...] = (10, 20, 30, 49, 49)
    grad_steps: int = 10
    learning_rates: tuple[float, ...] = (1e-2, 5e-3, 3e-3, 2e-3, 1e-3)
    sa_steps: int = 4
    sa_temperature: float = 0.05
    prior_scale: float = 1.5
    num_particles: int | None = None
    prior_weight: float = 0.0

    def __post_init__(self):
        if len(self.windows) != len(self.learning_rates) or not self.windows:
            raise ValueError(
                f"windows {self.windows} and learning_rates {self.learning_rates} must be "
                "non-empty and of equal length"
            )
        if min(self.windows) < 2:
            raise ValueError(f"windows must be >= 2 frames, got {self.windows}")
        for name in ("num_modules", "refeed", "num_candidates", "num_initial_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_initial_samples < self.num_candidates:
            raise ValueError("num_initial_samples must be >= num_candidates")
        if not 0.0 <= self.local_fraction <= 1.0:
            raise ValueError(f"local_fraction must be in [0, 1], got {self.local_fraction}")
        for name in ("samples_per_round", "grad_steps", "sa_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def hidden_loss(
    dynamics: DynamicsFn,
    observed: jax.Array,
    hidden_initial: jax.Array,
    structure: jax.Array,
    config: SearchConfig,
) -> jax.Array:
    """Loss of latent initial states: observed-particle MSE + box prior.

    Args:
      observed: ``[G, T, m, 4]``; hidden_initial: ``[G, 4]``;
      structure: int32 ``[G, n(n-1)]`` (latent node last).

    Returns:
      ``[G]``.
    """
    preds, hidden = latent_rollout(dynamics, observed, hidden_initial, structure, config.refeed)
    mse = jnp.square(preds - observed[:, 1:]).mean(axis=(1, 2, 3))
    if not np.isfinite(config.box):
        return mse
    return mse + config.box_weight * box_penalty(hidden, config.box)


def observed_only_loss(
    dynamics: DynamicsFn, observed: jax.Array, observed_structure: jax.Array, refeed: int
) -> jax.Array:
    """MSE of the observed particles predicted without any latent node: ``[B]``."""
    preds = observed_rollout(dynamics, observed, observed_structure, refeed)
    return jnp.square(preds - observed[:, 1:]).mean(axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------
# Search: random sampling + gradient descent (+ annealing on the latent edges).


@flax.struct.dataclass
class Population:
    """Candidates of every system.

    Attributes:
      initial: ``[B, C, 4]`` latent initial states.
      edges: int32 ``[B, C, 2m]`` latent relations (in, out).
      loss: ``[B, C]`` their losses on the current window.
    """

    initial: jax.Array
    edges: jax.Array
    loss: jax.Array


@flax.struct.dataclass
class HiddenResult:
    """Best latent node per system.

    Attributes:
      initial: ``[B, 4]`` inferred initial state.
      edges: int32 ``[B, 2m]`` its relations (the given ones when known).
      loss: ``[B]`` the loss (observed MSE + prior) on the whole window.
      observed_mse: ``[B]`` observed-particle MSE on the whole window (no prior).
      trajectory: ``[B, T, 4]`` the latent node's rollout (frames ``0..T-1``).
    """

    initial: jax.Array
    edges: jax.Array
    loss: jax.Array
    observed_mse: jax.Array
    trajectory: jax.Array


def _population_loss(dynamics, observed, observed_structure, initial, edges, config, prior=None):
    """``[B, C, 4]``, ``[B, C, 2m]`` -> ``[B, C]`` losses (all candidates in one rollout).

    ``prior = (mean [4], std [4])`` adds the ``config.prior_weight`` term.
    """
    b, c = initial.shape[:2]
    obs = jnp.repeat(observed, c, axis=0)
    structure = full_structure(jnp.repeat(observed_structure, c, axis=0), edges.reshape(b * c, -1))
    loss = hidden_loss(dynamics, obs, initial.reshape(b * c, -1), structure, config).reshape(b, c)
    if prior is None or config.prior_weight == 0:
        return loss
    z = (initial - prior[0][None, None]) / prior[1][None, None]
    return loss + config.prior_weight * jnp.square(z).mean(axis=-1)


def _sanitise(loss):
    return jnp.where(jnp.isfinite(loss), loss, jnp.inf)


def _keep_best(initial, edges, loss, c):
    """Top ``c`` candidates per system by loss: ``[B, N, ...] -> [B, c, ...]``."""
    _, idx = jax.lax.top_k(-loss, c)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(*idx.shape, *(1,) * (x.ndim - 2)), 1)  # noqa: E731
    return Population(take(initial), take(edges), take(loss))


def _sample(key, shape_bc, prior_mean, prior_std, config):
    noise = jax.random.normal(key, (*shape_bc, STATE_DIM))
    return prior_mean[None, None] + config.prior_scale * prior_std[None, None] * noise


def _gradient_steps(loss_fn, pop: Population, lr: float, steps: int) -> Population:
    """Adam on every candidate's initial state; each candidate keeps its best iterate."""
    if steps == 0:
        return pop
    opt = optax.adam(lr)

    def body(carry, _):
        x, opt_state, best_x, best_l = carry

        def total(z):
            per = loss_fn(z, pop.edges)
            return per.sum(), per

        (_, per), grad = jax.value_and_grad(total, has_aux=True)(x)
        per = _sanitise(per)  # loss of x, before this step's update
        better = per < best_l
        best_x = jnp.where(better[..., None], x, best_x)
        best_l = jnp.where(better, per, best_l)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        updates, opt_state = opt.update(grad, opt_state, x)
        return (optax.apply_updates(x, updates), opt_state, best_x, best_l), None

    carry = (pop.initial, opt.init(pop.initial), pop.initial, pop.loss)
    x, _, best_x, best_l = jax.lax.scan(body, carry, None, length=steps)[0]
    last = _sanitise(loss_fn(x, pop.edges))
    better = last < best_l
    return pop.replace(
        initial=jnp.where(better[..., None], x, best_x), loss=jnp.where(better, last, best_l)
    )


def _anneal_edges(loss_fn, pop: Population, key, config: SearchConfig) -> Population:
    """``sa_steps`` Metropolis moves (one latent edge re-assigned) on ``log(loss)``."""
    from nri_modular import annealing, structure

    b, c, e2 = pop.edges.shape

    def body(p, k):
        k_prop, k_acc = jax.random.split(k)
        proposed = structure.propose_uniform(
            k_prop, p.edges.reshape(b * c, e2), config.num_modules
        ).reshape(b, c, e2)
        loss = _sanitise(loss_fn(p.initial, proposed))
        accept, _ = annealing.metropolis(
            k_acc,
            jnp.log(p.loss).reshape(-1),
            jnp.log(loss).reshape(-1),
            jnp.asarray(config.sa_temperature, loss.dtype),
        )
        accept = accept.reshape(b, c)
        return p.replace(
            edges=jnp.where(accept[..., None], proposed, p.edges),
            loss=jnp.where(accept, loss, p.loss),
        ), None

    return jax.lax.scan(body, pop, jax.random.split(key, config.sa_steps))[0]


def _fresh_samples(key, pop: Population, prior_mean, prior_std, config, edges_known):
    """``samples_per_round`` new candidates: near the best and from the prior."""
    b, c, e2 = pop.edges.shape
    s = config.samples_per_round
    n_local = int(round(config.local_fraction * s))
    k_glob, k_loc, k_edge = jax.random.split(key, 3)
    best = jnp.argmin(pop.loss, axis=1)
    best_init = jnp.take_along_axis(pop.initial, best[:, None, None], 1)  # [B, 1, 4]
    best_edges = jnp.take_along_axis(pop.edges, best[:, None, None], 1)  # [B, 1, 2m]
    local = best_init + config.local_scale * prior_std[None, None] * jax.random.normal(
        k_loc, (b, n_local, STATE_DIM)
    )
    far = _sample(k_glob, (b, s - n_local), prior_mean, prior_std, config)
    initial = jnp.concatenate([local, far], axis=1)
    if edges_known:
        edges = jnp.broadcast_to(best_edges, (b, s, e2))
    else:
        random_edges = jax.random.randint(k_edge, (b, s - n_local, e2), 0, config.num_modules)
        edges = jnp.concatenate(
            [jnp.broadcast_to(best_edges, (b, n_local, e2)), random_edges.astype(jnp.int32)], 1
        )
    return initial, edges


def _check_inputs(observed, observed_structure, hidden_edges, prior_mean, prior_std, config):
    if observed.ndim != 4 or observed.shape[-1] != STATE_DIM:
        raise ValueError(f"observed must be [B, T, m, 4], got {observed.shape}")
    b, t, m, _ = observed.shape
    if config.num_particles is not None and m + 1 != config.num_particles:
        raise ValueError(
            f"the model is for {config.num_particles} particles, so it needs "
            f"{config.num_particles - 1} observed ones plus the latent node; got {m} observed"
        )
    if m < 1 or t < 2:
        raise ValueError(f"need >= 1 observed particle and >= 2 frames, got {observed.shape}")
    if observed_structure.shape != (b, m * (m - 1)):
        raise ValueError(
            f"observed_structure must be [{b}, {m * (m - 1)}] for {m} observed particles, "
            f"got {observed_structure.shape}"
        )
    if hidden_edges is not None and hidden_edges.shape != (b, 2 * m):
        raise ValueError(f"hidden_edges must be [{b}, {2 * m}], got {hidden_edges.shape}")
    for name, v in (("prior_mean", prior_mean), ("prior_std", prior_std)):
        if np.shape(v) != (STATE_DIM,):
            raise ValueError(f"{name} must be [4], got shape {np.shape(v)}")
    if not isinstance(observed, jax.core.Tracer):
        if not np.isfinite(np.asarray(observed)).all():
            raise ValueError("observed trajectories contain NaN or inf")
        if not np.isfinite(np.asarray(prior_mean)).all() or not (np.asarray(prior_std) > 0).all():
            raise ValueError(f"prior must be finite with std > 0, got {prior_mean}, {prior_std}")


def infer_hidden(
    dynamics: DynamicsFn,
    observed: jax.Array,
    observed_structure: jax.Array,
    key: jax.Array,
    prior_mean: jax.Array,
    prior_std: jax.Array,
    config: SearchConfig = SearchConfig(),
    hidden_edges: jax.Array | None = None,
) -> HiddenResult:
    """Infers a latent particle's initial state (and relations) from the observed ones.

    Jit-friendly (``dynamics``, ``config`` static; wrap with ``jax.jit`` via
    :func:`make_infer_hidden`). Every system and candidate is one graph of one batched
    rollout.

    Args:
      dynamics: an ``n = m + 1`` particle model (:data:`DynamicsFn`).
      observed: ``[B, T, m, 4]`` observed trajectories.
      observed_structure: int32 ``[B, m(m-1)]`` relations among the observed particles.
      key: PRNG key.
      prior_mean, prior_std: ``[4]`` distribution of the random initial states.
      config: :class:`SearchConfig`.
      hidden_edges: int32 ``[B, 2m]`` the latent node's relations if known (the paper's
        setting); ``None`` searches them by annealing.

    Returns:
      :class:`HiddenResult` of the best candidate per system.
    """
    _check_inputs(observed, observed_structure, hidden_edges, prior_mean, prior_std, config)
    b, t, m, _ = observed.shape
    c = config.num_candidates
    edges_known = hidden_edges is not None
    prior_mean = jnp.asarray(prior_mean, observed.dtype)
    prior_std = jnp.asarray(prior_std, observed.dtype)
    windows = [min(w, t) for w in config.windows]

    def loss_on(window):
        obs = observed[:, :window]
        return lambda x, e: _sanitise(
            _population_loss(
                dynamics, obs, observed_structure, x, e, config, (prior_mean, prior_std)
            )
        )

    # 1. Many random initial states (and edges), on the first window; keep the best C.
    k_init, k_edges, key = jax.random.split(key, 3)
    n0 = config.num_initial_samples
    initial = _sample(k_init, (b, n0), prior_mean, prior_std, config)
    if edges_known:
        edges = jnp.broadcast_to(hidden_edges[:, None].astype(jnp.int32), (b, n0, 2 * m))
    else:
        edges = jax.random.randint(k_edges, (b, n0, 2 * m), 0, config.num_modules, jnp.int32)
    pop = _keep_best(initial, edges, loss_on(windows[0])(initial, edges), c)

    # 2. Rounds: gradient descent, edge annealing, fresh samples; the window grows.
    for r, (window, lr) in enumerate(zip(windows, config.learning_rates, strict=True)):
        k_round = jax.random.fold_in(key, r)
        k_sa, k_new = jax.random.split(k_round)
        loss_fn = loss_on(window)
        pop = pop.replace(loss=loss_fn(pop.initial, pop.edges))
        pop = _gradient_steps(loss_fn, pop, lr, config.grad_steps)
        if not edges_known and config.sa_steps:
            pop = _anneal_edges(loss_fn, pop, k_sa, config)
        if config.samples_per_round:
            new_init, new_edges = _fresh_samples(
                k_new, pop, prior_mean, prior_std, config, edges_known
            )
            pop = _keep_best(
                jnp.concatenate([pop.initial, new_init], 1),
                jnp.concatenate([pop.edges, new_edges], 1),
                jnp.concatenate([pop.loss, loss_fn(new_init, new_edges)], 1),
                c,
            )

    # 3. The best candidate on the whole window, and its trajectory.
    loss = loss_on(t)(pop.initial, pop.edges)
    best = jnp.argmin(loss, axis=1)
    initial = jnp.take_along_axis(pop.initial, best[:, None, None], 1)[:, 0]
    edges = jnp.take_along_axis(pop.edges, best[:, None, None], 1)[:, 0]
    structure = full_structure(observed_structure, edges)
    preds, trajectory = latent_rollout(dynamics, observed, initial, structure, config.refeed)
    return HiddenResult(
        initial=initial,
        edges=edges,
        loss=jnp.take_along_axis(loss, best[:, None], 1)[:, 0],
        observed_mse=jnp.square(preds - observed[:, 1:]).mean(axis=(1, 2, 3)),
        trajectory=trajectory,
    )


def make_infer_hidden(dynamics: DynamicsFn, config: SearchConfig, edges_known: bool):
    """Jitted ``(observed, observed_structure, key, prior_mean, prior_std[, hidden_edges])
    -> HiddenResult`` (see :func:`infer_hidden`)."""

    if edges_known:

        def fn(observed, observed_structure, key, prior_mean, prior_std, hidden_edges):
            return infer_hidden(
                dynamics,
                observed,
                observed_structure,
                key,
                prior_mean,
                prior_std,
                config,
                hidden_edges,
            )

    else:

        def fn(observed, observed_structure, key, prior_mean, prior_std):
            return infer_hidden(
                dynamics, observed, observed_structure, key, prior_mean, prior_std, config
            )

    return jax.jit(fn)


def hidden_mse(trajectory: jax.Array, truth: jax.Array) -> jax.Array:
    """Per-system MSE over frames and the 4 state dims: ``[B, T, 4], [B, T, 4] -> [B]``."""
    if trajectory.shape != truth.shape:
        raise ValueError(f"shapes differ: {trajectory.shape} vs {truth.shape}")
    return jnp.square(trajectory - truth).mean(axis=(1, 2))


def oracle_hidden_mse(
    dynamics: DynamicsFn, systems: HiddenSystems, refeed: int, batch: int = 100
) -> np.ndarray:
    """Hidden MSE of the model's rollout from the TRUE initial state, per system: ``[B]``.

    The floor of :func:`infer_hidden` with this model: what is left is the model's own
    open-loop error on the latent node, not the search's.
    """
    fn = jax.jit(lambda o, s, e, x: latent_rollout(dynamics, o, x, full_structure(s, e), refeed)[1])
    out = []
    for i in range(0, systems.observed.shape[0], batch):
        sl = slice(i, i + batch)
        traj = fn(
            jnp.asarray(systems.observed[sl]),
            jnp.asarray(systems.observed_structure[sl]),
            jnp.asarray(systems.hidden_edges[sl]),
            jnp.asarray(systems.hidden_states[sl, 0]),
        )
        out.append(np.asarray(hidden_mse(traj, jnp.asarray(systems.hidden_states[sl]))))
    return np.concatenate(out)


def existence_scores(with_latent_loss: jax.Array, without_latent_loss: jax.Array) -> jax.Array:
    """``log(loss without / loss with a latent node)``: ``[B]``; large = a hidden particle."""
    return jnp.log(without_latent_loss) - jnp.log(with_latent_loss)


def best_threshold(scores_present: np.ndarray, scores_absent: np.ndarray) -> float:
    """The score threshold with the best balanced accuracy (midpoint between scores)."""
    values = np.sort(np.concatenate([scores_present, scores_absent]))
    cuts = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    acc = [((scores_present > c).mean() + (scores_absent <= c).mean()) / 2 for c in cuts]
    return float(cuts[int(np.argmax(acc))])


# ----------------------------------------------------------------------------------------
# Experiment driver (file I/O below this line).


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of the hidden-particle experiment (defaults: the CPU demo)."""

    # Data (springs, cached in data_dir; a folder of its own, since the main demos keep
    # 2,000 training systems in data/).
    data_dir: str = "data/springs_10k"
    num_particles: int = 5
    num_train: int = 10000
    num_valid: int = 100
    num_test: int = 1000
    data_seed: int = 42
    # Model trained with the TRUE edges (structure = labels, module k = relation type k).
    # 128 wide on 10k systems: rollout-from-truth MSE 1.4e-4 (64 wide on 2k: 5.5e-4).
    edge_hidden: tuple[int, ...] = (128, 128, 128)
    node_hidden: tuple[int, ...] = (128, 128, 128)
    batch_size: int = 50
    num_epochs: int = 20
    learning_rate: float = 2e-3
    final_learning_rate: float = 1e-4
    p: int = 10
    seed: int = 0
    # Inference.
    num_systems: int = 200
    obs_frames: int = 49
    hidden: str = "last"  # "last" or "random" (seeded per system)
    system_batch: int = 50
    num_existence: int = 100  # systems per class (with / without a hidden particle)
    existence_threshold: float = 2.0
    existence_baseline: str = "null_latent"  # or "observed_only", see existence_test
    null_module: int = 0  # the "no relation" module of the true-edges model
    # Search (see SearchConfig).
    refeed: int = 1
    num_candidates: int = 8
    num_initial_samples: int = 256
    samples_per_round: int = 32
    grad_steps: int = 10
    sa_steps: int = 4
    prior_weight: float = 1e-7
    log_every: int = 200

    def __post_init__(self):
        if self.existence_baseline not in EXISTENCE_BASELINES:
            raise ValueError(
                f"unknown existence_baseline {self.existence_baseline!r}; expected one of "
                f"{EXISTENCE_BASELINES}"
            )
        if self.hidden not in HIDDEN_CHOICES:
            raise ValueError(f"unknown hidden {self.hidden!r}; expected one of {HIDDEN_CHOICES}")
        for name in (
            "num_particles",
            "num_train",
            "num_test",
            "batch_size",
            "num_epochs",
            "p",
            "num_systems",
            "obs_frames",
            "system_batch",
            "log_every",
            "refeed",
            "num_candidates",
            "num_initial_samples",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_particles < 3:
            raise ValueError(
                f"need >= 3 particles (2 observed + 1 hidden), got {self.num_particles}"
            )
        if self.num_systems > self.num_test:
            raise ValueError(f"num_systems {self.num_systems} exceeds num_test {self.num_test}")
        if self.num_existence < 0:
            raise ValueError(f"num_existence must be >= 0, got {self.num_existence}")


HIDDEN_CHOICES = ("last", "random")
EXISTENCE_BASELINES = ("null_latent", "observed_only")


def _model_meta(config: ExperimentConfig) -> dict:
    keys = ("num_particles", "num_train", "data_seed", "edge_hidden", "node_hidden")
    keys += ("batch_size", "num_epochs", "learning_rate", "final_learning_rate", "p", "seed")
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in ((k, getattr(config, k)) for k in keys)
    }


def train_true_edges(config: ExperimentConfig, bank: ModuleBank, train, log=print) -> Params:
    """Trains the module bank on the training split with the TRUE edges as structures.

    BounceGrad with ``sa_steps=0`` and ``structures = labels``: plain gradient descent on
    the ``p``-step rollout loss, module ``k`` computing relation type ``k``.

    Args:
      train: a :class:`~nri_modular.data.datasets.Split` (states ``[S, T, n, 4]``).

    Returns:
      The trained parameters.
    """
    from nri_modular import bouncegrad
    from nri_modular.data import datasets

    steps_per_epoch = config.num_train // config.batch_size
    total = steps_per_epoch * config.num_epochs
    schedule = optax.cosine_decay_schedule(
        config.learning_rate, total, alpha=config.final_learning_rate / config.learning_rate
    )
    optimizer = optax.adam(schedule)
    state = bouncegrad.init_train_state(
        jax.random.PRNGKey(config.seed), bank, optimizer, config.num_train, config.num_particles
    )
    state = state.replace(structures=jnp.asarray(train.labels))
    step_fn = jax.jit(
        bouncegrad.make_bouncegrad_step(
            bank,
            optimizer,
            bouncegrad.BounceGradConfig(p=config.p, sa_steps=0),
            config.num_particles,
        ),
        donate_argnums=0,
    )
    step, start, losses = 0, time.time(), []
    for epoch in range(config.num_epochs):
        for ids in datasets.task_batches(config.num_train, config.batch_size, config.seed, epoch):
            batch = bouncegrad.Batch(
                jnp.asarray(ids), jnp.asarray(train.states[ids]), jnp.asarray(train.labels[ids])
            )
            state, metrics = step_fn(state, batch)
            losses.append(metrics["loss"])
            step += 1
            if step % config.log_every == 0 or step == total:
                log(
                    f"train step {step}/{total} | loss {float(np.mean(jax.device_get(losses))):.3e}"
                    f" | {time.time() - start:.0f} s"
                )
                losses = []
    return state.params


def load_or_train(config: ExperimentConfig, workdir: str, train, log=print):
    """The true-edges model in ``<workdir>/model.msgpack`` (trained and saved if missing).

    Returns:
      ``(bank, params, train_seconds)``; ``train_seconds`` is 0 when loaded.
    """
    bank = ModuleBank(2, config.edge_hidden, config.node_hidden)
    path = os.path.join(workdir, "model.msgpack")
    meta_path = os.path.join(workdir, "model.json")
    meta = _model_meta(config)
    template = bank.init(jax.random.PRNGKey(0))
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != meta:
            raise ValueError(f"{path} was trained with {saved}, not {meta}; use another --workdir")
        with open(path, "rb") as f:
            params = jax.tree.map(jnp.asarray, flax.serialization.from_bytes(template, f.read()))
        log(f"loaded the true-edges model from {path}")
        return bank, params, 0.0
    start = time.time()
    params = train_true_edges(config, bank, train, log)
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(flax.serialization.to_bytes(params))
    os.replace(path + ".tmp", path)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return bank, params, time.time() - start


def search_config(config: ExperimentConfig) -> SearchConfig:
    """The latent-node search settings of the experiment."""
    return SearchConfig(
        refeed=config.refeed,
        num_candidates=config.num_candidates,
        num_initial_samples=config.num_initial_samples,
        samples_per_round=config.samples_per_round,
        grad_steps=config.grad_steps,
        sa_steps=config.sa_steps,
        num_particles=config.num_particles,
        prior_weight=config.prior_weight,
    )


def state_prior(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``[4]`` of the initial states of every particle of ``[S, T, n, 4]``."""
    first = np.asarray(states)[:, 0].reshape(-1, STATE_DIM)
    return first.mean(0).astype(np.float32), first.std(0).astype(np.float32)


def free_particle_floor(states: np.ndarray, labels: np.ndarray, frames: int) -> float:
    """Lowest hidden MSE any method can reach on a particle with no relation at all.

    Such a particle exerts no pull, so the observed particles carry no information about
    it and the best estimate under squared error is the mean trajectory of free particles;
    its error is their per-frame variance, averaged over frames and the 4 state dims.

    Args:
      states: ``[S, T, n, 4]`` (e.g. the training split); labels: int ``[S, n(n-1)]``.
      frames: frames ``0..frames-1`` to average over.

    Returns:
      The floor (``nan`` if no particle of ``states`` is free).
    """
    n = states.shape[2]
    matrix = graph_lib.edges_to_matrix(np.asarray(labels), n)
    free = (matrix.sum(axis=1) + matrix.sum(axis=2)) == 0  # [S, n]
    if not free.any():
        return float("nan")
    paths = np.swapaxes(np.asarray(states)[:, :frames], 1, 2)[free]  # [F, frames, 4]
    return float(paths.var(axis=0).mean())


def _batched(fn, arrays: tuple, batch: int, key, log=None, what=""):
    """Runs jitted ``fn(*arrays_batch, key)`` on fixed-size batches (last one padded)."""
    total = arrays[0].shape[0]
    outs = []
    for i, start in enumerate(range(0, total, batch)):
        idx = np.minimum(np.arange(start, start + batch), total - 1)
        out = fn(*(jnp.asarray(a[idx]) for a in arrays), jax.random.fold_in(key, i))
        keep = min(batch, total - start)
        outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], out))
        if log is not None:
            log(f"{what}: {min(start + batch, total)}/{total} systems")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def absent_systems(num: int, num_observed: int, frames: int, normalization, seed: int):
    """Genuine ``m``-particle springs systems (nothing hidden), normalised like the data.

    Returns:
      ``(states [num, frames, m, 4], labels int32 [num, m(m-1)])``.
    """
    from nri_modular.data import physics

    steps = (frames + 1) * 100
    loc, vel, edges = physics.simulate("springs", seed, num, num_observed, steps, 100)
    states = np.concatenate([loc, vel], axis=2).transpose(0, 1, 3, 2)  # [S, T, m, 4]
    states = normalization.normalise(states.astype(np.float32))
    labels = (graph_lib.matrix_to_edges(edges) > 0).astype(np.int32)
    return states[:, :frames].astype(np.float32), labels


def run_experiment(config: ExperimentConfig, workdir: str, log=print) -> dict:
    """Train (or load) the true-edges springs model, hide a particle, infer it, measure.

    Writes ``<workdir>/results.json`` (keys ``hidden_mse``, ``num_systems``,
    ``existence_accuracy``, ``wall_seconds`` and details), ``<workdir>/hidden_node.png``
    (Figure 4 style) and ``<workdir>/hidden_node.npz`` (inferred and true trajectories).
    """
    from nri_modular.data import datasets

    wall_start = time.time()
    data = datasets.ensure_dataset(
        config.data_dir,
        "springs",
        config.num_train,
        config.num_valid,
        config.num_test,
        config.data_seed,
        config.num_particles,
    )
    bank, params, train_seconds = load_or_train(config, workdir, data.train, log)
    n, t = config.num_particles, config.obs_frames
    if t > data.test.num_frames:
        raise ValueError(f"obs_frames {t} exceeds the test trajectories' {data.test.num_frames}")
    prior_mean, prior_std = state_prior(data.train.states)
    dynamics = gnn_dynamics(bank, params, edge_compute="blocked")
    scfg = search_config(config)
    key = jax.random.PRNGKey(config.seed + 1)
    rng = np.random.default_rng(config.seed)

    # 1. The paper's setting: hide particle k, true edges given, infer its trajectory.
    num = config.num_systems
    if config.hidden == "last":
        hidden = np.full(num, n - 1)
    else:
        hidden = rng.integers(0, n, num)
    systems = hide_particle(data.test.states[:num, :t], data.test.labels[:num], hidden)
    infer_known = make_infer_hidden(dynamics, scfg, edges_known=True)
    start = time.time()
    known = _batched(
        lambda o, s, e, k: infer_known(o, s, k, prior_mean, prior_std, e),
        (systems.observed, systems.observed_structure, systems.hidden_edges),
        config.system_batch,
        jax.random.fold_in(key, 0),
        log,
        "hidden particle, true edges",
    )
    infer_seconds = time.time() - start
    mse = np.asarray(hidden_mse(known.trajectory, systems.hidden_states))
    degree = systems.hidden_edges.sum(axis=1) // 2  # springs are symmetric
    connected = degree > 0
    results = {
        "hidden_mse": float(mse.mean()),
        "hidden_mse_median": float(np.median(mse)),
        "hidden_mse_connected": float(mse[connected].mean()) if connected.any() else None,
        "hidden_mse_unconnected": float(mse[~connected].mean()) if (~connected).any() else None,
        "num_connected": int(connected.sum()),
        # No method does better than this on the systems whose hidden particle is free.
        "free_particle_floor": free_particle_floor(data.train.states, data.train.labels, t),
        "hidden_position_mse": float(
            np.square(known.trajectory[..., :2] - systems.hidden_states[..., :2]).mean()
        ),
        "hidden_velocity_mse": float(
            np.square(known.trajectory[..., 2:] - systems.hidden_states[..., 2:]).mean()
        ),
        "initial_state_mse": float(np.square(known.initial - systems.hidden_states[:, 0]).mean()),
        "observed_mse_with_latent": float(known.observed_mse.mean()),
        "hidden_mse_from_true_initial": float(
            oracle_hidden_mse(dynamics, systems, scfg.refeed).mean()
        ),
        "paper_hidden_mse": PAPER_HIDDEN_MSE,
        "num_systems": num,
        "obs_frames": t,
        "hidden": config.hidden,
        "infer_seconds": infer_seconds,
        "train_seconds": train_seconds,
    }
    log(f"hidden-particle MSE {results['hidden_mse']:.3e} on {num} systems ({infer_seconds:.0f} s)")

    # 2. Existence test: present (a 5-particle system, one hidden) vs absent (a genuine
    # 4-particle system); edges of the latent node unknown (searched) in both.
    if config.num_existence:
        results.update(existence_test(config, dynamics, data, prior_mean, prior_std, key, log))

    np.savez_compressed(
        os.path.join(workdir, "hidden_node.npz"),
        observed=systems.observed,
        hidden_true=systems.hidden_states,
        hidden_inferred=known.trajectory,
        hidden_index=systems.hidden_index,
        hidden_edges=systems.hidden_edges,
        mse=mse,
    )
    figure = os.path.join(workdir, "hidden_node.png")
    plot_figure4(systems, known.trajectory, mse, figure)
    results["figure"] = figure
    results["wall_seconds"] = time.time() - wall_start
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
    return results


PAPER_HIDDEN_MSE = 1.09e-3


def existence_test(config, dynamics, data, prior_mean, prior_std, key, log=print) -> dict:
    """Detection of an unobserved particle from ``log(loss without / loss with latent)``.

    Present: ``num_existence`` test systems (those after the ``num_systems`` used above,
    so the two evaluations do not share systems) with particle ``n - 1`` hidden.
    Absent: ``num_existence`` freshly simulated ``(n - 1)``-particle springs systems
    (same simulator, normalisation and frames), so the observed particles truly feel
    nothing else.

    "With": the latent node's edges are searched (annealing) and its state fitted.
    "Without" (``existence_baseline``):

    * ``"null_latent"`` (default): the same search with every latent edge fixed to the
      "no relation" module ``null_module`` (module k = relation type k in the true-edges
      model; springs type 0 = no spring). Both hypotheses then run the ``n``-node graph
      the model was trained on and get the same optimisation budget, so the comparison
      is only "does the latent particle interact?".
    * ``"observed_only"``: the ``n - 1`` observed particles alone. The model was trained
      on ``n``-node graphs, so this baseline is off-distribution (one message fewer into
      every node) and a latent node "improves" it even when nothing is hidden.

    A system is declared to hold a hidden particle when the latent node lowers the loss
    by more than ``existence_threshold`` (a fixed ratio, not tuned on the test systems).
    """
    n, m, t = config.num_particles, config.num_particles - 1, config.obs_frames
    num = config.num_existence
    lo = config.num_systems if config.num_systems + num <= data.test.num_tasks else 0
    present = hide_particle(
        data.test.states[lo : lo + num, :t], data.test.labels[lo : lo + num], np.full(num, n - 1)
    )
    absent_states, absent_labels = absent_systems(
        num, m, t, data.normalization, seed=config.seed + 1000
    )
    scfg = search_config(config)
    infer = make_infer_hidden(dynamics, scfg, edges_known=False)
    if config.existence_baseline == "null_latent":
        infer_null = make_infer_hidden(dynamics, scfg, edges_known=True)
        null_edges = np.full((num, 2 * m), config.null_module, np.int32)

        def baseline(obs, struct, k):
            res = _batched(
                lambda o, s, e, kk: infer_null(o, s, kk, prior_mean, prior_std, e),
                (obs, struct, null_edges),
                config.system_batch,
                k,
            )
            return res.observed_mse

    else:
        without = jax.jit(lambda o, s: observed_only_loss(dynamics, o, s, scfg.refeed))

        def baseline(obs, struct, k):
            del k
            return np.asarray(without(jnp.asarray(obs), jnp.asarray(struct)))

    out = {"existence_baseline": config.existence_baseline}
    scores = {}
    for c, (name, (obs, struct)) in enumerate(
        (
            ("present", (present.observed, present.observed_structure)),
            ("absent", (absent_states, absent_labels)),
        )
    ):
        start = time.time()
        res = _batched(
            lambda o, s, k: infer(o, s, k, prior_mean, prior_std),
            (obs, struct),
            config.system_batch,
            jax.random.fold_in(key, 1 + c),
            log,
            f"existence test ({name})",
        )
        loss_without = baseline(obs, struct, jax.random.fold_in(key, 3 + c))
        scores[name] = np.asarray(existence_scores(res.observed_mse, loss_without))
        out[f"existence_{name}_seconds"] = time.time() - start
        if name == "present":
            mse = np.asarray(hidden_mse(res.trajectory, present.hidden_states))
            out["hidden_mse_unknown_edges"] = float(mse.mean())
            out["latent_edge_accuracy"] = float((res.edges == present.hidden_edges).mean())
    cut = float(np.log(config.existence_threshold))
    connected = present.hidden_edges.sum(axis=1) > 0
    detected = scores["present"] > cut
    rejected = scores["absent"] <= cut
    out.update(
        existence_accuracy=float((detected.sum() + rejected.sum()) / (2 * num)),
        existence_detection_rate=float(detected.mean()),
        existence_detection_rate_connected=float(detected[connected].mean()),
        existence_false_alarm_rate=float(1 - rejected.mean()),
        existence_accuracy_connected=float(
            (detected[connected].sum() + rejected.sum()) / (connected.sum() + num)
        ),
        existence_threshold=config.existence_threshold,
        existence_best_threshold_accuracy=_balanced_accuracy(
            scores["present"], scores["absent"], best_threshold(scores["present"], scores["absent"])
        ),
        existence_num_per_class=num,
        existence_score_present_median=float(np.median(scores["present"])),
        existence_score_absent_median=float(np.median(scores["absent"])),
    )
    log(
        f"existence test: accuracy {out['existence_accuracy']:.3f} (detected "
        f"{out['existence_detection_rate']:.3f} present, false alarms "
        f"{out['existence_false_alarm_rate']:.3f})"
    )
    return out


def _balanced_accuracy(present, absent, cut) -> float:
    return float(((present > cut).mean() + (absent <= cut).mean()) / 2)


def plot_figure4(systems: HiddenSystems, inferred: np.ndarray, mse: np.ndarray, path: str):
    """Figure-4-style PNG: observed paths, the true hidden path and ours, for 3 systems.

    Shows the systems with the median, 25th and 75th percentile hidden MSE (not the best).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(mse)
    picks = [order[int(q * (len(order) - 1))] for q in (0.25, 0.5, 0.75)]
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 5))
    colors = plt.cm.tab10([0, 1, 2, 4, 5, 6, 7, 8, 9])  # no red: red is "inferred"
    for ax, i in zip(np.atleast_1d(axes), picks, strict=True):
        obs = systems.observed[i]
        for j in range(obs.shape[1]):
            ax.plot(obs[:, j, 0], obs[:, j, 1], color=colors[j], lw=1.5, label=f"observed {j}")
            ax.plot(obs[0, j, 0], obs[0, j, 1], "o", color=colors[j], ms=4)
        truth = systems.hidden_states[i]
        ax.plot(truth[:, 0], truth[:, 1], "k--", lw=2.5, label="hidden (true)")
        ax.plot(inferred[i, :, 0], inferred[i, :, 1], "r-", lw=2, label="hidden (inferred)")
        ax.plot(truth[0, 0], truth[0, 1], "ko", ms=6)
        ax.plot(inferred[i, 0, 0], inferred[i, 0, 1], "rx", ms=8)
        springs = int(systems.hidden_edges[i].sum() // 2)
        ax.set_title(f"test system {i}: hidden MSE {mse[i]:.1e}, {springs} spring(s)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x (normalised)")
        ax.set_ylabel("y (normalised)")
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="best")
    fig.suptitle("Hidden particle inferred from the others (o: frame 0; true dashed, ours red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_results(results: dict) -> str:
    """The hidden-particle results as a table for the terminal."""
    r = results
    lines = [
        f"hidden particle ({r['hidden']}) in {r['num_systems']} springs test systems, "
        f"{r['obs_frames']} observed frames, {r['wall_seconds']:.0f} s wall "
        f"(inference {r['infer_seconds']:.0f} s, training {r['train_seconds']:.0f} s)",
        "| metric | ours | paper |",
        "|---|---|---|",
        f"| hidden-particle MSE (true edges) | {r['hidden_mse']:.3e} | "
        f"{r['paper_hidden_mse']:.2e} |",
        f"| ... median over systems | {r['hidden_mse_median']:.3e} | |",
    ]
    if "hidden_mse_from_true_initial" in r:
        lines.append(
            f"| rollout from the TRUE initial state (model floor) | "
            f"{r['hidden_mse_from_true_initial']:.3e} | |"
        )
    unconnected = r["num_systems"] - r["num_connected"]
    if r.get("hidden_mse_connected") is not None:
        lines.append(
            f"| ... hidden particle with >= 1 spring ({r['num_connected']}) | "
            f"{r['hidden_mse_connected']:.3e} | |"
        )
    if r.get("hidden_mse_unconnected") is not None:
        lines.append(
            f"| ... hidden particle with no spring ({unconnected}) | "
            f"{r['hidden_mse_unconnected']:.3e} | |"
        )
    if r.get("free_particle_floor") is not None and unconnected:
        floor = r["free_particle_floor"]
        lines.append(
            f"| ... lowest possible there (free particles' per-frame variance) | {floor:.3e} | |"
        )
        lines.append(
            f"| lowest possible mean over all {r['num_systems']} systems "
            f"({unconnected} x that / {r['num_systems']}) | "
            f"{unconnected * floor / r['num_systems']:.3e} | |"
        )
    if "existence_accuracy" in r:
        per_class = r["existence_num_per_class"]
        lines += [
            f"| hidden-particle MSE (edges searched) | {r['hidden_mse_unknown_edges']:.3e} | |",
            f"| existence test accuracy ({per_class} + {per_class}) | "
            f"{100 * r['existence_accuracy']:.1f}% | |",
            f"| ... detected when present / when connected | "
            f"{100 * r['existence_detection_rate']:.1f}% / "
            f"{100 * r['existence_detection_rate_connected']:.1f}% | |",
            f"| ... false alarms when absent | {100 * r['existence_false_alarm_rate']:.1f}% | |",
        ]
    lines.append(f"figure: {r['figure']}")
    return "\n".join(lines)
