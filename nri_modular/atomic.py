"""Files written whole or not at all: the one home of atomic writes.

Every writer goes through a temporary sibling file, flushed to disk, then renamed over
the target: a reader (or a rerun after a kill) sees the old file or the new one, never
half of one, and a write that fails leaves the old file and no temporary behind. Used for
results and run metadata (JSON) and for datasets (``.npy`` arrays, their metadata); it
imports nothing heavy, so :mod:`nri_modular.data` may use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import IO, Any

import numpy as np


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Calls ``write(file)`` on a temporary sibling of ``path``, then renames it to ``path``.

    Args:
      path: the file to (re)write.
      write: writes the whole content to the open file.
      binary: open the file in binary mode (else UTF-8 text).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (UTF-8)."""
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str, obj: Any, indent: int = 2) -> None:
    """Writes ``obj`` as strict JSON to ``path`` atomically.

    Raises:
      ValueError: ``obj`` holds NaN or infinity (not JSON: every file we write parses in
        any JSON reader); nothing is written.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False)
    write_atomic(path, lambda f: f.write(text))


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """Saves ``array`` as ``.npy`` (no pickles) to ``path`` atomically."""
    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False), binary=True)
