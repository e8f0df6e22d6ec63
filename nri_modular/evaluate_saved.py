"""Evaluating a finished run from its workdir, on any Kipf-layout data.

:func:`evaluate_run` rebuilds the model from the run's config (:func:`nri_modular.train.build`),
restores a checkpoint (:mod:`nri_modular.checkpoints`), loads one split normalised with the
run's own constants, runs the meta-test of :mod:`nri_modular.evaluate` with the run's module ->
relation map, and writes the results JSON and a figure (:mod:`nri_modular.plots`);
``experiments/evaluate.py`` is its command line. The search and prediction themselves live in
:mod:`nri_modular.evaluate`, which imports neither training nor checkpoints, so
:mod:`nri_modular.train` can use it without an import circle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nri_modular import (
    atomic,
    checkpoints,
    distributed,
    evaluate,
    gnn,
    graph,
    metrics,
    plots,
    train,
)
from nri_modular.config import Config
from nri_modular.data import datasets, files, own
from nri_modular.data.normalization import Normalization

# What evaluate_run may change of a run's meta-test (search and prediction settings);
# everything else (model, normalisation, map) is the run's own.
EVAL_OVERRIDES = (
    "test_proposal",
    "test_sa_steps",
    "test_uniform_mix",
    "test_t_start",
    "test_t_end",
    "test_batch_size",
    "obs_frames",
    "horizon",
    # Structure priors at meta-test only (the modules stay the run's own).
    "symmetric_structure",
    "node_types",
)


def run_config(workdir: str) -> tuple[Config, dict | None]:
    """A run's config and its ``run.json`` metadata (None for runs made before it).

    Raises:
      FileNotFoundError: ``workdir`` holds no run (names the files looked for).
    """
    meta = checkpoints.read_run_meta(workdir)
    if meta is not None:
        return checkpoints.config_from_json(meta["config"]), meta
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir} holds no run: neither {checkpoints.RUN_META} nor config.json exists"
        )
    with open(path, encoding="utf-8") as f:
        return checkpoints.config_from_json(json.load(f)), None


def _legacy_meta(config: Config, state, step: int) -> dict:
    """Metadata of a run made before ``run.json``: the normalisation and the map rebuilt
    from its training split (``config.data_dir``), which must then still exist."""
    logging.warning(
        "run made before run.json: normalisation and module -> relation map rebuilt from "
        "its training data in %s",
        config.data_dir,
    )
    train_split = datasets.load_dataset(
        config.data_dir, config.system, config.num_particles, splits=("train",)
    )
    structures = distributed.to_host(state.structures)
    labels = train_split.train.labels
    mapping = metrics.module_mapping(
        structures, labels, config.num_modules, datasets.system_relations(config.system).num_types
    )
    return {
        "normalization": train_split.normalization.to_dict(),
        "train_data": files.fingerprint(config.data_dir, config.system, config.num_particles),
        "module_to_relation": {
            str(step): {
                "map": [int(v) for v in mapping],
                "train_edge_accuracy": float(metrics.edge_accuracy(structures, labels, mapping)),
            }
        },
    }


def run_relations(config: Config, meta: dict) -> datasets.Relations | None:
    """What a run's relation labels meant (``run.json``; older runs: their system's)."""
    if "relations" in meta:
        saved = meta["relations"]
        return None if saved is None else datasets.Relations(**saved)
    return datasets.system_relations(config.system)


def default_out(workdir: str, data_dir: str, split: str, step: int, dataset: str = "") -> str:
    """``<workdir>/eval/<split>_<folder>-<hash>[_<dataset>]_step<k>.json``: the hash (of the
    data folder's absolute path) keeps two folders of the same name (say, two ``data``)
    apart."""
    path = os.path.abspath(data_dir)
    tag = hashlib.sha256(path.encode()).hexdigest()[:8]
    name = f"{split}_{os.path.basename(path)}-{tag}{'_' + dataset if dataset else ''}_step{step}"
    return os.path.join(workdir, "eval", name + ".json")


def inferred_path(out: str) -> str:
    """The ``.npz`` of inferred structures beside a results JSON: ``inferred_<its name>.npz``."""
    stem = os.path.splitext(os.path.basename(out))[0]
    return os.path.join(os.path.dirname(out), f"inferred_{stem}.npz")


def save_inferred(
    path: str,
    structures: np.ndarray,
    mapping,
    labels: np.ndarray | None,
    edge_penalties: np.ndarray | None = None,
    edge_evidence: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> None:
    """Writes the inferred structures of an evaluation (``.npz``, atomically).

    Arrays: ``structures`` int32 ``[M, E]`` (module of each directed edge, in
    :func:`nri_modular.graph.edge_index` order); when the run has a map (it was trained
    with labels) ``module_to_relation`` int32 ``[K]`` and ``relations`` int32 ``[M, E]``
    (``module_to_relation[structures]``); when the data has labels, ``labels`` int32
    ``[M, E]``; when computed, ``edge_penalties`` float32
    ``[M, E, K]`` (each edge's one-step penalty under each module,
    :func:`nri_modular.evaluate.edge_penalties`) and ``edge_evidence`` float32 ``[M, E]``
    (> 0: the data favours the edge existing; its AUROC is the results' ``auroc``).
    Systems of different sizes (``sizes [M]``, also saved): ``structures`` and
    ``relations`` hold ``-1`` and ``edge_penalties`` / ``edge_evidence`` NaN on edges that
    touch a padded object.
    """
    structures = np.asarray(structures, np.int32)
    arrays = {"structures": structures}
    if mapping is not None:
        arrays["module_to_relation"] = np.asarray(mapping, np.int32)
        arrays["relations"] = np.asarray(mapping, np.int32)[structures]
    for name, value in (("edge_penalties", edge_penalties), ("edge_evidence", edge_evidence)):
        if value is not None:
            arrays[name] = np.asarray(value, np.float32)
    if sizes is not None:
        real = graph.edge_mask(np.asarray(sizes), graph.num_nodes(structures.shape[1]))
        arrays["sizes"] = np.asarray(sizes, np.int32)
        for name in ("structures", "relations"):
            if name in arrays:
                arrays[name] = np.where(real, arrays[name], -1).astype(np.int32)
        for name in ("edge_penalties", "edge_evidence"):
            if name in arrays:
                mask = real if arrays[name].ndim == 2 else real[..., None]
                arrays[name] = np.where(mask, arrays[name], np.nan).astype(np.float32)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int32)
    atomic.write_atomic(path, lambda f: np.savez(f, **arrays), binary=True)


def evaluate_run(
    workdir: str,
    data_dir: str,
    split: str = "test",
    num_tasks: int = 0,
    step: int | None = None,
    overrides: dict | None = None,
    out: str | None = None,
    num_plots: int = 3,
    dataset: str | None = None,
) -> dict:
    """Scores a trained run on any Kipf-layout folder or own dataset, with the run's own
    constants.

    Rebuilds the model from the run's config, restores checkpoint ``step``, loads only
    ``split`` of ``data_dir`` (ours, Kipf's released files, the reference generator's),
    normalises it with the run's training constants (never recomputed), searches the
    structures and predicts as at the end of training
    (:func:`nri_modular.evaluate.meta_test`), and scores edge accuracy with the run's
    module -> relation map. On the run's own test split this reproduces its
    ``results.json``.

    Args:
      workdir: the run's folder (``run.json`` or, for older runs, ``config.json``).
      data_dir: folder of ``{loc,vel,edges}_{split}_{system}{n}.npy``.
      split: ``"test"`` or ``"valid"`` (any split name of the layout).
      num_tasks: score the first ``num_tasks`` systems (0: all).
      step: checkpoint step (default: the latest).
      overrides: search / prediction settings (:data:`EVAL_OVERRIDES`) to change.
      out: results JSON path (default :func:`default_out`); the inferred structures
        (:func:`save_inferred`, ``.npz``) and the figure (``.png``, when ``num_plots > 0``
        and matplotlib is installed) are written beside it, the figure last.
      num_plots: systems drawn (the first ones of the split; only with labels and a map).
      dataset: infer on one's own dataset ``NAME`` in ``data_dir``
        (:mod:`nri_modular.data.own`; default: the run's own ``--dataset``, or its
        simulated system's files).

    Returns:
      The results (also written to ``out``): edge accuracy, MSE per step in normalised and
      physical units, search and wall seconds, what was evaluated.
    """
    start = time.time()
    config, meta = run_config(workdir)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(EVAL_OVERRIDES))
    if unknown:
        raise ValueError(f"cannot override {unknown} at evaluation; allowed: {EVAL_OVERRIDES}")
    eval_config = dataclasses.replace(config, **overrides)
    if eval_config.test_proposal == "blocked_gibbs" and not config.uses_proposal_network:
        raise ValueError(
            "test_proposal=blocked_gibbs needs the learned proposal network, which this run "
            f"did not train (proposal={config.proposal}, test_proposal={config.test_proposal})"
        )
    if eval_config.uses_proposal_network and eval_config.obs_frames != config.obs_frames:
        raise ValueError(
            f"the proposal network reads obs_frames={config.obs_frames} frames; "
            f"obs_frames={eval_config.obs_frames} needs another test_proposal"
        )
    manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
    steps = list(manager.all_steps())
    step = steps[-1] if step is None and steps else step
    if step not in steps:
        raise ValueError(f"{workdir} has no checkpoint at step {step}; it has {steps}")
    mesh = distributed.make_mesh(config.model_axis_size)
    sample = np.zeros((1, config.obs_frames, config.num_particles, config.state_dim), np.float32)
    setup = train.build(config, mesh, sample)
    state = checkpoints.restore_checkpoint(manager, step, setup.abstract_state)
    meta = meta if meta is not None else _legacy_meta(config, state, step)
    entry = meta["module_to_relation"].get(str(step))
    if entry is None:
        raise ValueError(
            f"{workdir}: no module -> relation map was saved for step {step} (saved for "
            f"steps {sorted(meta['module_to_relation'], key=int)})"
        )
    # A run trained with node types follows the prior's convention whatever its map says;
    # modules trained without it can be searched with it only if module 1 is relation 1.
    if (
        eval_config.node_types
        and not config.node_types
        and (entry["map"] is None or int(entry["map"][1]) != 1)
    ):
        raise ValueError(
            "the node-type prior gives same-type pairs module 1 (relation 1: like charges), "
            f"but this run's module 1 stands for relation {entry['map'][1]} (map "
            f"{entry['map']}); its modules cannot be searched with node types as they are"
        )
    normalization = Normalization.from_dict(meta["normalization"])
    relations = run_relations(config, meta)
    dataset = config.dataset if dataset is None else dataset
    if dataset:
        loaded = own.load(
            data_dir,
            dataset,
            splits=(split,),
            normalization=normalization,
            num_sims={split: num_tasks},
            num_relation_types=None if relations is None else relations.num_types,
            no_relation=None if relations is None else relations.none,
        )
        if loaded.num_particles != config.num_particles:
            raise own.DataError(
                f"dataset {dataset!r} has {loaded.num_particles} objects per system; the run "
                f"was trained on {config.num_particles}"
            )
        data = loaded[split]
    else:
        data = datasets.load_dataset(
            data_dir,
            config.system,
            config.num_particles,
            splits=(split,),
            normalization=normalization,
        )[split]
    if num_tasks and not dataset:
        if num_tasks > data.num_tasks:
            raise ValueError(f"num_tasks={num_tasks} but {data_dir} has {data.num_tasks} {split}")
        data = datasets.Split(data.states[:num_tasks], data.labels[:num_tasks])
    needed = evaluate.frames_needed(eval_config.obs_frames, eval_config.horizon)
    if data.num_frames < needed:
        raise ValueError(
            f"{split} trajectories in {data_dir} have {data.num_frames} frames; obs_frames="
            f"{eval_config.obs_frames} and horizon={eval_config.horizon} need {needed} "
            "(--horizon=0 scores edge accuracy only; or set --obs_frames / --horizon)"
        )
    results = evaluate.meta_test(
        eval_config,
        setup.bank,
        state,
        None,
        data,
        setup.proposal_apply,
        mesh=mesh,
        mapping=entry["map"],
        keep_structures=True,
        dim_scale=evaluate.physical_scale(normalization),
        relations=relations,
    )
    structures = results.pop("structures")
    penalties, evidence = results.pop("edge_penalties"), results.pop("edge_evidence")
    results.update(
        train_edge_accuracy=entry["train_edge_accuracy"],
        workdir=os.path.abspath(workdir),
        step=int(step),
        data_dir=os.path.abspath(data_dir),
        split=split,
        dataset=dataset,
        overrides=overrides,
    )
    out = out or default_out(workdir, data_dir, split, step, dataset)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    results["inferred"] = inferred_path(out)
    results["wall_seconds"] = time.time() - start
    evaluate.check_finite_results(results, out)
    # The numbers and the structures are saved before any figure is drawn.
    save_inferred(
        results["inferred"], structures, entry["map"], data.labels, penalties, evidence, data.sizes
    )
    checkpoints.write_json_atomic(out, results)
    if num_plots > 0 and eval_config.horizon == 0:
        logging.info("horizon=0: no prediction, so no figure")
    elif num_plots > 0 and (entry["map"] is None or data.labels is None):
        logging.info("no relation labels (or no module -> relation map): no figure")
    elif num_plots > 0 and data.sizes is not None:
        logging.info("systems of different sizes: no figure (drawn for systems of one size)")
    elif num_plots > 0 and not plots.available():
        logging.info("matplotlib is not installed: no figure (pip install -e '.[plots]')")
    elif num_plots > 0:
        picks = np.arange(min(num_plots, data.num_tasks))
        initial = jnp.asarray(data.states[picks, eval_config.obs_frames])
        predicted = jax.jit(gnn.rollout, static_argnums=(0, 4))(
            setup.bank, state.params, initial, jnp.asarray(structures[picks]), eval_config.horizon
        )
        figure = os.path.splitext(out)[0] + ".png"
        plots.evaluation_figure(
            normalization.denormalise(data.states[picks].astype(np.float64)),
            normalization.denormalise(np.asarray(predicted, np.float64)),
            np.asarray(entry["map"])[structures[picks]],
            data.labels[picks],
            eval_config.obs_frames,
            figure,
            system=config.system,
        )
        results["figure"] = figure
    results["out"] = out
    return results
