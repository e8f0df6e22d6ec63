"""Per-device cost of a compiled XLA program, read from its HLO text and analyses.

Used by ``benchmarks/step_cost.py``. ``collective_bytes`` parses the optimised HLO text of
``jitted.lower(...).compile().as_text()`` (the text format is XLA's, not a stable API: a
JAX upgrade may need this parser updated; ``tests/test_hlo.py`` pins it on a sample and on
a real compiled step).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
    """Counts the collectives of an optimised HLO module and the bytes they produce.

    Args:
      hlo_text: ``compiled.as_text()`` (per-device shapes after partitioning).

    Returns:
      ``{op: {"count": c, "bytes": b}}`` with ``b`` the summed result size per device
      (for ``-start``/``-done`` async pairs only the ``-start`` is counted).
    """
    out = {op: {"count": 0, "bytes": 0} for op in _COLLECTIVES}
    for line in hlo_text.splitlines():
        if "=" not in line:
            continue
        lhs, rhs = line.split("=", 1)
        for op in _COLLECTIVES:
            m = re.search(rf"\s{op}(-start)?\(", rhs)
            if m is None:
                continue
            result = rhs[: m.start()]
            if op in ("all-reduce", "all-gather", "collective-permute") and m.group(1):
                # async start returns (operand, result) tuples; count the result only.
                shapes = _SHAPE.findall(result)
                shapes = shapes[len(shapes) // 2 :] if len(shapes) > 1 else shapes
            else:
                shapes = _SHAPE.findall(result)
            size = sum(
                _DTYPE_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                for dt, dims in shapes
            )
            out[op]["count"] += 1
            out[op]["bytes"] += size
            break
    return {k: v for k, v in out.items() if v["count"]}


def compiled_stats(compiled: Any) -> dict[str, Any]:
    """Per-device memory, flops and communication of a ``jitted.lower(...).compile()``.

    Returns:
      dict with ``argument_bytes``, ``output_bytes``, ``temp_bytes``,
      ``generated_code_bytes``, ``alias_bytes`` (from ``memory_analysis()``), ``flops``
      and ``bytes_accessed`` (from ``cost_analysis()``), and ``collectives`` (see
      :func:`collective_bytes`).
    """
    stats: dict[str, Any] = {}
    mem = compiled.memory_analysis()
    for name in ("argument", "output", "temp", "generated_code", "alias"):
        stats[f"{name}_bytes"] = int(getattr(mem, f"{name}_size_in_bytes", 0) or 0)
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    stats["flops"] = float(cost.get("flops", 0.0))
    stats["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
    stats["collectives"] = collective_bytes(compiled.as_text())
    return stats
