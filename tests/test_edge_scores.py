"""Per-edge scores of a search (each edge's penalty under each module, the evidence that an
edge exists) and their AUROC: checked against brute force, and saved by evaluate.py."""

import itertools

import numpy as np
import pytest

from nri_modular import evaluate, evaluate_saved, metrics, structure


@pytest.mark.parametrize("n,k", [(4, 2), (5, 2), (4, 3)])
def test_edge_module_scores_is_the_score_of_the_setting_with_that_edge_changed(n, k):
    rng = np.random.default_rng(n * 10 + k)
    b = 3
    configs = [tuple(c) for c in structure.incoming_configs(n, k)]
    scores = rng.normal(size=(b, n, len(configs)))
    structures = rng.integers(0, k, size=(b, n * (n - 1)))
    got = structure.edge_module_scores(scores, structures, n, k)
    assert got.shape == (b, n * (n - 1), k)
    for t in range(b):
        for i in range(n):
            incoming = list(structures[t, i * (n - 1) : (i + 1) * (n - 1)])
            for e in range(n - 1):
                for m in range(k):
                    setting = incoming.copy()
                    setting[e] = m
                    want = scores[t, i, configs.index(tuple(setting))]
                    assert got[t, i * (n - 1) + e, m] == want


def test_auroc_is_the_pairwise_probability_with_half_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # many ties
    labels = rng.random(200) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = [(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)]
    assert metrics.auroc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert metrics.auroc([0.1, 0.9], [0, 1]) == 1.0 and metrics.auroc([0.9, 0.1], [0, 1]) == 0
    with pytest.raises(ValueError, match="both classes"):
        metrics.auroc([0.1, 0.2], [1, 1])


def test_edge_evidence_gap_and_one_sided_maps():
    penalties = np.array([[[1.0, 3.0], [5.0, 2.0]]])  # [1 task, 2 edges, K=2]
    np.testing.assert_array_equal(evaluate.edge_evidence(penalties, [0, 1], 1), [[-2.0, 3.0]])
    np.testing.assert_array_equal(evaluate.edge_evidence(penalties, [1, 0], 1), [[2.0, -3.0]])
    assert evaluate.edge_evidence(penalties, [1, 1], 1) is None


def test_evaluate_saves_edge_scores_and_their_auroc(trained_workdir, tiny_data_dir, tmp_path):
    results = evaluate_saved.evaluate_run(
        trained_workdir, tiny_data_dir, out=str(tmp_path / "e.json"), num_plots=0
    )
    saved = np.load(results["inferred"])
    penalties, evidence = saved["edge_penalties"], saved["edge_evidence"]
    assert penalties.shape == (8, 12, 2) and evidence.shape == (8, 12)
    # The evidence is the penalty gap between the modules of "no spring" and of "spring".
    none = list(saved["module_to_relation"]).index(0)
    np.testing.assert_allclose(evidence, penalties[..., none] - penalties[..., 1 - none])
    assert results["auroc"] == pytest.approx(metrics.auroc(evidence, saved["labels"] == 1))
