"""CIDEr (plain, not CIDEr-D): TF-IDF weighted n-gram cosine, n = 1..4, averaged over n, times 10.

Deviation from the official ECHO run (documented): it takes document frequencies from the MS-COCO
caption table shipped with `cidereval`, which is not available offline and says little about radiology
text. We use the document frequencies of the evaluated reference corpus itself (the original CIDEr
"corpus" mode): df(g) = number of references containing n-gram g, idf = log(N) - log(max(1, df)).
Scores therefore depend on the evaluated set: compare runs only on the same references.
Tokens are whitespace tokens of the official ROUGE strings (lower-cased text; jieba for Chinese).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from echocxr.metrics.base import MetricResult, check_pairs, languages_for, mean_or_none
from echocxr.metrics.text import prepare_hypothesis, rouge_text

MAX_N = 4


def ngram_counts(tokens: Sequence[str], max_n: int = MAX_N) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


def _tfidf(counts: Counter, df: Counter, log_n: float, max_n: int) -> tuple[list[dict], list[float]]:
    vec: list[dict] = [{} for _ in range(max_n)]
    norm = [0.0] * max_n
    for gram, tf in counts.items():
        k = len(gram) - 1
        w = tf * (log_n - math.log(max(1.0, df[gram])))
        vec[k][gram] = w
        norm[k] += w * w
    return vec, [math.sqrt(x) for x in norm]


def cider_scores(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]],
                 max_n: int = MAX_N) -> list[float]:
    """Per-pair CIDEr of tokenised pairs with document frequencies from `refs`."""
    ref_counts = [ngram_counts(r, max_n) for r in refs]
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(counts.keys())
    log_n = math.log(float(len(refs))) if refs else 0.0
    scores = []
    for hyp, rc in zip(hyps, ref_counts, strict=True):
        vh, nh = _tfidf(ngram_counts(hyp, max_n), df, log_n, max_n)
        vr, nr = _tfidf(rc, df, log_n, max_n)
        sims = []
        for k in range(max_n):
            dot = sum(w * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                dot /= nh[k] * nr[k]
            sims.append(dot)
        scores.append(10.0 * sum(sims) / max_n)
    return scores


class Cider:
    name = "cider"
    percent = False  # CIDEr is reported as is (x10 scale), as in the paper
    sharded = False  # document frequencies come from the whole reference set

    def __init__(self, **_: object) -> None:
        pass

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        hyp_tokens = [rouge_text(prepare_hypothesis(h, lang), lang).split() for h, lang in zip(hyps, langs, strict=True)]
        ref_tokens = [rouge_text(r, lang).split() for r, lang in zip(refs, langs, strict=True)]
        per_sample: list[float | None] = list(cider_scores(hyp_tokens, ref_tokens))
        return MetricResult(self.name, per_sample, mean_or_none(per_sample),
                            info={"definition": "plain CIDEr, n=1..4, x10",
                                  "document_frequencies": f"evaluated reference corpus ({len(refs)} reports)"})

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        return mean_or_none(per_sample)
