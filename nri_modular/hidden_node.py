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

Why teacher forcing (``refeed = 1``) by default: chosen on 50 *validation* systems
(``experiments/hidden_node.py --split=valid --num_systems=50 --num_existence=0``, a
64-wide true-edges model trained 8 epochs on 2,000 systems), re-feeding every frame gave
a median hidden MSE of 5.6e-2 against 6.0e-2 for ``refeed = 2`` and 7.1e-2 for
``refeed = 10`` (the training loss's ``p``): the latent node is then driven by the true
observed states, and the observed particles' own model error does not compound.

Search (:func:`nri_modular.hidden_node_search.infer_hidden`), batched over systems ``B``
and candidates ``C`` (flattened into the ``G = B * C`` axis of one rollout) and jitted:

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
relation" module; :func:`nri_modular.hidden_node_experiment.existence_test` says why not
the ``n - 1`` particles alone): a large ratio means an unobserved particle is pulling on
the observed ones.

Dynamics are abstract (``DynamicsFn``): the learned GNN (:func:`gnn_dynamics`) in the
experiment, the exact springs integrator (:func:`springs_dynamics`) as a planted model
in the tests.

The experiment (train the springs model on the true edges, hide a particle in each test
system, infer it, measure) is :mod:`nri_modular.hidden_node_experiment`; this module is
the library it calls, pure functions with no file I/O: the problem, its loss and its
scores here, the search in :mod:`nri_modular.hidden_node_search`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nri_modular import gnn
from nri_modular import graph as graph_lib
from nri_modular.modules import STATE_DIM, ModuleBank, Params

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
class HiddenSearchConfig:
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
    config: HiddenSearchConfig,
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


def hidden_mse(trajectory: jax.Array, truth: jax.Array) -> jax.Array:
    """Per-system MSE over frames and the 4 state dims: ``[B, T, 4], [B, T, 4] -> [B]``."""
    if trajectory.shape != truth.shape:
        raise ValueError(f"shapes differ: {trajectory.shape} vs {truth.shape}")
    return jnp.square(trajectory - truth).mean(axis=(1, 2))


def oracle_hidden_mse(
    dynamics: DynamicsFn, systems: HiddenSystems, refeed: int, batch: int = 100
) -> np.ndarray:
    """Hidden MSE of the model's rollout from the TRUE initial state, per system: ``[B]``.

    The floor of :func:`nri_modular.hidden_node_search.infer_hidden` with this model: what
    is left is the model's own open-loop error on the latent node, not the search's.
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


def balanced_accuracy(present: np.ndarray, absent: np.ndarray, cut: float) -> float:
    """Mean of the detection rate (``present > cut``) and rejection rate (``absent <= cut``)."""
    return float(((present > cut).mean() + (absent <= cut).mean()) / 2)


def best_threshold(scores_present: np.ndarray, scores_absent: np.ndarray) -> float:
    """The score threshold with the best balanced accuracy (midpoint between scores)."""
    values = np.sort(np.concatenate([scores_present, scores_absent]))
    cuts = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    acc = [balanced_accuracy(scores_present, scores_absent, c) for c in cuts]
    return float(cuts[int(np.argmax(acc))])


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
