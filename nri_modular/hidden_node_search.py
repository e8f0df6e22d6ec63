"""The search for an unobserved particle (:mod:`nri_modular.hidden_node`'s problem):
random sampling, gradient descent on the latent initial state, annealing on its edges.

Batched over systems ``B`` and candidates ``C`` (flattened into the ``G = B * C`` axis of
one rollout) and jitted (:func:`make_infer_hidden`); the steps are described in
:mod:`nri_modular.hidden_node`'s docstring.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular.hidden_node import (
    STATE_DIM,
    DynamicsFn,
    HiddenSearchConfig,
    full_structure,
    hidden_loss,
    latent_rollout,
)

DEFAULT_CONFIG = HiddenSearchConfig()


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


def _anneal_edges(loss_fn, pop: Population, key, config: HiddenSearchConfig) -> Population:
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
    config: HiddenSearchConfig = DEFAULT_CONFIG,
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
      config: :class:`HiddenSearchConfig`.
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


def make_infer_hidden(dynamics: DynamicsFn, config: HiddenSearchConfig, edges_known: bool):
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
