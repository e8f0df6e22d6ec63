"""experiments/table.py (Tables 1-2) end to end on table_test.flags, and the table flagfiles."""

import glob
import json
import os
import sys

import numpy as np
import pytest
from conftest import REPO, flagfile_config, run_checked

from nri_modular.baselines import tables

FLAGS_DIR = os.path.join(REPO, "experiments", "flags")
TABLE_FLAGS = ("methods", "out", "baseline_learning_rate", "lr_decay_epochs", "mapping_tasks")
DATA_EFFICIENCY_FLAGS = ("train_sizes", "steps", "out", "baseline_learning_rate", "mapping_tasks")


def _config_part(path: str, own_flags, tmp_path) -> str:
    """The flagfile without the script's own flags (those are not Config fields)."""
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name = line.strip()[2:].split("=", 1)[0] if line.startswith("--") else None
            if name not in own_flags:
                kept.append(line)
    out = tmp_path / os.path.basename(path)
    out.write_text("".join(kept))
    return str(out)


@pytest.mark.parametrize(
    "path",
    sorted(glob.glob(os.path.join(FLAGS_DIR, "table_*.flags")))
    + sorted(glob.glob(os.path.join(FLAGS_DIR, "data_efficiency*.flags"))),
    ids=os.path.basename,
)
def test_table_flagfiles_build_valid_configs(path, tmp_path):
    own = TABLE_FLAGS if "table_" in path else DATA_EFFICIENCY_FLAGS
    flagfile_config(_config_part(path, own, tmp_path))  # unknown flags / bad values raise


def test_table_runs_on_the_test_flagfile_and_a_rerun_loads(tmp_path, subprocess_env):
    out = tmp_path / "table"
    args = [
        sys.executable,
        os.path.join(REPO, "experiments", "table.py"),
        f"--flagfile={os.path.join(FLAGS_DIR, 'table_test.flags')}",
        f"--data_dir={tmp_path / 'data'}",
        f"--out={out}",
        "--methods=static,modular,nri_vae,corr_data",
    ]
    proc = run_checked(args, subprocess_env)
    assert "Table 1 (springs)" in proc.stdout and "Table 2 (springs)" in proc.stdout
    results = json.loads((out / "table.json").read_text())
    assert list(results) == ["static", "modular", "nri_vae", "corr_data"]
    for name, row in results.items():
        assert set(tables.REPORTED) <= set(row), name
    assert results["static"]["edge_accuracy"] is None
    assert results["corr_data"]["mse_1"] is None
    table_md = (out / "table.md").read_text()
    assert table_md.startswith("Table 1 (springs)")
    # The tables print the JSON's numbers (a row from another method would differ).
    modular = results["modular"]
    assert f"| Modular meta-l. (ours) | {100 * modular['edge_accuracy']:.1f} |" in table_md
    assert f"{modular['mse_1']:.2e}" in table_md and f"{results['static']['mse_1']:.2e}" in table_md
    # A rerun loads every finished method: same training times, same scores.
    run_checked(args, subprocess_env)
    again = json.loads((out / "table.json").read_text())
    for name in results:
        assert again[name]["train_seconds"] == results[name]["train_seconds"], name
        assert again[name]["edge_accuracy"] == results[name]["edge_accuracy"], name
        assert again[name]["mse_1"] == results[name]["mse_1"], name


def test_format_tables_puts_published_numbers_beside_ours():
    row = dict.fromkeys(tables.REPORTED, None) | {"train_seconds": 1.0}
    text = tables.format_tables(
        {"modular": row | {"edge_accuracy": 0.5, "mse_1": 1e-3}, "static": row}, "charged"
    )
    assert "| Modular meta-l. (ours) | 50.0 | 88.4 | 1 |" in text
    assert "| Static | - | - | - | 5.09e-03 | 2.26e-02 | 1 |" in text
    assert "Supervised" not in text  # rows not run are left out


def test_tasks_to_reach_interpolates_on_the_log_axis():
    sizes, acc = [100, 1000, 10000], [0.5, 0.7, 0.9]
    assert tables.tasks_to_reach(sizes, acc, 0.6) == pytest.approx(np.sqrt(100 * 1000))
    assert tables.tasks_to_reach(sizes, acc, 0.4) == 100
    assert tables.tasks_to_reach(sizes, acc, 0.95) is None
    with pytest.raises(ValueError, match="increasing"):
        tables.tasks_to_reach([1000, 100, 10], acc, 0.6)


def test_data_efficiency_ratios_read_the_vae_curve_at_modulars_accuracy():
    rows = tables.data_efficiency_ratios([100, 1000], [0.8, 0.99], [0.6, 0.8])
    assert rows[0]["vae_tasks_needed"] == pytest.approx(1000)
    assert rows[0]["ratio"] == pytest.approx(10)
    assert rows[1]["vae_tasks_needed"] is None and rows[1]["ratio"] is None
    assert rows[0]["ratio_at_least"] == pytest.approx(10)
    assert rows[1]["ratio_at_least"] == pytest.approx(1)  # 1000 / 1000: nothing more is known


def test_vae_best_reading_reads_modulars_curve_at_the_vaes_best_accuracy():
    sizes = [100, 1000, 10000]
    # The VAE's best is 0.7 at 10000; modular crosses 0.7 halfway (in log) from 100 to 1000.
    exact = tables.vae_best_reading(sizes, [0.6, 0.8, 0.9], [0.5, 0.6, 0.7])
    assert exact["vae_best_accuracy"] == pytest.approx(0.7) and exact["vae_tasks"] == 10000
    assert exact["modular_tasks_needed"] == pytest.approx(np.sqrt(100 * 1000))
    assert exact["ratio"] == pytest.approx(10000 / np.sqrt(100 * 1000)) and exact["exact"]
    bound = tables.vae_best_reading(sizes, [0.75, 0.8, 0.9], [0.5, 0.7, 0.6])
    assert bound["vae_tasks"] == 1000 and bound["modular_tasks_needed"] == 100
    assert bound["ratio"] == pytest.approx(10) and not bound["exact"]
    never = tables.vae_best_reading(sizes, [0.5, 0.55, 0.6], [0.5, 0.6, 0.7])
    assert never["modular_tasks_needed"] is None and never["ratio"] is None


def test_data_efficiency_figure_writes_a_png(tmp_path):
    from nri_modular import plots

    path = str(tmp_path / "fig.png")
    plots.data_efficiency_figure(
        [50, 500], {"modular": [0.6, 0.9], "nri_vae": [0.5, 0.7]}, path, "springs", 800
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one accuracy per size"):
        plots.data_efficiency_figure([50, 500], {"modular": [0.6]}, path, "springs")
