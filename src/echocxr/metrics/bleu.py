"""BLEU-4 (not part of the official ECHO table; reported for comparison with older RRG papers).

Corpus value = corpus-level BLEU-4 (Papineni et al.): clipped n-gram matches and hypothesis n-gram
counts summed over the whole set, geometric mean of the four precisions with uniform weights, one
brevity penalty from the total lengths; no smoothing. This equals NLTK's `corpus_bleu` (and is what
coco-caption reports), not the mean of sentence scores.
Per-sample values = sentence BLEU-4 with NLTK's smoothing method1 (epsilon 0.1 for empty precisions)
so that short reports do not all score 0; they are for inspection, their mean is not the corpus value.
Tokens are the official METEOR tokens (lower-case, "." split off, jieba for Chinese).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from echocxr.metrics.base import MetricResult, check_pairs, languages_for
from echocxr.metrics.text import prepare_hypothesis, word_tokens

MAX_N = 4


def ngram_stats(hyp: Sequence[str], ref: Sequence[str], max_n: int = MAX_N) -> tuple[list[int], list[int]]:
    """Clipped matches and hypothesis n-gram totals for n = 1..max_n.

    A total is at least 1 even for a hypothesis shorter than n, as in NLTK; it only matters for
    reports of under four tokens.
    """
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hyp_counts = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_counts = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches.append(sum(min(c, ref_counts[g]) for g, c in hyp_counts.items()))
        totals.append(max(1, len(hyp) - n + 1))
    return matches, totals


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def corpus_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], max_n: int = MAX_N) -> float:
    """Corpus BLEU-max_n of tokenised pairs (single reference each), unsmoothed."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hyps, refs, strict=True):
        m, t = ngram_stats(hyp, ref, max_n)
        matches = [a + b for a, b in zip(matches, m, strict=True)]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        hyp_len += len(hyp)
        ref_len += len(ref)
    if matches[0] == 0 or any(m == 0 for m in matches):
        return 0.0
    log_p = math.fsum(math.log(m / t) / max_n for m, t in zip(matches, totals, strict=True))
    return brevity_penalty(hyp_len, ref_len) * math.exp(log_p)


def sentence_bleu(hyp: Sequence[str], ref: Sequence[str], max_n: int = MAX_N, epsilon: float = 0.1) -> float:
    """Sentence BLEU with additive smoothing of empty precisions (NLTK SmoothingFunction().method1)."""
    matches, totals = ngram_stats(hyp, ref, max_n)
    if matches[0] == 0:
        return 0.0
    precisions = [(m if m else epsilon) / t for m, t in zip(matches, totals, strict=True)]
    log_p = math.fsum(math.log(p) / max_n for p in precisions)
    return brevity_penalty(len(hyp), len(ref)) * math.exp(log_p)


class Bleu4:
    name = "bleu4"
    percent = True
    sharded = False  # corpus counts need the whole set

    def __init__(self, **_: object) -> None:
        pass

    def tokenise(self, hyps: list[str], refs: list[str], langs: list[str]) -> tuple[list, list]:
        hyp_tokens = [word_tokens(prepare_hypothesis(h, lang), lang) for h, lang in zip(hyps, langs, strict=True)]
        ref_tokens = [word_tokens(r, lang) for r, lang in zip(refs, langs, strict=True)]
        return hyp_tokens, ref_tokens

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        hyp_tokens, ref_tokens = self.tokenise(hyps, refs, langs)
        per_sample: list[float | None] = [sentence_bleu(h, r) for h, r in zip(hyp_tokens, ref_tokens, strict=True)]
        corpus = corpus_bleu(hyp_tokens, ref_tokens) if hyps else None
        return MetricResult(self.name, per_sample, corpus,
                            info={"definition": "corpus-level BLEU-4 (per-sample: sentence BLEU, method1 smoothing)"})

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        raise NotImplementedError("BLEU-4 is corpus-level: score the whole set")
