"""Metric writers: one record of scalars per logged training step.

``<workdir>/metrics.jsonl`` always (one JSON object per line, ``step`` included; the file
tables and plots read), and TensorBoard event files in ``<workdir>/tensorboard`` when the
run asks for them (``--tensorboard``; needs the optional extra: ``pip install
'.[tensorboard]'``, which brings ``tensorboardX``: it writes event files with protobuf
alone, no TensorFlow).

A resumed run first drops the lines logged after the checkpoint it resumes from (those
steps are redone), so the file ends up as an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def truncate_metrics(path: str, last_step: int) -> None:
    """Drops the lines of ``path`` logged after ``last_step`` (no file: nothing to do)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``<workdir>/metrics.jsonl``, in step order.

    Raises:
      FileNotFoundError: the run has no metrics file (names it).
      ValueError: a line is not a JSON record with a ``step``.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no {METRICS_FILE}: not a training run's folder?")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not JSON ({e.msg})") from e
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}, line {number}: a record needs a 'step'")
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def training_seconds(records: list[dict], batch_size: int) -> list[float]:
    """Training wall time at each record, from its window's throughput.

    Each record's ``tasks_per_second`` covers the steps since the previous record (every
    second of the loop, checkpoints included), so the window lasted
    ``(step - previous step) * batch_size / tasks_per_second`` seconds; a resumed run's
    time counts from its restart, not across the gap.

    Args:
      records: :func:`read_metrics` output.

    Returns:
      ``[len(records)]`` cumulative seconds.
    """
    total, previous, out = 0.0, 0, []
    for record in records:
        tps = record.get("tasks_per_second")
        if tps is None or not tps > 0:
            raise ValueError(f"record at step {record['step']} has no positive tasks_per_second")
        total += (record["step"] - previous) * batch_size / tps
        previous = record["step"]
        out.append(total)
    return out


def _finite_or_none(value):
    """``value``, or None for a NaN / infinite float (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tensorboard_writer(logdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "--tensorboard needs the optional extra [tensorboard] (tensorboardX): "
            "pip install -e '.[tensorboard]'"
        ) from e
    return SummaryWriter(logdir)


class MetricWriter:
    """Appends scalar records to ``<workdir>/metrics.jsonl`` (and TensorBoard when asked).

    A context manager (closes its files on exit).

    Args:
      workdir: the run's folder (exists).
      resume_step: the checkpoint step a resumed run starts from (later lines are
        dropped), or ``None`` for a fresh run.
      tensorboard: also write TensorBoard event files to ``<workdir>/tensorboard``.

    Raises:
      ImportError: ``tensorboard`` without the ``[tensorboard]`` extra installed.
    """

    def __init__(self, workdir: str, resume_step: int | None = None, tensorboard: bool = False):
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tensorboard = (
            _tensorboard_writer(os.path.join(workdir, TENSORBOARD_DIR)) if tensorboard else None
        )
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Writes one record (a dict of floats holding ``step``) and flushes it.

        A NaN or infinite value (say, the acceptance rate of a step without annealing) is
        written as ``null``: every line is strict JSON.
        """
        if "step" not in record:
            raise ValueError(f"a metric record needs its 'step', got keys {sorted(record)}")
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = int(record["step"])
            for name, value in record.items():
                if name != "step" and value is not None:
                    self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
