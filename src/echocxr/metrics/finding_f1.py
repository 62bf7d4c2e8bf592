"""Clinical finding precision / recall / F1 over label sets (micro and macro).

A labeler turns a report into its set of positive findings; the hypothesis set is compared with the
reference set. The arithmetic (`label_set_scores`) takes plain sets, independent of any labeler.
Labelers:
- "phantom": `echocxr.data.labeler.label_report` (exact on CXR-Phantom reports, EN/ZH); the reference
  set is then the manifest's `labels` (ground truth) where given;
- "chexpert": the rule-based 14-observation labeler in `chexpert_labeler` (English real reports),
  applied to both sides;
- "auto": phantom when reference labels are given, chexpert otherwise; or pass any callable
  `labeler(text, language) -> list[str]`.
Conventions: micro = from summed TP/FP/FN; macro = mean over the labels that occur in the references or
the hypotheses (a label with no predictions or no support scores 0); per-sample = example F1,
1.0 when both sets are empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from echocxr.errors import UserError
from echocxr.metrics.base import MetricResult, check_pairs, languages_for, mean_or_none

Labeler = Callable[[str, str], list[str]]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def example_f1(pred: Iterable[str], true: Iterable[str]) -> float:
    pred, true = set(pred), set(true)
    if not pred and not true:
        return 1.0
    tp = len(pred & true)
    return 2 * tp / (len(pred) + len(true))


def label_set_scores(preds: Sequence[Iterable[str]], trues: Sequence[Iterable[str]],
                     labels: Sequence[str] | None = None) -> dict[str, float]:
    """Micro and macro P/R/F1 of predicted vs true label sets (see module doc for conventions)."""
    preds = [set(p) for p in preds]
    trues = [set(t) for t in trues]
    if labels is None:
        labels = sorted(set().union(*preds, *trues)) if preds else []
    counts = {lab: [0, 0, 0] for lab in labels}  # tp, fp, fn
    for p, t in zip(preds, trues, strict=True):
        for lab in labels:
            if lab in p and lab in t:
                counts[lab][0] += 1
            elif lab in p:
                counts[lab][1] += 1
            elif lab in t:
                counts[lab][2] += 1
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    micro = _prf(tp, fp, fn)
    per_label = [_prf(*c) for c in counts.values()]
    macro = [sum(x[i] for x in per_label) / len(per_label) if per_label else 0.0 for i in range(3)]
    return {"precision_micro": micro[0], "recall_micro": micro[1], "f1_micro": micro[2],
            "precision_macro": macro[0], "recall_macro": macro[1], "f1_macro": macro[2]}


def phantom_labeler() -> Labeler:
    try:
        from echocxr.data.labeler import label_report
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("echocxr"):
            raise UserError("finding F1 with the phantom labeler needs echocxr.data.labeler, "
                            "which this installation does not have; use --labeler chexpert") from None
        raise
    return lambda text, language: list(label_report(text, language))


def chexpert_labeler() -> Labeler:
    from echocxr.metrics.chexpert_labeler import chexpert_findings

    def label(text: str, language: str) -> list[str]:
        if language != "en":
            raise UserError("the rule-based CheXpert labeler reads English only; use --labeler phantom "
                            "for Chinese phantom reports")
        return chexpert_findings(text)

    return label


class FindingF1:
    name = "finding_f1"
    summary_key = "finding_f1_micro"
    percent = True
    sharded = False  # micro/macro need every sample's sets

    def __init__(self, labeler: str | Labeler = "auto", **_: object) -> None:
        if not callable(labeler) and labeler not in ("auto", "phantom", "chexpert"):
            raise UserError(f"unknown labeler {labeler!r} (auto, phantom or chexpert)")
        self.labeler = labeler

    def resolve(self, have_ref_labels: bool) -> tuple[str, Labeler]:
        if callable(self.labeler):
            return getattr(self.labeler, "__name__", "custom"), self.labeler
        kind = self.labeler
        if kind == "auto":
            kind = "phantom" if have_ref_labels else "chexpert"
        return kind, (phantom_labeler() if kind == "phantom" else chexpert_labeler())

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en",
              ref_labels: Sequence[Sequence[str] | None] | None = None) -> MetricResult:
        """`ref_labels[i]`, when given, is the ground-truth set of sample i (else its reference is labelled)."""
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        have = ref_labels is not None and any(x for x in ref_labels)
        kind, labeler = self.resolve(have)
        pred = [sorted(set(labeler(h, lang))) for h, lang in zip(hyps, langs, strict=True)]
        if have:
            true = [sorted(set(x)) if x is not None else sorted(set(labeler(r, lang)))
                    for x, r, lang in zip(ref_labels, refs, langs, strict=True)]
        else:
            true = [sorted(set(labeler(r, lang))) for r, lang in zip(refs, langs, strict=True)]
        scores = label_set_scores(pred, true)
        per_sample: list[float | None] = [example_f1(p, t) for p, t in zip(pred, true, strict=True)]
        return MetricResult(
            self.name, per_sample, scores["f1_micro"] if hyps else None,
            extra={"finding_f1_macro": scores["f1_macro"], "finding_precision_micro": scores["precision_micro"],
                   "finding_recall_micro": scores["recall_micro"], "finding_precision_macro": scores["precision_macro"],
                   "finding_recall_macro": scores["recall_macro"]},
            info={"labeler": kind, "reference_sets": "manifest labels" if have else "labeler on references"},
            sample_extra={"findings_pred": pred, "findings_ref": true})

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        return mean_or_none(per_sample)
