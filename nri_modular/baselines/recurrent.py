"""Baselines without relations: ``static``, ``lstm_single`` and ``lstm_joint`` (Table 1).

Kipf et al. (2018), section 5 and their ``lstm_baseline.py``: an input MLP layer, a
2-layer LSTM and a 2-layer output MLP predicting the change of the state (the next state is
the input plus the output). ``lstm_single`` runs one LSTM (shared weights) over each
particle's own trajectory; ``lstm_joint`` one LSTM over all particles' concatenated states.

Training (their ``prediction_steps = 10``): over the observed frames the LSTM is fed the
true state every 10 frames and its own previous prediction otherwise (its hidden state runs
through the whole sequence), MSE of every predicted frame. Test: burn-in on the true frames
``0 .. obs_frames``, then its own predictions for ``horizon`` steps.

Sizes: the LSTM and MLP width is the module bank's edge width (``edge_hidden[0]``;
the paper: "all the neural network architectures ... are exactly the same"; Kipf et al.
use 256 at paper scale, as the bank does).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nri_modular.baselines import base
from nri_modular.modules import STATE_DIM, Params


class StaticMethod(base.Method):
    """``s[t + 1] = s[t]``: the last observed frame repeated (no training)."""

    name = "static"
    trainable = False

    def predict(self, frames, structures):
        del structures
        return np.repeat(frames[:, -1:], self.config.horizon, axis=1)


class LSTMPredictor(nn.Module):
    """One step: ``(carry, x [B, F]) -> (carry, x + delta [B, F])``.

    Attributes:
      hidden: LSTM and MLP width.
      layers: stacked LSTM layers.
    """

    hidden: int
    layers: int = 2

    @nn.compact
    def __call__(self, carry, x):
        h = nn.relu(nn.Dense(self.hidden, name="fc_in")(x))
        new_carry = []
        for i in range(self.layers):
            c, h = nn.OptimizedLSTMCell(self.hidden, name=f"lstm_{i}")(carry[i], h)
            new_carry.append(c)
        out = nn.relu(nn.Dense(self.hidden, name="fc_out1")(h))
        out = nn.Dense(x.shape[-1], name="fc_out2")(out)
        return tuple(new_carry), x + out, h

    def initial_carry(self, batch: int):
        zeros = jnp.zeros((batch, self.hidden), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.layers))


def run_sequence(model: LSTMPredictor, params: Params, seq: jax.Array, feed_truth: jax.Array):
    """Runs the LSTM along a sequence, fed truth where ``feed_truth`` else its prediction.

    Args:
      seq: ``[B, T, F]`` true inputs (entries where ``feed_truth`` is False are unused).
      feed_truth: bool ``[T - 1]``: input of step ``t`` is ``seq[:, t]`` or the previous
        prediction (``feed_truth[0]`` must be True).

    Returns:
      ``(preds [B, T - 1, F], hidden [B, T - 1, hidden])``: the prediction of frame
      ``t + 1`` and the last layer's hidden state after step ``t``.
    """
    b = seq.shape[0]

    def body(carry, inputs):
        lstm_carry, prev = carry
        truth, use_truth = inputs
        x = jnp.where(use_truth, truth, prev)
        lstm_carry, pred, h = model.apply(params, lstm_carry, x)
        return (lstm_carry, pred), (pred, h)

    init = (model.initial_carry(b), seq[:, 0])
    _, (preds, hidden) = jax.lax.scan(body, init, (jnp.swapaxes(seq[:, :-1], 0, 1), feed_truth))
    return jnp.swapaxes(preds, 0, 1), jnp.swapaxes(hidden, 0, 1)


class _LSTMMethod(base.Method):
    """Shared by the two LSTM baselines; subclasses fix how particles become sequences."""

    joint: bool

    def __init__(self, config, settings):
        super().__init__(config, settings)
        self.model = LSTMPredictor(config.edge_hidden[0], settings.lstm_layers)

    def to_sequences(self, states: jax.Array) -> jax.Array:
        """``[B, T, n, 4]`` -> ``[B', T, F]`` (joint: ``[B, T, 4n]``; single: ``[B n, T, 4]``)."""
        b, t, n, d = states.shape
        if self.joint:
            return states.reshape(b, t, n * d)
        return jnp.swapaxes(states, 1, 2).reshape(b * n, t, d)

    def from_sequences(self, seq: jax.Array, n: int) -> jax.Array:
        """Inverse of :meth:`to_sequences`."""
        if self.joint:
            b, t, _ = seq.shape
            return seq.reshape(b, t, n, STATE_DIM)
        bn, t, d = seq.shape
        return jnp.swapaxes(seq.reshape(bn // n, n, t, d), 1, 2)

    def train_loss(self, params, states):
        """MSE of predictions with truth re-fed every ``p`` frames: ``[B, T, n, 4] -> ()``."""
        seq = self.to_sequences(states)
        t = seq.shape[1]
        feed = jnp.arange(t - 1) % self.config.p == 0
        preds, _ = run_sequence(self.model, params, seq, feed)
        return jnp.mean(jnp.square(preds - seq[:, 1:]))

    def _train(self, data):
        n = self.config.num_particles
        width = n * STATE_DIM if self.joint else STATE_DIM
        return self._fit_adam(
            lambda k: self.model.init(
                k, self.model.initial_carry(1), jnp.zeros((1, width), jnp.float32)
            ),
            lambda p, s, y, k: self.train_loss(p, s),
            lambda p, s, y: self.train_loss(p, s),
            data,
        )

    @functools.partial(jax.jit, static_argnums=0)
    def _predict_batch(self, params, frames):
        b, given, n, d = frames.shape
        horizon = self.config.horizon
        seq = jnp.concatenate([frames, jnp.zeros((b, horizon, n, d), frames.dtype)], axis=1)
        seq = self.to_sequences(seq)
        feed = jnp.arange(given + horizon - 1) < given  # burn-in on every given frame
        preds, _ = run_sequence(self.model, params, seq, feed)
        return self.from_sequences(preds, n)[:, given - 1 :]

    def predict(self, frames, structures):
        del structures
        return base.map_batches(
            lambda f: self._predict_batch(self.params, f), (frames,), self.config.test_batch_size
        )

    @functools.partial(jax.jit, static_argnums=0)
    def hidden_states(self, params, observed):
        """Last-layer hidden states along the observed frames (truth fed at every step).

        Args:
          observed: ``[B, T, n, 4]``.

        Returns:
          ``[B, T - 1, n, hidden]`` (single) or ``[B, T - 1, hidden]`` (joint).
        """
        b, t, n, _ = observed.shape
        _, hidden = run_sequence(
            self.model, params, self.to_sequences(observed), jnp.ones(t - 1, bool)
        )
        if self.joint:
            return hidden
        return jnp.swapaxes(hidden.reshape(b, n, t - 1, -1), 1, 2)


class LSTMSingleMethod(_LSTMMethod):
    """One LSTM (shared weights) over each particle's own trajectory; no relations."""

    name = "lstm_single"
    joint = False


class LSTMJointMethod(_LSTMMethod):
    """One LSTM over all particles' concatenated states (NRI's LSTM(joint))."""

    name = "lstm_joint"
    joint = True
