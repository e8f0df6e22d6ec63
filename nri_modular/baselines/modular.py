"""``modular``: ours (BounceGrad meta-training, annealed structures at meta-test), as a Method.

Training is :func:`nri_modular.train.train` with the table's :class:`Config` in the
method's folder (a finished run is resumed at its last step, i.e. loaded). Evaluation goes
through the same :func:`base.evaluate_method` as every baseline, doing exactly what
``evaluate.meta_test`` does: the structure of each test task is annealed on its observed
frames with the run's meta-test search settings (``--test_*`` flags) and the module ->
relation map is chosen on the training tasks' final BounceGrad structures.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from nri_modular import checkpoints, distributed, evaluate, train
from nri_modular.baselines import base

SECONDS_FILE = "train_seconds.json"


class ModularMethod(base.Method):
    """Modular meta-learning (the paper's method)."""

    name = "modular"
    infers_structure = True

    def fit(self, data, workdir):
        del data  # train.train loads the same dataset from the same Config
        start = time.time()
        self.run = train.train(self.config, workdir)
        path = os.path.join(workdir, SECONDS_FILE)
        if os.path.exists(path):  # a finished run: its training time, not this reload's
            with open(path, encoding="utf-8") as f:
                self.train_seconds = float(json.load(f)["train_seconds"])
        else:
            self.train_seconds = time.time() - start
            checkpoints.write_json_atomic(path, {"train_seconds": self.train_seconds})
        self.params = self.run.state.params

    def _uses_network(self) -> bool:
        return self.config.test_proposal == "blocked_gibbs"

    def infer(self, observed):
        structures, _ = evaluate.search_structures(
            self.run.setup.bank,
            self.params,
            np.asarray(observed),
            jax.random.PRNGKey(self.config.seed + 1),
            evaluate.search_config(self.config),
            proposal_params=self.run.state.proposal_params if self._uses_network() else None,
            proposal_apply=self.run.setup.proposal_apply if self._uses_network() else None,
        )
        return structures

    def train_structures(self, data):
        return distributed.to_host(self.run.state.structures), data.train.labels

    def predict(self, frames, structures):
        return base.bank_predict(self.run.setup.bank, self.params, frames, structures, self.config)
