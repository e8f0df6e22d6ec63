"""Normalisation of states to [-1, 1] with the training split's ranges, per channel."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel min/max of the training states; maps each channel's range to [-1, 1].

    Kipf's normalisation is one min/max for every position channel and one for every
    velocity channel (:meth:`positions_velocities`, :meth:`from_arrays`); features of
    one's own data get a min/max each (:meth:`from_channels`). Works on numpy arrays
    (returns numpy) and on JAX arrays / tracers (returns JAX).

    Attributes:
      minimum, maximum: ``[state_dim]`` floats, ``maximum > minimum`` per channel.
    """

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self):
        lo, hi = (tuple(float(v) for v in np.ravel(x)) for x in (self.minimum, self.maximum))
        object.__setattr__(self, "minimum", lo)
        object.__setattr__(self, "maximum", hi)
        if not lo or len(lo) != len(hi):
            raise ValueError(f"minimum {lo} and maximum {hi} must be non-empty, of one length")
        for c, (a, b) in enumerate(zip(lo, hi, strict=True)):
            if not (np.isfinite(a) and np.isfinite(b) and b > a):
                raise ValueError(
                    f"channel {c}'s range must be finite with max > min, got [{a}, {b}]"
                )

    @classmethod
    def positions_velocities(
        cls, loc_min: float, loc_max: float, vel_min: float, vel_max: float, dim: int = 2
    ) -> Normalization:
        """Kipf's: one range for the ``dim`` position channels, one for the velocities."""
        return cls((loc_min,) * dim + (vel_min,) * dim, (loc_max,) * dim + (vel_max,) * dim)

    @classmethod
    def from_arrays(cls, loc: np.ndarray, vel: np.ndarray) -> Normalization:
        """Statistics of (training) positions and velocities in Kipf's layout
        ``[..., D, n]`` (D position channels)."""
        return cls.positions_velocities(
            float(loc.min()), float(loc.max()), float(vel.min()), float(vel.max()), loc.shape[-2]
        )

    @classmethod
    def from_channels(cls, states: np.ndarray) -> Normalization:
        """A range per channel of (training) states ``[..., S]``; a constant channel gets
        the range ``[c - 1, c + 1]`` (it normalises to 0)."""
        flat = np.asarray(states, np.float64).reshape(-1, states.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        constant = hi == lo
        return cls(np.where(constant, lo - 1, lo), np.where(constant, hi + 1, hi))

    @property
    def state_dim(self) -> int:
        return len(self.minimum)

    def to_dict(self) -> dict[str, list[float]]:
        return {"minimum": list(self.minimum), "maximum": list(self.maximum)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Normalization:
        """Reads :meth:`to_dict`, and the ``loc_min, loc_max, vel_min, vel_max`` of runs
        saved before per-channel ranges (2-D positions and velocities)."""
        if "minimum" in d:
            return cls(tuple(d["minimum"]), tuple(d["maximum"]))
        return cls.positions_velocities(*(float(d[k]) for k in _LEGACY_KEYS))

    def _lo_span(self, states):
        xp = np if isinstance(states, np.ndarray) else jnp
        lo, hi = np.array(self.minimum), np.array(self.maximum)
        shape = (1,) * (states.ndim - 1) + (len(lo),)
        return xp.asarray(lo.reshape(shape), states.dtype), xp.asarray(
            (hi - lo).reshape(shape), states.dtype
        )

    def normalise(self, states):
        """Physical ``[..., S]`` states -> [-1, 1] on the training range."""
        self._check_last_axis(states)
        lo, span = self._lo_span(states)
        return (states - lo) * 2 / span - 1

    def denormalise(self, states):
        """Inverse of :meth:`normalise`: ``[..., S]`` normalised states -> physical units."""
        self._check_last_axis(states)
        lo, span = self._lo_span(states)
        return (states + 1) * span / 2 + lo

    def _check_last_axis(self, states) -> None:
        if states.ndim < 1 or states.shape[-1] != self.state_dim:
            raise ValueError(
                f"states must be [..., {self.state_dim}] (the channels this normalisation "
                f"was made for), got shape {states.shape}"
            )


_LEGACY_KEYS = ("loc_min", "loc_max", "vel_min", "vel_max")

# Kuramoto's features are scaled to [-1, 1] when generated: their normalisation maps
# [-1, 1] to itself (exactly, in float64).
IDENTITY = Normalization.positions_velocities(-1.0, 1.0, -1.0, 1.0)
