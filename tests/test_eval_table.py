"""The eval table's footnote states the units of the columns shown, as summary.json records them; the
quality plot has a finding-F1 panel (micro filled, macro hollow)."""

from __future__ import annotations

import struct

from echocxr.metrics import report


def summary(name: str, **values) -> dict:
    units = {k: "raw" if k in ("cider", "ppl") else "percent" for k in values if k not in ("tpf", "tps")}
    return {"name": name, **values, "units": units}


def test_footnote_lists_only_the_metrics_shown_in_their_recorded_units():
    table = report.markdown_table([summary("a", rouge_l=70.0, cider=2.4), summary("b", rouge_l=60.0, cider=1.1)])
    note = table.split("\n\n")[1]
    assert "ROUGE-L in %." in note and "CIDEr: raw, as in summary.json" in note
    assert "x10" not in note.split("(")[0]  # CIDEr is not shown x10 of summary.json's value
    for absent in ("METEOR", "BLEU-4", "RaTE", "SemScore", "F1", "TPF", "Valid"):
        assert absent not in note, absent
    assert "| 2.40 |" in table  # the value as summary.json has it


def test_footnote_follows_the_summary_units():
    table = report.markdown_table([{"name": "a", "tpf": 4.0, "tps": 100.0, "bleu4": 0.31, "finding_f1_micro": 55.0,
                                    "units": {"bleu4": "raw", "finding_f1_micro": "percent"}}])
    note = table.split("\n\n")[1]
    assert note.startswith("TPF: tokens per forward; TPS: tokens per second.")
    assert "F1 micro in %." in note and "BLEU-4: raw" in note and "CIDEr" not in note


def test_quality_plot_has_a_finding_f1_panel(tmp_path):
    runs = [summary("ar", tpf=1.0, rouge_l=70.0, finding_f1_micro=60.0, finding_f1_macro=40.0),
            summary("dcd", tpf=3.9, rouge_l=66.0, finding_f1_micro=50.0, finding_f1_macro=30.0)]
    assert report.plot_panels(runs) == ["rouge_l", "finding_f1_micro"]
    png = report.plot_quality_vs_tpf(runs, tmp_path / "q.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    assert width == round(4.4 * 2 * 120)  # two panels
