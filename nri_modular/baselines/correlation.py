"""Correlation baselines of Table 2: ``corr_data`` and ``corr_lstm`` (Kipf et al. 2018).

The relation of a directed edge ``j -> i`` is read from how particle ``j``'s and particle
``i``'s sequences co-vary over the observed frames: the Pearson correlation over time of
each feature of the two sequences,

* ``corr_data``: the raw states (x, y, vx, vy): 4 correlations;
* ``corr_lstm``: the last-layer hidden states of the trained ``lstm_single`` baseline
  (truth fed at every observed frame): one correlation per hidden unit;

and a tiny classifier, logistic regression on those correlations and their absolute
values (standardised with training statistics), fitted on the training tasks' edges.
Kipf et al. say only "a classifier built on the correlation"; this is our reading. Its L2
strength is chosen by valid-split accuracy. The outputs are relation types (identity map).
Correlation is symmetric, so both directions of a pair get the same relation, as the
systems' relations are.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_modular import graph as graph_lib
from nri_modular.baselines import base
from nri_modular.baselines.recurrent import LSTMSingleMethod
from nri_modular.data import batching, datasets

L2_GRID = (1e-4, 1e-2, 1.0)
CLASSIFIER_STEPS = 300


def pairwise_correlation(seq: np.ndarray) -> np.ndarray:
    """Pearson correlation over time of every feature for every directed edge.

    Args:
      seq: ``[B, T, n, F]`` per-particle sequences.

    Returns:
      ``[B, n(n-1), F]`` correlation of feature ``f`` of sender ``j`` and receiver ``i`` of
      each edge (receiver-major order of :mod:`nri_modular.graph`); 0 where a sequence is
      constant.
    """
    seq = np.asarray(seq, np.float64)
    centred = seq - seq.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.square(centred).sum(axis=1))  # [B, n, F]
    receivers, senders = graph_lib.edge_index(seq.shape[2])
    cov = (centred[:, :, senders] * centred[:, :, receivers]).sum(axis=1)  # [B, E, F]
    denom = norm[:, senders] * norm[:, receivers]
    return np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)


def edge_features(corr: np.ndarray) -> np.ndarray:
    """``[B, E, F]`` correlations -> ``[B, E, 2F]`` (the correlations and their magnitude)."""
    return np.concatenate([corr, np.abs(corr)], axis=-1).astype(np.float32)


def fit_logistic(x, y, l2: float, num_classes: int, steps: int = CLASSIFIER_STEPS, seed: int = 0):
    """Multinomial logistic regression by full-batch Adam.

    Args:
      x: ``[N, F]`` standardised features; y: int ``[N]``.

    Returns:
      ``{"w": [F, C], "b": [C]}``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    params = {
        "w": 0.01 * jax.random.normal(jax.random.PRNGKey(seed), (x.shape[1], num_classes)),
        "b": jnp.zeros(num_classes),
    }
    opt = optax.adam(0.05)

    def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"][None], y).mean()
        return ce + l2 * jnp.square(p["w"]).sum()

    @jax.jit
    def run(params):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return params

    return jax.device_get(run(params))


def classify(params: dict, features: np.ndarray) -> np.ndarray:
    """``[B, E, F]`` raw features -> int32 ``[B, E]`` relation types."""
    z = (features - params["mean"]) / params["std"]
    return np.argmax(z @ params["w"] + params["b"], axis=-1).astype(np.int32)


def fit_classifier(train_x, train_y, valid_x, valid_y, seed: int) -> dict:
    """Standardises, fits one classifier per L2 strength, keeps the best on valid.

    Args:
      train_x: ``[B, E, F]``; train_y: ``[B, E]``; valid_*: the same (may be empty: then
        the weakest L2 is kept).
    """
    flat = train_x.reshape(-1, train_x.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    best, best_acc = None, -1.0
    for l2 in L2_GRID:
        z = (flat - mean) / std
        params = fit_logistic(z, train_y.reshape(-1), l2, base.NUM_TYPES, seed=seed)
        params = {**params, "mean": mean, "std": std}
        if valid_y.size == 0:
            return params
        acc = float((classify(params, valid_x) == valid_y).mean())
        if acc > best_acc:
            best, best_acc = params, acc
    return best


class CorrDataMethod(base.Method):
    """Correlation of the raw trajectories -> relation type (Kipf et al.'s "Corr. (path)")."""

    name = "corr_data"
    infers_structure = True
    outputs_relation_types = True
    predicts = False

    def features(self, observed: np.ndarray) -> np.ndarray:
        """``[B, T, n, 4]`` -> ``[B, E, 8]``."""
        return edge_features(pairwise_correlation(observed))

    def _split_features(self, split: datasets.Split):
        obs = self.config.obs_frames
        feats = [
            self.features(datasets.gather(split, idx[:valid])[0][:, :obs])
            for idx, valid in batching.padded_batches(split.num_tasks, 500)
        ]
        return np.concatenate(feats), split.labels

    def _train(self, data):
        train_x, train_y = self._split_features(data.train)
        valid = data.splits.get("valid")
        if valid is not None and valid.num_tasks:
            valid_x, valid_y = self._split_features(valid)
        else:
            valid_x, valid_y = train_x[:0], train_y[:0]
        return fit_classifier(train_x, train_y, valid_x, valid_y, self.settings.seed)

    def infer(self, observed):
        out = [
            classify(self.params, self.features(observed[idx[:valid]]))
            for idx, valid in batching.padded_batches(len(observed), 500)
        ]
        return np.concatenate(out)

    def predict(self, frames, structures):
        raise NotImplementedError("correlation baselines predict no states (Table 2 only)")


class CorrLSTMMethod(CorrDataMethod):
    """Correlation of ``lstm_single``'s hidden states -> relation type ("Corr. (LSTM)").

    ``fit`` first fits (or loads) ``lstm_single`` in the sibling folder ``lstm_single``
    of its own ``workdir``; its ``train_seconds`` include the LSTM's.
    """

    name = "corr_lstm"

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.lstm = LSTMSingleMethod(config, settings)

    def fit(self, data, workdir):
        lstm_dir = os.path.join(os.path.dirname(os.path.abspath(workdir)), "lstm_single")
        self.lstm.fit(data, lstm_dir)
        super().fit(data, workdir)
        self.train_seconds += self.lstm.train_seconds

    def features(self, observed):
        hidden = base.map_batches(
            lambda o: self.lstm.hidden_states(self.lstm.params, o),
            (np.asarray(observed),),
            self.config.test_batch_size,
        )
        return edge_features(pairwise_correlation(hidden))
