"""METEOR as the official ECHO run computes it: NLTK `single_meteor_score` per report pair.

We call NLTK's implementation (alpha 0.9, beta 3, gamma 0.5, Porter stemmer, WordNet synonyms) on
the official tokens (see `echocxr.metrics.text.word_tokens`; jieba for Chinese) and feed it the
offline WordNet from `echocxr.metrics.wordnet` (Debian packages), so it never reaches for nltk_data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from echocxr.metrics.base import MetricResult, SampleMeanMetric, check_pairs, languages_for
from echocxr.metrics.text import prepare_hypothesis, word_tokens


class Meteor(SampleMeanMetric):
    name = "meteor"

    def __init__(self, wordnet_dir: str | Path | None = None, alpha: float = 0.9, beta: float = 3.0,
                 gamma: float = 0.5, **_: object) -> None:
        from echocxr.metrics.wordnet import find_database

        # fail at construction (before any scoring, without importing nltk) when WordNet is missing
        self.wordnet_dir = Path(wordnet_dir) if wordnet_dir else find_database()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        from nltk.stem.porter import PorterStemmer
        from nltk.translate.meteor_score import single_meteor_score

        from echocxr.metrics.wordnet import wordnet_reader

        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        wordnet = wordnet_reader(self.wordnet_dir)
        stemmer = PorterStemmer()
        per_sample: list[float | None] = []
        for hyp, ref, lang in zip(hyps, refs, langs, strict=True):
            hyp_tokens = word_tokens(prepare_hypothesis(hyp, lang), lang)
            ref_tokens = word_tokens(ref, lang)
            per_sample.append(float(single_meteor_score(
                ref_tokens, hyp_tokens, stemmer=stemmer, wordnet=wordnet,
                alpha=self.alpha, beta=self.beta, gamma=self.gamma)))
        return MetricResult(self.name, per_sample, self.aggregate(per_sample),
                            info={"definition": "nltk single_meteor_score, WordNet 3.0 offline"})
