"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures with the official ECHO semantics, reimplemented (no
dependency on the packages; the official table reports all three).

ROUGE-N (both languages, as `rouge` 1.0.1 and `rouge_chinese` 1.0.3 compute it): the words of all
sentences (cut as below) in one sequence, its n-grams counted as a *set* on each side, overlap =
size of the intersection, F = 2PR / (P + R + 1e-8).

English = what PyPI `rouge` 1.0.1 returns as `rouge-l`/`f` for lower-cased text:
  sentences are the non-empty pieces of `text.split(".")` with whitespace collapsed, words are
  `sentence.split(" ")`; summary-level union-LCS where, as in that package, words are counted as a
  *set*: m and n are the numbers of distinct reference/hypothesis words and the union LCS is the set of
  words on the (deterministically reconstructed) LCS of every (reference sentence, hypothesis sentence)
  pair; F = 2PR / (P + R + 1e-8).
Chinese = what `rouge_chinese` 1.0.3 returns: jieba tokens joined by spaces, sentences cut on Chinese
  end punctuation, plain LCS over all tokens (duplicates counted), same F formula.
An empty hypothesis (or one with no sentence) scores 0 instead of raising as the packages do; the
official run silently drops such samples from the mean, which flatters a model that writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from echocxr.metrics.base import MetricResult, SampleMeanMetric, check_pairs, languages_for
from echocxr.metrics.text import prepare_hypothesis, rouge_text


def _lcs_table(x: Sequence[str], y: Sequence[str]) -> list[list[int]]:
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        row, prev, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, len(y) + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    return table


def lcs_length(x: Sequence[str], y: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(x) * len(y)), two rows of memory)."""
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0] * (len(y) + 1)
        for j, yj in enumerate(y, start=1):
            cur[j] = prev[j - 1] + 1 if xi == yj else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def lcs_words(x: Sequence[str], y: Sequence[str]) -> list[str]:
    """One LCS of x and y, chosen by the classic backtrack (prefer dropping from y on ties).

    Which LCS is chosen matters for the set-based union of `rouge`, so the tie rule is part of the
    semantics: at (i, j) move up only when table[i-1][j] is strictly larger than table[i][j-1].
    """
    table = _lcs_table(x, y)
    i, j, out = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    out.reverse()
    return out


def _f_measure(llcs: float, n_ref: int, n_hyp: int) -> float:
    recall = llcs / n_ref
    precision = llcs / n_hyp
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def en_sentences(text: str) -> list[str]:
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def rouge_l_en(hyp: str, ref: str) -> float:
    """Summary-level union-LCS ROUGE-L F of already lower-cased English text (`rouge` 1.0.1)."""
    hyp_sents, ref_sents = en_sentences(hyp), en_sentences(ref)
    if not hyp_sents or not ref_sents:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp_sents]
    ref_words = [s.split(" ") for s in ref_sents]
    n_ref = len({w for ws in ref_words for w in ws})
    n_hyp = len({w for ws in hyp_words for w in ws})
    union: set[str] = set()
    for rw in ref_words:
        for hw in hyp_words:
            union.update(lcs_words(rw, hw))
    return _f_measure(len(union), n_ref, n_hyp)


_ZH_END = re.compile(r"([。！？?])([^”’])")
_ZH_ELLIPSIS_DOTS = re.compile(r"(\.{6})([^”’])")
_ZH_ELLIPSIS = re.compile(r"(…{2})([^”’])")
_ZH_QUOTE_END = re.compile(r"([。！？?][”’])([^，。！？?])")


def zh_sentences(text: str) -> list[str]:
    """Chinese sentence cut as `rouge_chinese` does it (end punctuation, ellipses, closing quotes)."""
    for pattern in (_ZH_END, _ZH_ELLIPSIS_DOTS, _ZH_ELLIPSIS, _ZH_QUOTE_END):
        text = pattern.sub("\\1\n\\2", text)
    pieces = text.rstrip().split("\n")
    return [" ".join(piece.split()) for piece in pieces if len(piece) > 0]


def rouge_l_zh(hyp: str, ref: str) -> float:
    """Plain-LCS ROUGE-L F of space-joined jieba tokens (`rouge_chinese` 1.0.3)."""
    hyp_sents, ref_sents = zh_sentences(hyp), zh_sentences(ref)
    if not hyp_sents or not ref_sents:
        return 0.0
    hyp_words = [w for s in hyp_sents for w in s.split(" ")]
    ref_words = [w for s in ref_sents for w in s.split(" ")]
    return _f_measure(lcs_length(ref_words, hyp_words), len(ref_words), len(hyp_words))


def rouge_l(hyp: str, ref: str, language: str = "en") -> float:
    """Official ROUGE-L F of one raw report pair (preprocessing included)."""
    hyp = rouge_text(prepare_hypothesis(hyp, language), language)
    ref = rouge_text(ref, language)
    return rouge_l_zh(hyp, ref) if language == "zh" else rouge_l_en(hyp, ref)


class RougeL(SampleMeanMetric):
    name = "rouge_l"

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        per_sample: list[float | None] = [rouge_l(h, r, lang) for h, r, lang in zip(hyps, refs, langs, strict=True)]
        return MetricResult(self.name, per_sample, self.aggregate(per_sample),
                            info={"definition": "ROUGE-L F (EN: rouge 1.0.1 union-LCS; ZH: rouge_chinese LCS)"})


def _words(text: str, language: str) -> list[str]:
    sentences = zh_sentences(text) if language == "zh" else en_sentences(text)
    return [w for s in sentences for w in s.split(" ")]


def rouge_n(hyp: str, ref: str, n: int, language: str = "en") -> float:
    """Official ROUGE-N F of one raw report pair (preprocessing included; 0 for an empty side)."""
    hyp = rouge_text(prepare_hypothesis(hyp, language), language)
    ref = rouge_text(ref, language)
    hyp_words, ref_words = _words(hyp, language), _words(ref, language)
    if not hyp_words or not ref_words:
        return 0.0
    hyp_grams = {tuple(hyp_words[i:i + n]) for i in range(len(hyp_words) - n + 1)}
    ref_grams = {tuple(ref_words[i:i + n]) for i in range(len(ref_words) - n + 1)}
    overlap = len(hyp_grams & ref_grams)
    precision = overlap / len(hyp_grams) if hyp_grams else 0.0
    recall = overlap / len(ref_grams) if ref_grams else 0.0
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


class _RougeN(SampleMeanMetric):
    n = 1

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        per_sample: list[float | None] = [rouge_n(h, r, self.n, lang) for h, r, lang in zip(hyps, refs, langs, strict=True)]
        return MetricResult(self.name, per_sample, self.aggregate(per_sample),
                            info={"definition": f"ROUGE-{self.n} F (set n-grams, as rouge 1.0.1 / rouge_chinese 1.0.3)"})


class Rouge1(_RougeN):
    name = "rouge_1"
    n = 1


class Rouge2(_RougeN):
    name = "rouge_2"
    n = 2
