"""The one interface every method of the paper's Tables 1-2 implements, and its evaluation.

A :class:`Method` is trained on the training split (choosing its settings, e.g. the epoch
to keep, on the valid split), may infer a structure per task from the observed frames
``0 .. obs_frames - 1`` and predicts ``horizon`` steps from frame ``obs_frames`` without
truth. :func:`evaluate_method` scores every method the same way, on the same test tasks
and normalisation as ``modular`` (Kipf et al. 2018's protocol, :mod:`nri_modular.metrics`):

* ``mse_per_step[k - 1]``: MSE of the ``k``-step prediction (normalised units, averaged
  over tasks, particles and the 4 state dims), frames ``obs_frames + 1 ..``;
* ``edge_accuracy``: inferred structures scored against the true relations under the
  module -> relation map chosen on TRAINING tasks (:func:`metrics.module_mapping`), or the
  identity for methods whose outputs are relation types (supervised, correlation).

Trained methods save their parameters with :func:`nri_modular.checkpoints.save_model`
in ``<workdir>`` and a rerun loads them instead of retraining (the saved meta must match
the current settings, else it is an error naming the differences).

Usage::

  method = baselines.make_method("nri_vae", config, settings)
  method.fit(data, workdir)                      # trains, or loads a finished run
  scores = baselines.evaluate_method(method, data, config)
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from nri_modular import checkpoints, gnn, metrics
from nri_modular.config import Config
from nri_modular.data import batching, datasets
from nri_modular.modules import ModuleBank, Params

# Config fields a baseline's training depends on (the data, the sizes, the batches); a
# saved baseline is reloaded only if they and the BaselineSettings are unchanged.
TRAINING_FIELDS = (
    "system",
    "num_particles",
    "num_train",
    "num_valid",
    "data_seed",
    "num_modules",
    "edge_hidden",
    "node_hidden",
    "proposal_hidden",
    "batch_size",
    "p",
    "obs_frames",
)
MAX_VALID_CHECKS = 40  # valid-loss evaluations per training run (at most ~this many)
NUM_TYPES = 2  # relation types of both systems (spring / none; attract / repel)


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """Training settings shared by the gradient-trained baselines (table-only flags).

    Every baseline trains ``epochs`` epochs of ``batch_size`` tasks with Adam at
    ``learning_rate`` halved every ``lr_decay_epochs`` epochs (Kipf et al.: 5e-4, 200,
    of 500 epochs), keeping the parameters of the epoch with the lowest valid-split loss.

    Attributes:
      epochs: passes over the training tasks.
      learning_rate: Adam step size.
      lr_decay_epochs: the step size halves every this many epochs (0: constant).
      batch_size: tasks per step (``None``: the Config's ``batch_size``).
      gumbel_tau: Gumbel-softmax temperature of the NRI VAE (Kipf et al.: 0.5).
      nll_variance: fixed variance of the VAE's Gaussian likelihood (Kipf et al.: 5e-5).
      lstm_layers: stacked LSTM layers (Kipf et al.'s LSTM baselines: 2).
      mapping_tasks: training tasks whose inferred structures choose the module -> relation
        map (the first ones; fewer than all keeps the search cheap, the map is one of
        ``K!`` permutations).
      seed: initialisation and data order.
    """

    epochs: int = 40
    learning_rate: float = 5e-4
    lr_decay_epochs: int = 200
    batch_size: int | None = None
    gumbel_tau: float = 0.5
    nll_variance: float = 5e-5
    lstm_layers: int = 2
    mapping_tasks: int = 1000
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "lstm_layers", "mapping_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr_decay_epochs < 0:
            raise ValueError(f"lr_decay_epochs must be >= 0, got {self.lr_decay_epochs}")
        for name in ("learning_rate", "gumbel_tau", "nll_variance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


class Method(abc.ABC):
    """One method of the tables.

    Subclasses set the class attributes and implement :meth:`_train` (unless
    ``trainable`` is False) and :meth:`predict`; those that infer structures implement
    :meth:`infer`.

    Attributes:
      name: registry name (``baselines.METHODS``).
      infers_structure: :meth:`infer` returns a structure per task (edge accuracy exists).
      outputs_relation_types: :meth:`infer` returns relation types (identity map), not
        unlabelled module indices.
      predicts: :meth:`predict` exists (Table 1 row).
      trainable: has parameters to train and save.
      given_true_relations: :meth:`predict` is given the test tasks' true relations as
        ``structures`` (the true-graph upper bound; it infers nothing).
    """

    name: ClassVar[str]
    infers_structure: ClassVar[bool] = False
    outputs_relation_types: ClassVar[bool] = False
    predicts: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    given_true_relations: ClassVar[bool] = False

    def __init__(self, config: Config, settings: BaselineSettings):
        self.config = config
        self.settings = settings
        self.params: Params = None
        self.train_seconds: float = 0.0

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size or self.config.batch_size

    def meta(self) -> dict:
        """What the saved parameters were trained with (compared when loading)."""
        config = checkpoints.config_json(self.config)
        return {
            "method": self.name,
            "config": {k: config[k] for k in TRAINING_FIELDS},
            "settings": dataclasses.asdict(self.settings),
        }

    def fit(self, data: datasets.Dataset, workdir: str) -> None:
        """Trains on ``data.train`` (choices on ``data.valid``), or loads ``workdir``.

        Raises:
          ValueError: ``workdir`` holds a model trained with other settings.
        """
        if not self.trainable:
            return
        meta = self.meta()
        if os.path.isdir(workdir):
            params, saved = checkpoints.load_model(workdir)
            diff = _meta_diff(saved, meta)
            if diff:
                raise ValueError(
                    f"{workdir} holds a {saved.get('method')!r} model trained with other "
                    f"settings ({diff}); delete it or use another --out directory"
                )
            self.params, self.train_seconds = params, float(saved["train_seconds"])
            logging.info("%s: loaded the finished run in %s", self.name, workdir)
            return
        start = time.time()
        self.params = self._train(data)
        self.train_seconds = time.time() - start
        checkpoints.save_model(workdir, self.params, {**meta, "train_seconds": self.train_seconds})

    def _train(self, data: datasets.Dataset) -> Params:
        """Returns trained parameters (the valid-split choice already made)."""
        raise NotImplementedError(f"{self.name} has no training")

    def _fit_adam(
        self, init: Callable[[jax.Array], Params], loss_fn: LossFn, valid_fn: ValidFn, data
    ) -> Params:
        """:func:`fit_adam` from ``init(key)`` with this method's name, settings (seed,
        epochs, schedule), batch size and observed frames."""
        return fit_adam(
            self.name,
            init_params(init, self.settings.seed),
            loss_fn,
            valid_fn,
            data,
            self.settings,
            self.batch_size,
            self.config.obs_frames,
        )

    def infer(self, observed: np.ndarray) -> np.ndarray:
        """Structures from observed frames.

        Args:
          observed: ``[N, obs_frames, n, 4]``.

        Returns:
          int32 ``[N, n(n-1)]`` module (or relation type) of every directed edge.
        """
        raise NotImplementedError(f"{self.name} does not infer structures")

    def train_structures(self, data: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Structures of (the first ``mapping_tasks``) training tasks and their labels.

        They choose the module -> relation map. Default: :meth:`infer` on their frames.
        """
        m = min(self.settings.mapping_tasks, data.train.num_tasks)
        ids = np.arange(m)
        states, labels = datasets.gather(data.train, ids)
        return self.infer(states[:, : self.config.obs_frames]), labels

    @abc.abstractmethod
    def predict(self, frames: np.ndarray, structures: np.ndarray | None) -> np.ndarray:
        """Open-loop prediction of ``config.horizon`` steps after the last given frame.

        Args:
          frames: ``[N, obs_frames + 1, n, 4]`` frames ``0 .. obs_frames``.
          structures: int32 ``[N, n(n-1)]`` from :meth:`infer` (None if it infers none).

        Returns:
          ``[N, horizon, n, 4]``: frames ``obs_frames + 1 .. obs_frames + horizon``.
        """


def _meta_diff(saved: dict, current: dict) -> str:
    """Names the entries of ``current`` that ``saved`` holds with other values."""
    diffs = []
    for key in ("method", "config", "settings"):
        a, b = saved.get(key), current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} -> {b[k]!r}" for k in b if a.get(k) != b[k]]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return "; ".join(diffs)


def check_one_size(data: datasets.Dataset) -> None:
    """Raises unless every loaded split's systems have one size: the baselines and the
    tables do not handle systems of different sizes yet (``experiments/train.py`` does)."""
    ragged = data.ragged_splits
    if ragged:
        raise ValueError(
            f"the {', '.join(ragged)} split(s) hold systems of different sizes (sizes_ files): "
            "the baselines and tables handle one size only; use experiments/train.py"
        )


def evaluate_method(method: Method, data: datasets.Dataset, config: Config) -> dict:
    """Scores a fitted method on the test tasks (the one evaluation path of all methods).

    Returns:
      ``{"mse_1", "mse_10", "mse_20", "mse_per_step", "edge_accuracy", "train_seconds",
      "eval_seconds"}``; MSEs are ``None`` for a method that does not predict (or a
      shorter horizon), ``edge_accuracy`` is ``None`` for one that infers no structure.
    """
    start = time.time()
    obs, horizon = config.obs_frames, config.horizon
    test = data.test
    check_one_size(data)
    if test.num_frames <= obs + horizon:
        raise ValueError(
            f"test trajectories have {test.num_frames} frames; need more than obs_frames + "
            f"horizon = {obs + horizon}"
        )
    structures, accuracy = None, None
    if method.infers_structure:
        structures = np.asarray(method.infer(test.states[:, :obs]), np.int32)
        if method.outputs_relation_types:
            mapping = np.arange(NUM_TYPES, dtype=np.int32)
        else:
            train_structures, train_labels = method.train_structures(data)
            mapping = metrics.module_mapping(
                np.asarray(train_structures), train_labels, config.num_modules, NUM_TYPES
            )
        accuracy = metrics.edge_accuracy(structures, test.labels, mapping)
    if method.given_true_relations:
        structures = np.asarray(test.labels, np.int32)
    mse = [None] * horizon
    if method.predicts:
        preds = np.asarray(method.predict(test.states[:, : obs + 1], structures))
        truth = test.states[:, obs + 1 : obs + 1 + horizon]
        if preds.shape != truth.shape:
            raise ValueError(f"{method.name} predicted {preds.shape}, expected {truth.shape}")
        mse = [float(v) for v in metrics.mse_per_step(preds.astype(np.float64), truth)]
    return {
        "mse_1": mse[0],
        "mse_10": mse[9] if horizon >= 10 else None,
        "mse_20": mse[19] if horizon >= 20 else None,
        "mse_per_step": mse if method.predicts else None,
        "edge_accuracy": accuracy,
        "train_seconds": method.train_seconds,
        "eval_seconds": time.time() - start,
    }


# ---------------------------------------------------------------------------------------
# Shared pieces of the gradient-trained baselines.

# Signature: (params, states [B, T, n, 4], labels [B, E], key) -> scalar loss
LossFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
# Signature: (params, states [B, T, n, 4], labels [B, E]) -> scalar valid loss
ValidFn = Callable[[Params, jax.Array, jax.Array], jax.Array]


def fit_adam(
    name: str,
    params: Params,
    loss_fn: LossFn,
    valid_fn: ValidFn,
    data: datasets.Dataset,
    settings: BaselineSettings,
    batch_size: int,
    frames: int,
) -> Params:
    """Adam on ``loss_fn`` over shuffled batches of training tasks; keeps the best-valid epoch.

    Args:
      name: for the log.
      params: initial parameters.
      loss_fn, valid_fn: see :data:`LossFn`, :data:`ValidFn` (pure; jitted here).
      data: training tasks (``train``) and the split choosing the epoch (``valid``).
      settings: epochs, learning rate and its halving period.
      batch_size: tasks per step.
      frames: frames of each task used (the first ``frames``: the observed ones).

    Returns:
      The parameters after the epoch with the lowest mean valid loss, among every
      ``epochs // MAX_VALID_CHECKS``-th epoch and the last (the last epoch when the valid
      split is empty).
    """
    train, num_train = data.train, data.train.num_tasks
    steps_per_epoch = num_train // min(batch_size, num_train)
    optimizer = optax.adam(learning_rate_schedule(settings, steps_per_epoch))
    opt_state = optimizer.init(params)
    key = jax.random.PRNGKey(settings.seed)

    @jax.jit
    def step(params, opt_state, states, labels, step_key):
        loss, grads = jax.value_and_grad(loss_fn)(params, states, labels, step_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    valid_jit = jax.jit(valid_fn)
    valid_every = max(1, settings.epochs // MAX_VALID_CHECKS)
    valid = data.splits.get("valid")
    best, best_loss, count = params, np.inf, 0
    for epoch in range(settings.epochs):
        order = batching.task_batches(num_train, min(batch_size, num_train), settings.seed, epoch)
        losses = []
        for ids in order:
            states, labels = datasets.gather(train, ids)
            params, opt_state, loss = step(
                params, opt_state, states[:, :frames], labels, jax.random.fold_in(key, count)
            )
            count += 1
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"{name}: training loss is {train_loss} at epoch {epoch}")
        if valid is None or valid.num_tasks == 0:
            best = params
            continue
        if (epoch + 1) % valid_every and epoch + 1 < settings.epochs:
            continue
        valid_loss = batched_mean(functools.partial(valid_jit, params), valid, batch_size, frames)
        if valid_loss < best_loss:
            best, best_loss = params, valid_loss
        logging.info(
            "%s epoch %d/%d: train %.4e valid %.4e",
            name,
            epoch + 1,
            settings.epochs,
            train_loss,
            valid_loss,
        )
    return jax.device_get(best)


def learning_rate_schedule(settings: BaselineSettings, steps_per_epoch: int) -> optax.Schedule:
    """``learning_rate`` halved every ``lr_decay_epochs`` epochs (constant when 0)."""
    if settings.lr_decay_epochs == 0:
        return optax.constant_schedule(settings.learning_rate)
    return optax.exponential_decay(
        settings.learning_rate,
        transition_steps=settings.lr_decay_epochs * steps_per_epoch,
        decay_rate=0.5,
        staircase=True,
    )


def batched_mean(fn: Callable, split: datasets.Split, batch_size: int, frames: int) -> float:
    """Task-weighted mean of ``fn(states [B, frames, n, 4], labels [B, E]) -> scalar``."""
    total = 0.0
    for idx, valid in batching.padded_batches(split.num_tasks, batch_size):
        states, labels = datasets.gather(split, idx)
        total += float(fn(states[:valid, :frames], labels[:valid])) * valid
    return total / split.num_tasks


def map_batches(fn: Callable, arrays: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    """``fn`` over fixed-size batches of the leading axis (padded, so one compilation).

    Args:
      fn: ``(*batch_arrays) -> [B, ...]`` (jitted by the caller).
      arrays: each ``[N, ...]``; ``None`` entries are passed through as ``None``.

    Returns:
      numpy ``[N, ...]``.
    """
    n = next(a for a in arrays if a is not None).shape[0]
    out = []
    for idx, valid in batching.padded_batches(n, batch_size):
        batch = tuple(None if a is None else jnp.asarray(a[idx]) for a in arrays)
        out.append(np.asarray(fn(*batch))[:valid])
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("bank", "horizon"))
def _rollout_jit(bank: ModuleBank, params: Params, initial, structures, horizon: int):
    return gnn.rollout(bank, params, initial, structures, horizon)


def bank_predict(
    bank: ModuleBank, params: Params, frames: np.ndarray, structures: np.ndarray, config: Config
) -> np.ndarray:
    """Rollout of the module bank from the last given frame with fixed structures.

    Args:
      frames: ``[N, T, n, 4]`` (the rollout starts at frame ``T - 1``).
      structures: int32 ``[N, n(n-1)]``.

    Returns:
      ``[N, config.horizon, n, 4]``.
    """

    def fn(last, s):
        return _rollout_jit(bank, params, last, s, config.horizon)

    return map_batches(fn, (frames[:, -1], structures), config.test_batch_size)


def init_params(init: Callable[[jax.Array], Any], seed: int) -> Any:
    """``init(key)`` with the method's seed (one place fixing how baselines initialise)."""
    return init(jax.random.PRNGKey(seed))
