"""Every text the program prints for people: results tables and the training progress line.

Functions here only format (dict in, string out); they read results, never compute them.
"""

from __future__ import annotations


def format_run_results(results: dict) -> str:
    """A meta-training run's results table (edge accuracy, MSE at 1/10/20 steps), Markdown.

    Args:
      results: the dict :func:`nri_modular.train.train_and_evaluate` returns (and writes
        to ``results.json``).
    """
    lines = [
        f"{results['system'] or results.get('dataset', '')}: {results['num_test_tasks']} test "
        f"tasks, {results['num_train_tasks']} training tasks, {results['wall_seconds']:.0f} s wall",
        "| metric | value |",
        "|---|---|",
        f"| edge accuracy (test) | {_percent(results['edge_accuracy'])} |",
        f"| edge accuracy (train structures) | {_percent(results['train_edge_accuracy'])} |",
    ]
    lines += _by_size(results)
    if results.get("module_usage") is not None:
        usage = ", ".join(f"{100 * u:.1f}%" for u in results["module_usage"])
        lines.append(f"| edges per module (test) | {usage} |")
    for k in (1, 10, 20):
        value = results[f"mse_{k}"]
        lines.append(
            f"| MSE {k} step{'s' if k > 1 else ''} | "
            + (f"{value:.3e} |" if value is not None else "n/a (horizon too short) |")
        )
    return "\n".join(lines)


def format_train_progress(record: dict, total_steps: int) -> str:
    """One training log line from a metric record (the mean over the last logged steps),
    with the time left at the window's throughput (``eta``)."""
    left = (total_steps - record["step"]) * record.get("batch_size", 0)
    eta = left / record["tasks_per_second"] if record["tasks_per_second"] > 0 else float("nan")
    return (
        f"epoch {record['epoch']:.2f} step {record['step']}/{total_steps} | "
        f"loss {record['loss']:.3e} | accept {record['accept_rate']:.2f} "
        f"worse-accept {record['worse_accept_rate']:.2f} "
        f"(target {record['target_worse_rate']:.3f}) T {record['temperature']:.2e} | "
        + (
            f"train structures' edge acc {record['train_edge_accuracy']:.4f} | "
            if record.get("train_edge_accuracy") is not None
            else ""
        )
        + f"{record['tasks_per_second']:.0f} tasks/s | eta {_minutes(eta)}"
    )


def _by_size(results: dict) -> list[str]:
    """Table rows of the edge accuracy per system size (systems of different sizes)."""
    by_size = results.get("edge_accuracy_by_size") or {}
    return [f"| edge accuracy, {n} objects | {_percent(a)} |" for n, a in by_size.items()]


def _percent(value: float | None) -> str:
    """``12.34%`` (``99.995%``, never ``100.00%``, for one wrong edge in 20,000), or
    ``n/a (no labels)`` for data without relation labels."""
    if value is None:
        return "n/a (no labels)"
    decimals = 2
    while decimals < 6 and value != 1 and f"{100 * value:.{decimals}f}" == f"{100:.{decimals}f}":
        decimals += 1
    return f"{100 * value:.{decimals}f}%"


def _minutes(seconds: float) -> str:
    """``12.3 min`` (or ``?`` when unknown)."""
    return "?" if not seconds == seconds else f"{seconds / 60:.1f} min"


def format_hidden_node_results(results: dict) -> str:
    """The hidden-particle experiment's results table, Markdown.

    Args:
      results: the dict :func:`nri_modular.hidden_node_experiment.run_experiment` returns
        (and writes to ``results.json``).
    """
    r = results
    lines = [
        f"hidden particle ({r['hidden']}) in {r['num_systems']} springs "
        f"{r.get('split', 'test')} systems, "
        f"{r['obs_frames']} observed frames, {r['wall_seconds']:.0f} s wall "
        f"(inference {r['infer_seconds']:.0f} s, training {r['train_seconds']:.0f} s)",
        "| metric | ours | paper |",
        "|---|---|---|",
        f"| hidden-particle MSE (true edges) | {r['hidden_mse']:.3e} | "
        f"{r['paper_hidden_mse']:.2e} |",
        f"| ... median over systems | {r['hidden_mse_median']:.3e} | |",
    ]
    if "hidden_mse_from_true_initial" in r:
        lines.append(
            f"| rollout from the TRUE initial state (model floor) | "
            f"{r['hidden_mse_from_true_initial']:.3e} | |"
        )
    unconnected = r["num_systems"] - r["num_connected"]
    if r.get("hidden_mse_connected") is not None:
        lines.append(
            f"| ... hidden particle with >= 1 spring ({r['num_connected']}) | "
            f"{r['hidden_mse_connected']:.3e} | |"
        )
    if r.get("hidden_mse_unconnected") is not None:
        lines.append(
            f"| ... hidden particle with no spring ({unconnected}) | "
            f"{r['hidden_mse_unconnected']:.3e} | |"
        )
    if r.get("free_particle_floor") is not None and unconnected:
        floor = r["free_particle_floor"]
        lines.append(
            f"| ... lowest possible there (free particles' per-frame variance) | {floor:.3e} | |"
        )
        lines.append(
            f"| lowest possible mean over all {r['num_systems']} systems "
            f"({unconnected} x that / {r['num_systems']}) | "
            f"{unconnected * floor / r['num_systems']:.3e} | |"
        )
    if "existence_accuracy" in r:
        per_class = r["existence_num_per_class"]
        lines += [
            f"| hidden-particle MSE (edges searched) | {r['hidden_mse_unknown_edges']:.3e} | |",
            f"| existence test accuracy ({per_class} + {per_class}) | "
            f"{100 * r['existence_accuracy']:.1f}% | |",
            f"| ... detected when present / when connected | "
            f"{100 * r['existence_detection_rate']:.1f}% / "
            f"{100 * r['existence_detection_rate_connected']:.1f}% | |",
            f"| ... false alarms when absent | {100 * r['existence_false_alarm_rate']:.1f}% | |",
        ]
    lines.append(f"figure: {r['figure']}")
    return "\n".join(lines)


def format_evaluation(results: dict) -> str:
    """The table of :func:`nri_modular.evaluate_saved.evaluate_run` (Markdown)."""

    def mse(key):
        value = results.get(key)
        return "n/a (horizon too short)" if value is None else f"{value:.3e}"

    lines = [
        f"{results.get('dataset') or results['system']}: run {results['workdir']} (step "
        f"{results['step']}) on {results['num_test_tasks']} {results['split']} systems of "
        f"{results['data_dir']}",
        "| metric | value |",
        "|---|---|",
        f"| edge accuracy (run's module -> relation map) | {_percent(results['edge_accuracy'])} |",
    ]
    lines += _by_size(results)
    if results.get("auroc") is not None:
        lines.append(f"| edge existence AUROC | {results['auroc']:.4f} |")
    if results.get("module_usage") is not None:
        usage = ", ".join(f"{100 * u:.1f}%" for u in results["module_usage"])
        lines.append(f"| edges per module | {usage} |")
    for k in (1, 10, 20):
        label = f"MSE {k} step{'s' if k > 1 else ''}"
        lines.append(f"| {label} (normalised) | {mse(f'mse_{k}')} |")
        lines.append(f"| {label} (physical units) | {mse(f'mse_{k}_physical')} |")
    lines += [
        f"| structure search | {results['test_search_seconds']:.1f} s |",
        f"| wall (restore, search, prediction, figure) | {results['wall_seconds']:.1f} s |",
        f"results: {results['out']}; inferred structures: {results['inferred']}"
        + (f"; figure: {results['figure']}" if "figure" in results else ""),
    ]
    return "\n".join(lines)
