"""CIDEr (plain, not CIDEr-D): TF-IDF weighted n-gram cosine, n = 1..4, averaged over n, times 10.

Text: the official ROUGE strings (lower-cased text; jieba tokens joined by spaces for Chinese).
Tokens: under the official protocol, the Stanford PTB tokenisation `cidereval` applies, punctuation
removed (`echocxr.metrics.ptb_tokenizer`); under the raw protocol, whitespace tokens (echocxr's
earlier behaviour, kept so old runs stay comparable).
Document frequencies: by default those of the evaluated references (CIDEr's "corpus" mode):
df(g) = number of references containing n-gram g, idf = log(N) - log(max(1, df)); scores then depend
on the evaluated set, so compare runs only on the same references. The official run uses the
MS-COCO validation table that `cidereval` ships (not available offline); give such a table with
`df_file` (`--cider-df`): cidereval's pickle {"ref_len": log N, "df": {n-gram tuple: count}} (read
without running code) or the same as JSON {"ref_len": x, "df": [[[word, ...], count], ...]}.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from echocxr.metrics.base import MetricResult, check_pairs, languages_for, mean_or_none
from echocxr.metrics.cider_df import DfTable, load_df_table
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
                 max_n: int = MAX_N, table: DfTable | None = None) -> list[float]:
    """Per-pair CIDEr of tokenised pairs; document frequencies from `refs`, or from `table`."""
    ref_counts = [ngram_counts(r, max_n) for r in refs]
    if table is None:
        df: Counter = Counter()
        for counts in ref_counts:
            df.update(counts.keys())
        log_n = math.log(float(len(refs))) if refs else 0.0
    else:
        df, log_n = Counter(table.df), table.log_n
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

    def __init__(self, protocol: str = "official", cider_df: str | None = None, **_: object) -> None:
        self.ptb = protocol != "raw"
        self.table = load_df_table(cider_df) if cider_df else None

    def tokenise(self, hyps: list[str], refs: list[str], langs: list[str]) -> tuple[list[list[str]], list[list[str]]]:
        hyp_text = [rouge_text(prepare_hypothesis(h, lang), lang) for h, lang in zip(hyps, langs, strict=True)]
        ref_text = [rouge_text(r, lang) for r, lang in zip(refs, langs, strict=True)]
        if not self.ptb:
            return [h.split() for h in hyp_text], [r.split() for r in ref_text]
        from echocxr.metrics.ptb_tokenizer import cider_tokens

        # as cidereval: the hypotheses are tokenised as one text, the references as another
        return cider_tokens(hyp_text), cider_tokens(ref_text)

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        hyp_tokens, ref_tokens = self.tokenise(hyps, refs, langs)
        per_sample: list[float | None] = list(cider_scores(hyp_tokens, ref_tokens, table=self.table))
        df = (f"evaluated reference corpus ({len(refs)} reports)" if self.table is None
              else f"table {self.table.source} ({len(self.table.df)} n-grams)")
        return MetricResult(self.name, per_sample, mean_or_none(per_sample),
                            info={"definition": "plain CIDEr, n=1..4, x10",
                                  "tokens": "PTB (Stanford 3.4.1 rules), punctuation removed" if self.ptb
                                  else "whitespace",
                                  "document_frequencies": df})

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        return mean_or_none(per_sample)
