"""Findings are visible: a small CNN probe on a few hundred phantoms beats chance by a wide margin.

The full-size probe (2,000 training studies, macro AUROC >= 0.9) is benchmarks/phantom_probe.py; this is
the fast version with a lower bar. If the renderer stopped drawing a finding (or drew it on the wrong
side), its AUROC would fall to ~0.5 and this test would fail.
"""

from __future__ import annotations

import numpy as np

from echocxr.data.phantom.probe import ProbeConfig, auroc_report, run_probe

SMALL = ProbeConfig(n_train=400, n_test=200, image_size=128, probe_size=64, width=8, epochs=12,
                    batch_size=32, lr=3e-3, min_positives=5, threads=1)
OBVIOUS = ("cardiomegaly", "effusion", "edema", "atelectasis", "device_pacemaker")


def test_small_probe_learns_the_findings():
    result = run_probe(SMALL)
    per_type = result["per_type"]
    for name in OBVIOUS:
        assert per_type[name]["auroc_any"] >= 0.85, (name, per_type[name])
    assert result["macro_auroc_types"] >= 0.7, result["macro_auroc_types"]


def test_auroc_report_is_chance_for_uninformative_scores():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 34)) < 0.2).astype(np.float32)
    report = auroc_report(y, rng.random((400, 34)).astype(np.float32))
    assert abs(report["macro_auroc_labels"] - 0.5) < 0.05
    perfect = auroc_report(y, y + 0.01 * rng.random(y.shape))
    assert perfect["macro_auroc_labels"] == 1.0
