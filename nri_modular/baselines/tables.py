"""The paper's Tables 1-2: every method trained (or loaded) and scored on the same tasks.

:func:`run_table` fits each method in ``<out>/<method>`` (a finished one is loaded), scores
it with :func:`base.evaluate_method` and rewrites ``<out>/table.json`` after each method,
so an interrupted run keeps what it finished and a rerun continues.
:func:`format_tables` prints both tables next to the published numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from nri_modular import checkpoints
from nri_modular.baselines import base
from nri_modular.config import Config
from nri_modular.data import datasets

# Alet et al. (2019), Table 1: MSE after 1 and 10 prediction steps, (springs, charged).
# Every row but "modular" is Kipf et al. (2018)'s, as quoted there (their Table 2).
PUBLISHED_MSE = {
    "static": {"springs": (7.93e-5, 7.59e-3), "charged": (5.09e-3, 2.26e-2)},
    "lstm_single": {"springs": (2.27e-6, 4.69e-4), "charged": (2.71e-3, 7.05e-3)},
    "lstm_joint": {"springs": (4.13e-8, 2.19e-5), "charged": (1.68e-3, 6.45e-3)},
    "nri_full_graph": {"springs": (1.66e-5, 1.64e-3), "charged": (1.09e-3, 3.78e-3)},
    "nri_vae": {"springs": (3.12e-8, 3.29e-6), "charged": (1.05e-3, 3.21e-3)},
    "modular": {"springs": (3.13e-8, 3.25e-6), "charged": (1.03e-3, 3.11e-3)},
    "nri_true_graph": {"springs": (1.69e-11, 1.32e-9), "charged": (1.04e-3, 3.03e-3)},
}
# Alet et al. (2019), Table 2: edge accuracy (%). Every row but "modular" is Kipf et al.
# (2018)'s, as quoted there (their Table 1).
PUBLISHED_ACCURACY = {
    "corr_data": {"springs": 52.4, "charged": 55.8},
    "corr_lstm": {"springs": 52.7, "charged": 54.2},
    "nri_vae": {"springs": 99.9, "charged": 82.1},
    "modular": {"springs": 99.9, "charged": 88.4},
    "supervised": {"springs": 99.9, "charged": 95.0},
}
TABLE1_ROWS = (
    "static",
    "lstm_single",
    "lstm_joint",
    "nri_full_graph",
    "nri_vae",
    "modular",
    "nri_true_graph",
)
TABLE2_ROWS = ("corr_data", "corr_lstm", "nri_vae", "modular", "supervised")
ROW_NAMES = {
    "static": "Static",
    "lstm_single": "LSTM (single)",
    "lstm_joint": "LSTM (joint)",
    "nri_full_graph": "NRI (full graph)",
    "nri_vae": "NRI VAE (Kipf et al., 2018)",
    "modular": "Modular meta-l. (ours)",
    "nri_true_graph": "NRI (true graph)",
    "corr_data": "Correlation (data)",
    "corr_lstm": "Correlation (LSTM)",
    "supervised": "Supervised",
}
REPORTED = ("mse_1", "mse_10", "mse_20", "edge_accuracy", "train_seconds")


def baseline_settings(
    config: Config, learning_rate: float, lr_decay_epochs: int, mapping_tasks: int
) -> base.BaselineSettings:
    """The baselines' settings of a table run: ``config.num_epochs`` epochs (as ``modular``)
    from ``config.seed``."""
    return base.BaselineSettings(
        epochs=config.num_epochs,
        learning_rate=learning_rate,
        lr_decay_epochs=lr_decay_epochs,
        mapping_tasks=mapping_tasks,
        seed=config.seed,
    )


def run_table(
    config: Config,
    settings: base.BaselineSettings,
    methods: Sequence[str],
    out: str,
    data: datasets.Dataset,
) -> dict:
    """Fits (or loads) and scores each method; writes ``<out>/table.json`` as it goes.

    Args:
      config: data, sizes and ``modular``'s settings (``num_epochs`` is every method's).
      settings: the baselines' training settings.
      methods: registry names, in the order to run.
      out: folder of the methods' runs and of ``table.json``.
      data: the dataset ``config`` describes.

    Returns:
      ``{method: {"mse_1", "mse_10", "mse_20", "edge_accuracy", "train_seconds"}}``
      (plus ``"mse_per_step"`` and ``"eval_seconds"``).
    """
    from nri_modular import baselines  # the registry imports this module's siblings

    unknown = [m for m in methods if m not in baselines.METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {tuple(baselines.METHODS)}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "table.json")
    results = {}
    for name in methods:
        start = time.time()
        method = baselines.make_method(name, config, settings)
        method.fit(data, os.path.join(out, name))
        results[name] = base.evaluate_method(method, data, config)
        logging.info(
            "%s: %s (%.0f s with loading/training and evaluation)",
            name,
            {k: results[name][k] for k in REPORTED},
            time.time() - start,
        )
        checkpoints.write_json_atomic(path, results)
    return results


def _sci(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _rows(results: dict, names, cells, published: dict, system: str) -> list[str]:
    """Markdown rows of the methods of ``names`` in ``results``: the method's name,
    ``cells(result, published[name][system])`` (strings), its training seconds."""
    return [
        "| "
        + " | ".join(
            [
                ROW_NAMES[name],
                *cells(results[name], published[name][system]),
                f"{results[name]['train_seconds']:.0f}",
            ]
        )
        + " |"
        for name in names
        if name in results
    ]


def format_tables(results: dict, system: str) -> str:
    """Markdown of Table 1 (MSE at 1/10/20 steps) and Table 2 (edge accuracy, %).

    Our numbers beside the published ones (Alet et al. 2019, Tables 1-2; baselines as
    quoted there from Kipf et al. 2018). Methods not in ``results`` are left out.
    """
    lines = [
        f"Table 1 ({system}): MSE after k prediction steps (normalised units)",
        "",
        "| method | MSE 1 | MSE 10 | MSE 20 | paper MSE 1 | paper MSE 10 | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += _rows(
        results,
        TABLE1_ROWS,
        lambda r, paper: (
            [_sci(r[k]) for k in ("mse_1", "mse_10", "mse_20")] + [_sci(paper[0]), _sci(paper[1])]
        ),
        PUBLISHED_MSE,
        system,
    )
    lines += [
        "",
        f"Table 2 ({system}): edge accuracy (%) on the test tasks",
        "",
        "| method | accuracy | paper | train s |",
        "|---|---|---|---|",
    ]
    lines += _rows(
        results,
        TABLE2_ROWS,
        lambda r, paper: [_pct(r["edge_accuracy"]), f"{paper:.1f}"],
        PUBLISHED_ACCURACY,
        system,
    )
    return "\n".join(lines)


def tasks_to_reach(sizes: Sequence[int], accuracies: Sequence[float], target: float):
    """Training tasks at which a curve first reaches ``target`` accuracy, or ``None``.

    Linear interpolation in ``log(size)`` between the first point at or above ``target``
    and the one before it (the curve is read as Figure 3 is drawn, on a log axis).

    Args:
      sizes: increasing training-set sizes; accuracies: the curve at those sizes.
    """
    sizes, acc = np.asarray(sizes, np.float64), np.asarray(accuracies, np.float64)
    if sizes.shape != acc.shape or sizes.ndim != 1 or np.any(np.diff(sizes) <= 0):
        raise ValueError(f"sizes {sizes} must be increasing and match accuracies {acc}")
    above = np.flatnonzero(acc >= target)
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(sizes[0])
    lo, hi = np.log(sizes[i - 1]), np.log(sizes[i])
    frac = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
    return float(np.exp(lo + frac * (hi - lo)))


def data_efficiency_ratios(sizes, modular_accuracy, vae_accuracy) -> list[dict]:
    """For each size: the tasks the VAE needs for the accuracy ``modular`` reaches there.

    Returns:
      One ``{"num_train", "modular_accuracy", "vae_tasks_needed", "ratio",
      "ratio_at_least"}`` per size; ``vae_tasks_needed`` and ``ratio`` are ``None`` when
      the VAE curve never reaches it, and ``ratio_at_least`` is then ``max(sizes) /
      num_train`` (the VAE needs more than all the tasks measured); otherwise it equals
      ``ratio``.
    """
    rows = []
    for size, acc in zip(sizes, modular_accuracy, strict=True):
        needed = tasks_to_reach(sizes, vae_accuracy, acc)
        rows.append(
            {
                "num_train": int(size),
                "modular_accuracy": float(acc),
                "vae_tasks_needed": needed,
                "ratio": None if needed is None else needed / size,
                "ratio_at_least": (max(sizes) if needed is None else needed) / size,
            }
        )
    return rows


def vae_best_reading(sizes, modular_accuracy, vae_accuracy) -> dict:
    """The other reading of Figure 3: tasks ``modular`` needs for the VAE's best accuracy.

    Useful when the VAE curve never reaches ``modular``'s (``data_efficiency_ratios`` then
    only bounds the ratio). ``modular_tasks_needed`` is read off ``modular``'s curve as
    :func:`tasks_to_reach` does; when ``modular``'s first point already reaches it, it is
    that size and ``ratio`` is a lower bound (``exact`` False).

    Returns:
      ``{"vae_best_accuracy", "vae_tasks", "modular_tasks_needed", "ratio", "exact"}``;
      ``modular_tasks_needed`` and ``ratio`` are ``None`` if ``modular`` never reaches it.
    """
    vae = np.asarray(vae_accuracy, np.float64)
    best = int(np.argmax(vae))
    needed = tasks_to_reach(sizes, modular_accuracy, float(vae[best]))
    return {
        "vae_best_accuracy": float(vae[best]),
        "vae_tasks": int(sizes[best]),
        "modular_tasks_needed": needed,
        "ratio": None if needed is None else sizes[best] / needed,
        "exact": bool(needed is not None and modular_accuracy[0] < vae[best]),
    }
