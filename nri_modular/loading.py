"""A run's dataset, as its :class:`~nri_modular.config.Config` describes it, on every host.

A simulated system (``config.system``): process 0 generates the dataset once (cached in
``config.data_dir``); then every process loads what it needs: with ``task_shards`` a
multiple of the data-axis size, only the training states of the tasks its devices see
(:func:`nri_modular.distributed.local_task_rows`). One's own data (``config.dataset``,
:mod:`nri_modular.data.own`): read as it is (the first ``num_train`` / ``num_valid`` /
``num_test`` simulations of each split), never generated or written.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from nri_modular import distributed
from nri_modular.config import Config
from nri_modular.data import datasets, files, own


def load_data(config: Config, train_rows: np.ndarray | None = None) -> datasets.Dataset:
    """Generates (once, cached in ``config.data_dir``) and loads the dataset.

    ``train_rows``: load only these training tasks' states (one host's shard; simulated
    systems only).

    Raises:
      ValueError: a damaged dataset file (the message names the directory or file).
    """
    if config.dataset:
        return own.load(
            config.data_dir,
            config.dataset,
            num_sims={
                "train": config.num_train,
                "valid": config.num_valid,
                "test": config.num_test,
            },
            no_relation=None if config.no_relation < 0 else config.no_relation,
        )
    try:
        return datasets.ensure_dataset(
            config.data_dir,
            config.system,
            num_train=config.num_train,
            num_valid=config.num_valid,
            num_test=config.num_test,
            seed=config.data_seed,
            num_particles=config.num_particles,
            regenerate=config.regenerate_data,
            train_rows=train_rows,
        )
    except (EOFError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or config.data_dir in str(e):
            raise
        raise ValueError(
            f"cannot load the {config.system} dataset in {config.data_dir!r} "
            f"({type(e).__name__}: {e}); a file is damaged or truncated: delete it (or the "
            "directory) to regenerate, or point --data_dir elsewhere"
        ) from e


def load_data_all_hosts(config: Config, mesh) -> datasets.Dataset:
    """Process 0 generates the dataset if missing; then every process loads its shard.

    A host holds the training states of only the tasks its devices see when
    ``task_shards`` is a multiple of the data-axis size (:func:`distributed.local_task_rows`),
    else all of them; labels and the valid and test splits are loaded whole.
    """
    rows = distributed.local_task_rows(mesh, config.num_train, config.task_shards)
    if rows is not None:
        logging.info(
            "this host loads %d of the %d training tasks (task_shards=%d)",
            len(rows),
            config.num_train,
            config.task_shards,
        )
    if distributed.is_primary():
        data = load_data(config, rows)
    distributed.sync("dataset")
    if not distributed.is_primary():
        data = load_data(config, rows)
    return data


def train_fingerprint(config: Config) -> dict:
    """What identifies the run's training data (checked when a run resumes)."""
    if config.dataset:
        return own.fingerprint(config.data_dir, config.dataset)
    return files.fingerprint(config.data_dir, config.system, config.num_particles)
