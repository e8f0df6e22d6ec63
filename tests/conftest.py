"""Test configuration: strict rank promotion (STYLE.md); float64 is scoped per test.

Float64 tests use ``with jax.enable_x64(True):`` (a context manager in jax 0.10), so
x64 never leaks into other tests.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
