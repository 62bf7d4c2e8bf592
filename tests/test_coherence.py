"""Coherence on CXR-Phantom: the grammar reads its own reports back exactly (EN/ZH, normalised/raw, many
seeds), every realistic one-step corruption lowers the scores, and `echocxr eval` reports them on phantom
manifests only."""

from __future__ import annotations

import json
import random

import pytest

from echocxr.cli import main
from echocxr.data.manifest import Sample, save_manifest
from echocxr.data.phantom import Finding, PhantomCase, phantom_reports, write_report
from echocxr.data.phantom.grammar import PHRASES
from echocxr.data.phantom.parse import (
    Statement,
    canonical_statements,
    case_from_statements,
    read_report,
)
from echocxr.data.sections import FINDINGS, IMPRESSION
from echocxr.metrics import get_metric
from echocxr.metrics.coherence import is_phantom_eval, reference_variant, report_coherence

SEEDS = (0, 1, 2, 3, 4, 5)
HEADER = {"en": "Findings:", "zh": "所见："}
IMP_HEADER = {"en": "Impression:", "zh": "结论："}


@pytest.fixture(scope="module")
def reports():
    return [r for seed in SEEDS for r in phantom_reports(seed, 150)]


def test_references_read_back_exactly(reports):
    seen: set[str] = set()
    for r in reports:
        read = read_report(r.reference, r.language)
        assert read.headers == (FINDINGS, IMPRESSION)
        assert all(s.valid and s.statement is not None for s in read.sentences), r.reference
        assert case_from_statements(read.statements(FINDINGS)).labels == r.case.labels
        canonical = canonical_statements(r.case, r.language, r.variant)
        assert (read.statements(FINDINGS), read.statements(IMPRESSION)) == canonical
        rc = report_coherence(r.reference, r.language, r.variant)
        assert rc.valid and (rc.repeated, rc.missing, rc.unexpected) == (0, [], [])
        assert reference_variant(r.reference, r.language) == r.variant
        seen |= {s.statement.key for s in read.sentences}
    assert seen == set(PHRASES["en"]) == set(PHRASES["zh"])  # every statement of the grammar was exercised
    texts = " ".join(r.reference for r in reports if r.language == "en")
    assert "4.5 cm mass" in texts and "The lungs are clear. Heart size" in texts  # a number and a 2-sentence phrasing


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("variant", ["normalised", "raw"])
def test_references_score_100(reports, language, variant):
    chosen = [r for r in reports if (r.language, r.variant) == (language, variant)]
    refs = [r.reference for r in chosen]
    res = get_metric("coherence").score(refs, refs, language)
    assert res.corpus == 1.0 and res.per_sample == [1.0] * len(refs)
    assert res.extra == {"sentence_validity": 1.0, "repeated_statements": 0.0, "missing_statements": 0.0,
                         "unexpected_statements": 0.0}
    assert res.info["variants"] == {variant: len(refs)}


# ------------------------------------------------------------------------------------------- corruptions

def _tokens(text: str, language: str) -> list[str]:
    return text.split(" ") if language == "en" else list(text)


def _join(tokens: list[str], language: str) -> str:
    return (" " if language == "en" else "").join(tokens)


def _findings_sentences(report: str, language: str) -> tuple[list[str], str]:
    """The findings sentences (with end marks) and the impression part, as written."""
    body, imp = report.split(IMP_HEADER[language])
    read = read_report(body, language)
    return [s.text for s in read.sentences if s.section == FINDINGS], imp


def _assemble(sentences: list[str], imp: str, language: str) -> str:
    sep = " " if language == "en" else ""
    return f"{HEADER[language]} {sep.join(sentences)} {IMP_HEADER[language]}{imp}"


def _other_phrasings(statement: Statement, language: str) -> list[str]:
    """All texts of `statement` (the grammar filled in, without the final end mark)."""
    from echocxr.data.phantom.parse import _table

    return [t for t, st in _table(language, statement.section).phrasings.items() if st == statement]


def _word_swap(report: str, language: str, rng: random.Random) -> str:
    """Replace one word of a sentence with the word at the same place in another phrasing of its statement."""
    read = read_report(report, language)
    options = []
    for i, s in enumerate(read.sentences):
        if s.section != FINDINGS:
            continue
        mine = _tokens(s.text[:-1], language)
        for other in _other_phrasings(s.statement, language):
            theirs = _tokens(other, language)
            for j in range(min(len(mine), len(theirs))):
                if mine[j] != theirs[j]:
                    mixed = _join(mine[:j] + [theirs[j]] + mine[j + 1:], language)
                    if mixed not in _other_phrasings(s.statement, language):
                        options.append((i, mixed + s.text[-1]))
    i, mixed = rng.choice(options)
    sentences, imp = _findings_sentences(report, language)
    sentences[i] = mixed
    return _assemble(sentences, imp, language)


def _token_edit(report: str, language: str, rng: random.Random, double: bool) -> str:
    sentences, imp = _findings_sentences(report, language)
    i = rng.randrange(len(sentences))
    toks = _tokens(sentences[i][:-1], language)
    j = rng.randrange(len(toks))
    toks = toks[:j + 1] + toks[j:] if double else toks[:j] + toks[j + 1:]
    sentences[i] = _join(toks, language) + sentences[i][-1]
    return _assemble(sentences, imp, language)


def _repeat(report: str, language: str, rng: random.Random) -> str:
    sentences, imp = _findings_sentences(report, language)
    i = rng.randrange(len(sentences))
    return _assemble(sentences[:i + 1] + sentences[i:], imp, language)


def _drop_sentence(report: str, language: str, rng: random.Random) -> str:
    """Drop a sentence the grammar can miss: not one of several devices (the rest still support the
    impression's "devices" item, so the report is a valid one of fewer findings: finding F1's business)."""
    sentences, imp = _findings_sentences(report, language)
    keys = [s.statement.key for s in read_report(report, language).sentences if s.section == FINDINGS]
    devices = sum(k.startswith("device_") for k in keys)
    i = rng.choice([i for i, k in enumerate(keys) if not (k.startswith("device_") and devices > 1)])
    return _assemble(sentences[:i] + sentences[i + 1:], imp, language)


def _sections_swapped(report: str, language: str, rng: random.Random) -> str:
    findings, imp = report.split(IMP_HEADER[language])
    return f"{IMP_HEADER[language]}{imp} {findings.strip()}"


def _sentences_swapped(report: str, language: str, rng: random.Random) -> str:
    sentences, imp = _findings_sentences(report, language)
    sentences[0], sentences[-1] = sentences[-1], sentences[0]
    return _assemble(sentences, imp, language)


def _double_header(report: str, language: str, rng: random.Random) -> str:
    return report.replace(HEADER[language], HEADER[language][:-1] + HEADER[language], 1)


def _double_end(report: str, language: str, rng: random.Random) -> str:
    sentences, imp = _findings_sentences(report, language)
    i = rng.randrange(len(sentences))
    sentences[i] += sentences[i][-1]
    return _assemble(sentences, imp, language)


CORRUPTIONS = {
    "word_swapped_between_phrasings": (_word_swap, "sentence"),
    "dropped_token": (lambda r, lang, rng: _token_edit(r, lang, rng, double=False), "sentence"),
    "doubled_token": (lambda r, lang, rng: _token_edit(r, lang, rng, double=True), "sentence"),
    "doubled_end_mark": (_double_end, "sentence"),
    "doubled_header": (_double_header, "sentence"),
    "repeated_sentence": (_repeat, "repeated"),
    "missing_statement": (_drop_sentence, "missing"),
    "sections_out_of_order": (_sections_swapped, "order"),
    "statements_out_of_order": (_sentences_swapped, "order"),
}


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("variant", ["normalised", "raw"])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_lowers_the_scores(reports, name, language, variant):
    corrupt, effect = CORRUPTIONS[name]
    chosen = [r for r in reports if (r.language, r.variant) == (language, variant)][:120]
    if name == "statements_out_of_order":  # needs two findings sentences of different statements
        chosen = [r for r in chosen if len(_findings_sentences(r.reference, language)[0]) > 1]
    rng = random.Random(f"{name}-{language}-{variant}")
    hyps = [corrupt(r.reference, language, rng) for r in chosen]
    refs = [r.reference for r in chosen]
    assert chosen and all(h != r for h, r in zip(hyps, refs, strict=True))
    for hyp in hyps:
        rc = report_coherence(hyp, language, variant)
        assert not rc.valid, (name, hyp)
        if effect == "sentence":
            assert rc.n_valid_sentences < rc.n_sentences, (name, hyp)
        elif effect == "repeated":
            assert rc.repeated == 1 and rc.n_valid_sentences == rc.n_sentences and rc.in_order, hyp
        elif effect == "missing":
            # a normalised report leaves a region unstated; a raw one its closing sentence, or a finding the
            # impression still names (an impression item the findings do not support is unexpected)
            lost = len(rc.missing) if variant == "normalised" else len(rc.missing) + len(rc.unexpected)
            assert lost >= 1 and rc.repeated == 0 and rc.n_valid_sentences == rc.n_sentences, hyp
        else:
            assert not rc.in_order and rc.n_valid_sentences == rc.n_sentences and not rc.missing, hyp
    res = get_metric("coherence").score(hyps, refs, language)
    assert res.corpus == 0.0  # no corrupted report is valid
    key = {"sentence": "sentence_validity", "repeated": "repeated_statements",
           "missing": "missing_statements", "order": None}[effect]
    if key == "sentence_validity":
        assert res.extra[key] < 1.0
    elif key is not None:
        lost = res.extra[key] + (res.extra["unexpected_statements"] if variant == "raw" else 0.0)
        assert lost >= 1.0


def test_a_known_report_in_detail():
    case = PhantomCase(0, 0, (Finding("consolidation", "right", "upper"), Finding("effusion", "left", size="small"),
                              Finding("device_ett", attrs=(("cm", 4),))))
    findings, imp = write_report(case, "en", "normalised")
    ref = f"Findings: {findings} Impression: {imp}."
    read = read_report(ref, "en")
    assert [str(s.statement) for s in read.sentences] == [
        "device_ett(cm=4)", "heart_normal", "hila_normal", "consolidation(side=right, zone=upper)", "nodule_none",
        "atelectasis_none", "edema_none", "effusion_one(side=left, size=small)", "pneumothorax_none", "bones",
        "imp_consolidation(side=right, zone=upper)", "imp_effusion_one(side=left, size=small)", "imp_devices"]
    sentences, imp_part = _findings_sentences(ref, "en")
    # dropping the consolidation: its region goes unstated, its impression item loses its support
    rc = report_coherence(_assemble(sentences[:3] + sentences[4:], imp_part, "en"), "en", "normalised")
    assert [str(s) for s in rc.missing] == ["consolidation_none"]
    assert [str(s) for s in rc.unexpected] == ["imp_consolidation(side=right, zone=upper)"]
    # two phrasings of one statement repeat it; a wrong number is no phrasing at all
    twice = sentences[:1] + ["The endotracheal tube tip lies 4 cm above the carina."] + sentences[1:]
    rc = report_coherence(_assemble(twice, imp_part, "en"), "en", "normalised")
    assert rc.repeated == 1 and rc.n_valid_sentences == rc.n_sentences == 14
    wrong = ["The endotracheal tube tip lies 7 cm above the carina."] + sentences[1:]
    rc = report_coherence(_assemble(wrong, imp_part, "en"), "en", "normalised")
    assert rc.n_valid_sentences == 12 and rc.to_json()["invalid_sentences"] == [wrong[0][:-1] + "."]
    # a truncated report: the last sentence has no end mark, the impression is missing
    rc = report_coherence(ref.split(" Impression:")[0][:-1], "en", "normalised")
    assert (rc.n_sentences, rc.n_valid_sentences, rc.in_order) == (10, 9, False)
    assert len(rc.missing) == 3 and rc.read.sentences[-1].statement.key == "bones"  # recognised, not valid
    # a normalised report's negatives in a raw report are unexpected there
    raw = report_coherence(ref, "en", "raw")
    assert not raw.valid and "raw_rest" in [str(s) for s in raw.missing] and len(raw.unexpected) == 7


@pytest.mark.parametrize("language", ["en", "zh"])
def test_text_before_the_first_header_is_out_of_place(language):
    r = next(r for r in phantom_reports(4, 5, languages=(language,), variants=("normalised",)))
    sentences, imp = _findings_sentences(r.reference, language)
    moved = f"{sentences[0]} {HEADER[language]} " + ("" if language == "zh" else " ").join(sentences[1:])
    rc = report_coherence(f"{moved} {IMP_HEADER[language]}{imp}", language, "normalised")
    assert rc.read.headers == (FINDINGS, IMPRESSION) and rc.read.sentences[0].section is None
    assert rc.read.sentences[0].statement is not None  # read as findings, but outside any section
    n = len(read_report(r.reference, language).sentences)
    assert (rc.n_valid_sentences, rc.n_sentences, rc.in_order, rc.valid) == (n - 1, n, False, False)
    assert (rc.repeated, rc.missing, rc.unexpected) == (0, [], [])
    headerless = report_coherence(r.reference.replace(HEADER[language], "").replace(IMP_HEADER[language], ""),
                                  language, "normalised")
    assert headerless.n_valid_sentences == 0 and not headerless.in_order


def test_zh_impression_items_and_end_marks():
    case = PhantomCase(0, 0, (Finding("cardiomegaly"), Finding("edema")))
    findings, imp = write_report(case, "zh", "raw")
    ref = f"所见：{findings} 结论：{imp}"
    assert report_coherence(ref, "zh", "raw").valid and imp.count("；") == 1
    assert not report_coherence(ref.replace("；", "。"), "zh", "raw").valid  # items join with ；, not 。
    assert not report_coherence(ref[:-1] + "；", "zh", "raw").valid  # the last item ends with 。
    assert not report_coherence(ref.replace("。", "；", 1), "zh", "raw").valid  # findings end with 。


def test_phantom_detection():
    rs = list(phantom_reports(9, 20))
    refs, langs = [r.reference for r in rs], [r.language for r in rs]
    labels = [r.case.labels for r in rs]
    assert is_phantom_eval(refs, langs, labels) and is_phantom_eval(refs, langs, None)
    wrong = [labels[0] + ["edema"] if "edema" not in labels[0] else []] + labels[1:]
    assert not is_phantom_eval(refs, langs, wrong)  # labels the text does not state
    assert not is_phantom_eval(refs[:-1] + ["Findings: The heart is normal in size. Impression: Normal."], langs)
    assert not is_phantom_eval([], [])
    with pytest.raises(ValueError, match="no reference is a CXR-Phantom report"):
        get_metric("coherence").score(["x"], ["Findings: The lungs are clear. Impression: Normal."], "en")


# ------------------------------------------------------------------------------------------------ eval

def _phantom_eval_files(tmp_path, phantom: bool):
    rng = random.Random(0)
    samples, preds = [], []
    for k, r in enumerate(phantom_reports(11, 6, variants=("normalised",))):
        if phantom:
            samples.append(Sample(f"phantom-s11-{k:06d}-{r.language}", [], r.findings, r.impression, r.case.labels,
                                  r.language))
        else:
            samples.append(Sample(f"real{k}", [], "The heart is normal in size. The lungs are clear.",
                                  "No acute disease", [], "en"))
        report = samples[-1].reference()
        if k % 2 and phantom:
            report = _repeat(report, r.language, rng)
        preds.append({"sample_id": samples[-1].sample_id, "report": report,
                      "stats": {"tokens": 40, "forwards": 10, "prefill_s": 0.01, "decode_s": 0.1}})
    save_manifest(samples, tmp_path / "m.json")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    return tmp_path / "m.json", tmp_path / "p.jsonl"


@pytest.mark.parametrize("phantom", [True, False])
def test_eval_adds_coherence_on_phantom_manifests(tmp_path, capsys, monkeypatch, phantom):
    import echocxr.metrics.suite as suite

    monkeypatch.setattr(suite, "DEFAULT_METRICS", ("rouge_l",))  # keep the run fast; coherence joins by itself
    manifest, preds = _phantom_eval_files(tmp_path, phantom)
    out = tmp_path / "run"
    assert main(["eval", "--predictions", str(preds), "--manifest", str(manifest), "--out", str(out),
                 "--table-out", str(tmp_path / "t.md"), "--plot-out", str(tmp_path / "p.png")]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    keys = ("report_validity", "sentence_validity", "repeated_statements", "missing_statements",
            "unexpected_statements")
    if not phantom:
        assert not any(k in summary for k in keys) and "Valid rep." not in stdout
        assert "coherence" not in rows[0]["scores"]
        return
    assert summary["report_validity"] == pytest.approx(50.0)  # every second report repeats a sentence
    assert summary["sentence_validity"] == pytest.approx(100.0)
    assert summary["repeated_statements"] == pytest.approx(0.5) and summary["missing_statements"] == 0.0
    assert summary["units"]["report_validity"] == "percent"
    assert summary["units"]["repeated_statements"] == "per report"
    assert summary["metric_info"]["coherence"]["variants"] == {"normalised": 12}
    assert [r["scores"]["coherence"] for r in rows] == [100.0, 0.0] * 6
    assert rows[1]["coherence"]["repeated"] == 1 and rows[0]["coherence"]["valid"] is True
    header = stdout.splitlines()[0]
    assert "Valid rep." in header and "Valid sent." in header and "Repeats" in header and "Missing" in header
    assert "| 50.00 | 100.00 | 0.50 | 0.00 | 0.00 |" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
