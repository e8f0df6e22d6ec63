"""What a run keeps on disk, and the one way to save and load a trained model.

* A training run's folder (``--workdir``): :func:`prepare_workdir` creates it and writes
  (or, when resuming, checks) ``config.json``; :func:`checkpoint_manager` keeps Orbax
  checkpoints of the whole ``TrainState`` in ``<workdir>/checkpoints`` and
  :func:`restore_checkpoint` reads one back or fails naming it (:class:`CheckpointError`).
  :class:`StopRequest` turns SIGTERM (preemption) into a checkpoint at the next step
  boundary and :class:`Preempted` (exit code 0).
* A trained model (parameters plus what they were trained with): :func:`save_model` and
  :func:`load_model`, an Orbax pytree in ``<dir>/params`` beside ``<dir>/model.json``.
* :func:`write_json_atomic`: every JSON file written whole or not at all (its home is
  :mod:`nri_modular.atomic`, with the dataset writers).

Nothing here deletes a checkpoint or a model (Orbax's keep-the-last-N rotation aside).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from nri_modular import distributed
from nri_modular.atomic import write_json_atomic
from nri_modular.config import Config

# Fields that change the shapes in a checkpoint (named first when a resume is refused).
STATE_FIELDS = (
    "system",
    "dataset",
    "state_dim",
    "num_particles",
    "num_train",
    "num_modules",
    "edge_hidden",
    "node_hidden",
    "proposal",
    "proposal_hidden",
    "task_shards",  # the data order (not a shape): another value would not resume exactly
)

# What a resumed run may change: where the data lives (the training data's fingerprint is
# checked), how it logs, checkpoints and lays out its computation, and the meta-test (the
# search after training; a finished run is re-scored with experiments/evaluate.py).
# Everything else (model, data, data order, objective, optimiser, annealing, priors) shapes
# how the run was trained: another value is refused, so a run's record never misstates it.
RESUMABLE_FIELDS = (
    "data_dir",
    "regenerate_data",
    "num_valid",
    "num_test",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "block_rows",
    "edge_compute",
    "model_axis_size",
    "coordinator_address",
    "num_processes",
    "process_id",
)
META_TEST_FIELDS = (
    "test_proposal",
    "test_uniform_mix",
    "test_sa_steps",
    "test_t_start",
    "test_t_end",
    "test_batch_size",
    "obs_frames",
    "horizon",
    "no_relation",
)
# With a constant step size (final_learning_rate = 0) a run may be extended (num_epochs)
# and its step size changed from the checkpoint on; with a decaying one these fix the
# schedule (a cosine over num_epochs from learning_rate) and are refused. Every change a
# resume makes is recorded in run.json's "segments".
SCHEDULE_FIELDS = ("learning_rate", "num_epochs")


def training_fields() -> tuple[str, ...]:
    """The fields a resumed run may not change: every field of :class:`Config` but the
    resumable, meta-test and (with a constant step size) schedule ones; a field added to
    :class:`Config` is refused until it is classified here."""
    allowed = set(RESUMABLE_FIELDS + META_TEST_FIELDS + SCHEDULE_FIELDS)
    names = [f.name for f in dataclasses.fields(Config)]
    return tuple(sorted((n for n in names if n not in allowed), key=_state_first))


def _state_first(name: str) -> tuple[int, str]:
    return (0 if name in STATE_FIELDS else 1, name)


RUN_META = "run.json"

MODEL_META = "model.json"
MODEL_PARAMS = "params"


# ---------------------------------------------------------------------------------------
# The run's folder.


def config_json(config: Config) -> dict:
    """The config as a JSON object (tuples as lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def _check_workdir_config(workdir: str, config: Config, resuming: bool) -> dict:
    """Writes ``config.json``, or checks that a resumed run changes no training setting.

    Returns:
      ``{field: [checkpoint's value, now]}`` of the settings the resume changes (empty for
      a new run).
    """
    path = os.path.join(workdir, "config.json")
    current = config_json(config)
    diff = {}
    if resuming and os.path.exists(path):
        saved = read_config_json(workdir)
        defaults = config_json(Config())  # fields added since the run was started
        diff = {
            k: [saved.get(k, defaults[k]), current[k]]
            for k in current
            if saved.get(k, defaults[k]) != current[k]
        }
        refused = set(training_fields())
        if saved.get("final_learning_rate", 0) or config.final_learning_rate:
            refused |= set(SCHEDULE_FIELDS)
        refused_diff = {k: v for k, v in diff.items() if k in refused}
        refused_diff = dict(sorted(refused_diff.items(), key=lambda kv: _state_first(kv[0])))
        network = [Config(**_known(saved)).uses_proposal_network, config.uses_proposal_network]
        if network[0] != network[1]:  # the checkpoint holds a proposal network or not
            refused_diff["proposal network (blocked_gibbs in proposal or test_proposal)"] = network
        if refused_diff:
            raise ValueError(
                f"workdir {workdir!r} holds a run with different "
                + ", ".join(
                    f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in refused_diff.items()
                )
                + "; a resumed run keeps the settings it was trained with: use the original "
                "flags, or another --workdir"
            )
        _check_not_beyond(workdir, config)
    write_json_atomic(path, current)
    return diff


def read_config_json(workdir: str) -> dict:
    """``<workdir>/config.json`` as a dict.

    Raises:
      ValueError: unreadable, or not a JSON object (the message names the file).
    """
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is unreadable ({type(e).__name__}: {e}); it records the run's shapes. "
            "Restore it, or use another --workdir"
        ) from e
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a JSON object; use another --workdir")
    return saved


def _check_not_beyond(workdir: str, config: Config) -> None:
    """Raises unless the workdir's checkpoints end at or before the run's last step (a run
    is never shortened: that would relabel a later state as an earlier step)."""
    total_steps = (config.num_train // config.batch_size) * config.num_epochs
    steps = checkpoint_steps(workdir)
    if steps and steps[-1] > total_steps:
        raise ValueError(
            f"workdir {workdir!r} holds a checkpoint at step {steps[-1]}, beyond this run's "
            f"{total_steps} steps (num_epochs={config.num_epochs}): a run cannot be shortened; "
            f"score an earlier checkpoint with experiments/evaluate.py --workdir={workdir} "
            f"--step=K (it has {steps}), or use another --workdir"
        )


def _known(saved: dict) -> dict:
    """The fields of a saved config that this version's :class:`Config` knows (lists as
    tuples)."""
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names}


def config_from_json(saved: dict) -> Config:
    """The :class:`Config` of a ``config_json`` dict (fields added since: defaults)."""
    return Config(**_known(saved))


# What a run keeps about itself beside its checkpoints (<workdir>/run.json), written
# atomically with the config: enough to rebuild and score the model with no training data.


def write_run_meta(
    workdir: str,
    config: Config,
    normalization: dict,
    train_data: dict,
    module_to_relation: dict | None = None,
    segments: list | None = None,
    relations: dict | None | str = "unset",
) -> dict:
    """Writes ``<workdir>/run.json`` (atomically) and returns it.

    Args:
      config: the run's config.
      normalization: ``Normalization.to_dict()`` of the training split (never recomputed
        when the run is evaluated).
      train_data: ``data.files.fingerprint`` of the training split.
      module_to_relation: ``{str(step): [K] map}`` chosen on the training tasks' structures
        of each checkpoint, plus ``"train_edge_accuracy"`` per step.
      segments: ``[{"start_step": k, "changed": {field: [before, after]}}]``: where the
        run started and each resume, with the settings it changed (see
        :data:`RESUMABLE_FIELDS`): ``config`` is the latest segment's.
      relations: ``{"num_types": R, "none": code or None}`` of the training labels, or
        None (unlabelled data); left out (``"unset"``) by runs made before it, which are
        read as their simulated system's.
    """
    meta = {
        "config": config_json(config),
        "normalization": dict(normalization),
        "train_data": train_data,
        "module_to_relation": dict(module_to_relation or {}),
        "segments": list(segments or []),
    }
    if relations != "unset":
        meta["relations"] = relations
    write_json_atomic(os.path.join(workdir, RUN_META), meta)
    return meta


def read_run_meta(workdir: str) -> dict | None:
    """``<workdir>/run.json`` (None when the run predates it).

    Raises:
      ValueError: the file exists but is unreadable (the message names it).
    """
    path = os.path.join(workdir, RUN_META)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from e
    missing = {"config", "normalization", "train_data", "module_to_relation"} - set(meta)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    return meta


def check_train_data(workdir: str, saved: dict, current: dict) -> None:
    """Raises unless a resumed run trains on the data it started with (same fingerprint).

    Raises:
      ValueError: naming the old and new file shapes and hashes.
    """
    if saved == current:
        return
    raise ValueError(
        f"workdir {workdir!r} was trained on other data: training files "
        f"{saved.get('files')} (sample hash {str(saved.get('sha256'))[:12]}), now "
        f"{current.get('files')} (sample hash {str(current.get('sha256'))[:12]}); a resumed "
        "run must see the same training data (moving the folder is fine): point --data_dir "
        "at it, or use another --workdir"
    )


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in ``<workdir>/checkpoints`` (step folders;
    Orbax writes a checkpoint under a temporary name and renames it when complete)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def has_checkpoint(workdir: str) -> bool:
    """Whether ``<workdir>/checkpoints`` holds a finished checkpoint."""
    return bool(checkpoint_steps(workdir))


def _check_workdir_path(workdir: str) -> None:
    if not workdir:
        raise ValueError("workdir must be given (--workdir)")
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"parent directory of workdir {workdir!r} does not exist: {parent}")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"workdir {workdir!r} exists and is not a directory")


def prepare_workdir(workdir: str, config: Config) -> dict:
    """Creates ``workdir`` (its parent must exist) and writes or checks its ``config.json``.

    A workdir with no checkpoint is a new run whatever it holds (say, the ``config.json``
    of a run that failed before its first checkpoint): its config is written afresh.

    Returns:
      ``{field: [checkpoint's value, now]}`` of what a resume changes (see
      :data:`RESUMABLE_FIELDS`); empty for a new run.

    Raises:
      ValueError: no workdir, or it holds a checkpoint trained with other settings
        (:func:`training_fields`).
      FileNotFoundError, NotADirectoryError: a missing parent, or a file in the way.
    """
    _check_workdir_path(workdir)
    diff = {}
    if distributed.is_primary():
        os.makedirs(workdir, exist_ok=True)
        diff = _check_workdir_config(workdir, config, resuming=has_checkpoint(workdir))
    distributed.sync("workdir")
    return diff


class WorkdirLock:
    """An exclusive lock on a run's folder for as long as a process uses it.

    ``flock`` on ``<workdir>/.lock``: a second run on the same folder fails at once naming
    the holder (its pid and host, written in the file), and the lock goes with the process
    however it ends (SIGKILL included), so no stale lock is ever left to clear. Re-entrant
    within a process (training inside ``train_and_evaluate``). On process 0 only (one
    writer per run); a no-op elsewhere.

    Raises (on entry):
      RuntimeError: another process holds the folder.
      FileNotFoundError, NotADirectoryError: as :func:`prepare_workdir`.
    """

    _held: dict[str, list] = {}

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), ".lock")

    def __enter__(self):
        if not distributed.is_primary():
            return self
        held = WorkdirLock._held.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        _check_workdir_path(os.path.dirname(self.path))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RuntimeError(
                f"workdir {os.path.dirname(self.path)!r} is in use by {holder}: two runs on one "
                "folder would overwrite each other's checkpoints and metrics; wait for it to "
                "end, or use another --workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        WorkdirLock._held[self.path] = [f, 1]
        return self

    def __exit__(self, *exc):
        held = WorkdirLock._held.get(self.path)
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del WorkdirLock._held[self.path]
                held[0].close()  # releases the flock
        return False


# ---------------------------------------------------------------------------------------
# Training checkpoints and preemption.


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot be used (damaged, or written by another setup)."""


class Preempted(SystemExit):
    """Raised after SIGTERM once the state is checkpointed; exits the process with code 0."""

    def __init__(self, step: int):
        super().__init__(0)
        self.step = step


def checkpoint_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """Orbax manager of ``<workdir>/checkpoints`` keeping the last ``max_to_keep``.

    Saves are asynchronous (the device->host copy blocks, the write does not) and atomic
    (written to a temporary directory, renamed when complete: a killed save leaves no
    half-checkpoint that could be restored). Multi-host aware: every process writes its
    shards, process 0 the metadata.

    Raises:
      CheckpointError: the directory cannot be opened (nothing is deleted).
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    try:
        return ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the fix
        raise CheckpointError(
            f"cannot open the checkpoint directory {directory}: {type(e).__name__}: {e}. "
            "Nothing was deleted; repair or move it aside, or use another --workdir"
        ) from e


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state, force: bool = False):
    """Starts saving ``state`` as checkpoint ``step`` (asynchronous; see the manager)."""
    manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, target):
    """Restores checkpoint ``step`` into ``target`` (shapes, dtypes, shardings).

    Never falls back silently and never deletes anything: a damaged latest checkpoint is
    an error naming its path, the intact earlier steps and how to resume from them
    (move the damaged directory aside).

    Raises:
      CheckpointError: unreadable checkpoint or shapes that differ from ``target``.
    """
    path = os.path.join(str(manager.directory), str(step))
    earlier = [s for s in manager.all_steps() if s < step]
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the fix
        detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if "not compatible with the stored shape" in str(e):
            raise CheckpointError(
                f"checkpoint {path} holds arrays of other shapes than this run ({detail}); "
                "it was written with other sizes (num_particles, num_train, num_modules, "
                "hidden sizes, proposal): use another --workdir or the original flags"
            ) from e
        fix = (
            f"to resume from step {earlier[-1]}, move it aside: mv {path} {path}.damaged"
            if earlier
            else "no earlier checkpoint exists: use another --workdir to start afresh"
        )
        raise CheckpointError(
            f"checkpoint {path} (step {step}) is damaged or truncated and cannot be restored "
            f"({detail}); intact earlier steps: {earlier}; {fix}. Nothing was deleted."
        ) from e


class StopRequest:
    """SIGTERM (preemption) sets ``requested``; the loop checkpoints and stops.

    A context manager: installs the handler on entry (main thread only), restores the
    previous one on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def _handler(self, signum, frame):
        del frame
        logging.warning("signal %d: checkpointing at the next step boundary, then exiting", signum)
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
        return False


# ---------------------------------------------------------------------------------------
# Trained models.


def save_model(directory: str, params, meta: dict, overwrite: bool = False) -> None:
    """Saves a trained model: the ``params`` pytree (Orbax) and ``meta`` (JSON) beside it.

    The folder appears whole or not at all: everything is written to a temporary sibling
    folder, then renamed to ``directory`` (Orbax's own atomic commit covers only the
    ``params`` item, not the ``model.json`` beside it: the rename makes the pair appear
    together, so a load never finds params without the settings they were trained with).
    An existing ``directory`` is an error unless ``overwrite`` (then it is replaced by the
    complete new one, never left half-written).
    Single-process: for models a script trains and caches, not for sharded train states
    (those are checkpoints, :func:`checkpoint_manager`).

    Args:
      directory: the model's folder (its parent is created).
      params: a pytree of arrays (numpy or JAX); ``None`` leaves are kept.
      meta: JSON-serialisable settings the model was trained with (what a later load
        compares to know the model fits).

    Raises:
      FileExistsError: ``directory`` exists and ``overwrite`` is false.
      TypeError: ``meta`` is not a JSON-serialisable dict.
    """
    directory = os.path.abspath(directory)
    if not isinstance(meta, dict):
        raise TypeError(f"model meta must be a dict, got {type(meta).__name__}")
    try:
        meta_text = json.dumps(meta, indent=2)
    except (TypeError, ValueError) as e:
        raise TypeError(f"model meta for {directory} is not JSON-serialisable: {e}") from e
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} exists; a saved model is never overwritten silently: load it, "
            "delete it, or save elsewhere (or pass overwrite=True)"
        )
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = f"{directory}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, MODEL_PARAMS), params)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, MODEL_META), "w", encoding="utf-8") as f:
        f.write(meta_text)
    if os.path.exists(directory):  # overwrite: the old folder goes only once the new is whole
        old = f"{directory}.old{os.getpid()}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:
        os.rename(tmp, directory)


def load_model(directory: str, target=None) -> tuple[Any, dict]:
    """Loads a model written by :func:`save_model`.

    Args:
      directory: the model's folder.
      target: optional pytree of arrays or ``jax.ShapeDtypeStruct`` giving the exact
        structure, shapes and dtypes to restore into (an error if they differ); without
        it the saved structure is restored (dicts and lists; JAX arrays).

    Returns:
      ``(params, meta)``.

    Raises:
      FileNotFoundError: no such folder.
      ValueError: the folder is not a saved model (no or unreadable ``model.json``, no
        parameters), or its parameters cannot be restored (into ``target``).
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no saved model at {directory} (not a directory)")
    meta_path = os.path.join(directory, MODEL_META)
    params_path = os.path.join(directory, MODEL_PARAMS)
    if not os.path.isfile(meta_path) or not os.path.isdir(params_path):
        raise ValueError(
            f"{directory} is not a saved model: it needs {MODEL_META} and {MODEL_PARAMS}/ "
            "(written by nri_modular.checkpoints.save_model)"
        )
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{meta_path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} does not hold a JSON object")
    checkpointer = ocp.StandardCheckpointer()
    try:
        if target is None:
            params = checkpointer.restore(params_path)
        else:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            params = checkpointer.restore(params_path, abstract)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ValueError(
            f"cannot restore the parameters in {params_path} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); the folder is damaged or holds "
            "another model's shapes"
        ) from e
    return params, meta
