"""RaTEScore, positive-only variant used by ECHO (ECHO-SPEC §7), around pluggable local models.

Pipeline per report pair:
1. Sentences as medspacy's PyRuSH cuts them in the official code (`echocxr.metrics.sentences`, equal to
   it on real reports; sentences without words or shorter than 3 characters are dropped, as there).
2. NER with a token-classification model (official: RaTE-NER-Deberta), labels B-/I- of ABNORMALITY,
   NON-ABNORMALITY, DISEASE, NON-DISEASE, ANATOMY and O; spans are decoded from the argmax labels by
   the official state machine (`decode_spans`), entity text = tokenizer.convert_tokens_to_string(span).
3. Entity embeddings = [CLS] of an encoder (official: BioLORD-2023-C), max 30 tokens.
4. For each entity of one side: its most similar entity of the other side by cosine s (ties broken as
   `torch.topk` breaks them, as officially), weight
   w = W[type, matched type], negation-pair factor t (0.36116 for a positive/negative pair of
   ABNORMALITY/DISEASE types, else 1); side score = sum(s*w*t) / sum(w) (0 when sum(w) = 0).
   Report score = F1 of both sides' scores (0 when they sum to 0).
ECHO's change ("positive" RaTEScore): the ANATOMY, NON-ABNORMALITY and NON-DISEASE rows of W are zero,
so only abnormal findings and diseases are scored, and a report with no entity on either side scores 0.1.
The pure logic (span decoding, weighting, fallback) lives in plain functions testable without models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from echocxr.errors import UserError
from echocxr.metrics.base import MetricResult, SampleMeanMetric, check_pairs
from echocxr.metrics.sentences import split_sentences

ENTITY_TYPES = ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")

# RaTEScore's type-affinity weights (its "long" matrix): _LONG[type of the entity being scored][type of
# its best match]. Values as published with RaTEScore.
_LONG: dict[str, dict[str, float]] = {
    "ABNORMALITY": {"ABNORMALITY": 0.4276119164393705, "ANATOMY": 0.6240929990607657,
                    "DISEASE": 0.0034478181112993847, "NON-ABNORMALITY": 0.5431049700217344,
                    "NON-DISEASE": 0.27005425386213877},
    "ANATOMY": {"ABNORMALITY": 0.7487824274337533, "ANATOMY": 0.2856134859160784,
                "DISEASE": 0.4592143222158069, "NON-ABNORMALITY": 0.02097055139911715,
                "NON-DISEASE": 0.00013736314126696204},
    "DISEASE": {"ABNORMALITY": 0.8396510075734789, "ANATOMY": 0.9950209388542061,
                "DISEASE": 0.8460555030578727, "NON-ABNORMALITY": 0.9820689020512646,
                "NON-DISEASE": 0.3789136708096537},
    "NON-ABNORMALITY": {"ABNORMALITY": 0.16546764653692908, "ANATOMY": 0.018670610691852826,
                        "DISEASE": 0.719397354576018, "NON-ABNORMALITY": 0.0009357166071730684,
                        "NON-DISEASE": 0.0927333564267591},
    "NON-DISEASE": {"ABNORMALITY": 0.7759420231214385, "ANATOMY": 0.1839139293714062,
                    "DISEASE": 0.10073046076318157, "NON-ABNORMALITY": 0.03860183811876373,
                    "NON-DISEASE": 0.34065681486566446},
}
#: penalty when an entity's best match has the opposite polarity (ECHO uses RaTEScore's "short" value)
NEG_WEIGHT = 0.3611577852354489
#: score of a report pair where either side has no entity (ECHO's change)
EMPTY_SIDE_SCORE = 0.1
ZERO_ROWS = ("ANATOMY", "NON-ABNORMALITY", "NON-DISEASE")
NEGATION_PAIRS = frozenset({
    ("NON-DISEASE", "DISEASE"), ("NON-ABNORMALITY", "ABNORMALITY"),
    ("DISEASE", "NON-DISEASE"), ("ABNORMALITY", "NON-ABNORMALITY"),
    ("NON-DISEASE", "ABNORMALITY"), ("NON-ABNORMALITY", "DISEASE"),
    ("DISEASE", "NON-ABNORMALITY"), ("ABNORMALITY", "NON-DISEASE"),
})


def echo_weights() -> dict[tuple[str, str], float]:
    """W of the positive-only variant: RaTEScore's matrix with the ANATOMY/NON-* rows set to zero."""
    return {(a, b): (0.0 if a in ZERO_ROWS else w) for a, row in _LONG.items() for b, w in row.items()}


def decode_spans(tokens: Sequence[str], labels: Sequence[str],
                 skip: Sequence[str] = ("[CLS]", "[SEP]")) -> list[tuple[int, int, str]]:
    """Entity spans (first, last token index, type) from per-token BIO labels, official semantics.

    `labels` may be longer than `tokens` (labels of padding); the label after a token decides whether
    a span ends there. Quirks kept on purpose: an I- label directly after O opens no span, a span is
    closed only by a following B- or O label, and a span still open at the end runs to the token before
    the final special token.
    """
    spans: list[tuple[int, int, str]] = []
    start: int | None = None
    end: int | None = None
    etype: str | None = None
    for i, (token, label) in enumerate(zip(tokens, labels[: len(tokens)], strict=False)):
        if token in skip or label == "O" or i >= len(labels) - 1:
            continue
        nxt = labels[i + 1]
        if label.startswith("B-"):
            if nxt.startswith("I-"):
                start, etype = i, label[2:]
            elif nxt.startswith("B-"):
                start = end = i
                spans.append((i, i, label[2:]))
                etype = label[2:]
            elif nxt.startswith("O"):
                spans.append((i, i, label[2:]))
                start = end = etype = None
        elif label.startswith("I-"):
            if nxt.startswith("B-"):
                end = i
                if start is not None:
                    spans.append((start, i, etype or label[2:]))
                start, etype = i, label[2:]
            elif nxt.startswith("O"):
                end = i
                if start is not None:
                    spans.append((start, i, etype or label[2:]))
                start = end = etype = None
    if start is not None and end is None:
        spans.append((start, len(tokens) - 2, etype or ""))
    return spans


def best_match(row: Sequence[float]) -> int:
    """Index of the largest similarity, ties broken as the official code does: by `torch.topk(k=1)`
    on the float32 row (which, on CPU, does not always return the first of equal values)."""
    import torch

    return int(torch.topk(torch.as_tensor(list(row), dtype=torch.float32), 1, largest=True).indices[0])


def side_score(sim: Sequence[Sequence[float]], types_q: Sequence[str], types_k: Sequence[str],
               weights: dict[tuple[str, str], float], neg_weight: float = NEG_WEIGHT) -> float:
    """Weighted mean best-match similarity of the query entities (rows of `sim`) against the keys."""
    num = den = 0.0
    for row, tq in zip(sim, types_q, strict=True):
        j = best_match(row)
        tk = types_k[j]
        w = weights[(tq, tk)]
        t = neg_weight if (tq, tk) in NEGATION_PAIRS else 1.0
        num += row[j] * w * t
        den += w
    return num / den if den != 0 else 0.0


def pair_score(sim: Sequence[Sequence[float]], types_a: Sequence[str], types_b: Sequence[str],
               weights: dict[tuple[str, str], float] | None = None, neg_weight: float = NEG_WEIGHT,
               sim_ba: Sequence[Sequence[float]] | None = None) -> float:
    """RaTEScore of one report pair from the cosine matrix sim[a][b] of their entities (`sim_ba`: the
    other direction as computed there; the transpose of `sim` when not given)."""
    if not types_a or not types_b:
        return EMPTY_SIDE_SCORE
    weights = echo_weights() if weights is None else weights
    p = side_score(sim, types_a, types_b, weights, neg_weight)
    transposed = sim_ba if sim_ba is not None else [list(col) for col in zip(*sim, strict=True)]
    r = side_score(transposed, types_b, types_a, weights, neg_weight)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


class RaTEScore(SampleMeanMetric):
    name = "ratescore"

    def __init__(self, ratescore_ner: str | Path | None = None, ratescore_encoder: str | Path | None = None,
                 device: str | None = None, batch_size: int = 16, **_: object) -> None:
        from echocxr.metrics import models

        if not ratescore_ner or not ratescore_encoder:
            raise UserError("RaTEScore needs --ratescore-ner DIR (e.g. RaTE-NER-Deberta) and "
                            "--ratescore-encoder DIR (e.g. BioLORD-2023-C)")
        self.ner_path = models.model_dir(ratescore_ner, "RaTEScore NER")
        self.encoder_path = models.model_dir(ratescore_encoder, "RaTEScore encoder")
        self.device_option = device
        self.batch_size = int(batch_size)
        self.weights = echo_weights()
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from echocxr.metrics import models

            device = models.resolve_device(self.device_option)
            ner_tok = models.load_tokenizer(self.ner_path, "RaTEScore NER")
            ner = models.load_model(self.ner_path, "RaTEScore NER", "AutoModelForTokenClassification", device)
            id2label = {int(k): v for k, v in ner.config.id2label.items()}
            unknown = sorted({v[2:] for v in id2label.values() if v != "O"} - set(ENTITY_TYPES))
            if unknown or any(v != "O" and v[:2] not in ("B-", "I-") for v in id2label.values()):
                raise UserError(f"RaTEScore NER model {self.ner_path} has labels outside B-/I- of "
                                f"{', '.join(ENTITY_TYPES)} and O: {unknown or list(id2label.values())}")
            enc_tok = models.load_tokenizer(self.encoder_path, "RaTEScore encoder")
            enc = models.load_model(self.encoder_path, "RaTEScore encoder", "AutoModel", device)
            self._loaded = (ner_tok, ner, id2label, enc_tok, enc, device)
        return self._loaded

    def entities(self, text: str) -> list[tuple[str, str]]:
        """(entity text, type) pairs of one report, sentence by sentence."""
        import torch

        ner_tok, ner, id2label, _, _, device = self._load()
        sentences = split_sentences(text)
        skip = ["[CLS]", "[SEP]"] + [t for t in (ner_tok.cls_token, ner_tok.sep_token) if t]
        out: list[tuple[str, str]] = []
        for start in range(0, len(sentences), self.batch_size):
            batch = sentences[start:start + self.batch_size]
            enc = ner_tok(batch, max_length=512, padding=True, truncation=True, return_tensors="pt").to(device)
            with torch.inference_mode():
                pred = ner(**enc).logits.argmax(-1).cpu().tolist()
            lengths = enc["attention_mask"].sum(1).cpu().tolist()
            ids = enc["input_ids"].cpu().tolist()
            for row_ids, row_pred, n in zip(ids, pred, lengths, strict=True):
                tokens = ner_tok.convert_ids_to_tokens(row_ids[:n])
                labels = [id2label[k] for k in row_pred]
                for s, e, etype in decode_spans(tokens, labels, skip):
                    out.append((ner_tok.convert_tokens_to_string(tokens[s:e + 1]), etype))
        return out

    def embed(self, entity_texts: list[str]):
        """[CLS] embeddings (float32, CPU) of one report's entities, one padded batch as officially."""
        import torch

        _, _, _, enc_tok, enc, device = self._load()
        batch = enc_tok(entity_texts, truncation=True, padding=True, max_length=30, return_tensors="pt").to(device)
        with torch.inference_mode():
            return enc(**batch).last_hidden_state[:, 0, :].float().cpu()

    def similarity(self, ents_a: list[tuple[str, str]],
                   ents_b: list[tuple[str, str]]) -> tuple[list[list[float]], list[list[float]]]:
        """Cosines a->b and b->a, each row computed as the official code does (keys @ query, float32)."""
        import torch
        import torch.nn.functional as F

        a = F.normalize(self.embed([e for e, _ in ents_a]), p=2, dim=1)
        b = F.normalize(self.embed([e for e, _ in ents_b]), p=2, dim=1)
        ab = [torch.matmul(b, q).tolist() for q in a]
        ba = [torch.matmul(a, q).tolist() for q in b]
        return ab, ba

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        per_sample: list[float | None] = []
        hyp_entities, ref_entities = [], []
        for hyp, ref in zip(hyps, refs, strict=True):
            eh, er = self.entities(hyp), self.entities(ref)
            hyp_entities.append(eh)
            ref_entities.append(er)
            if not eh or not er:
                per_sample.append(EMPTY_SIDE_SCORE)
                continue
            ab, ba = self.similarity(eh, er)
            per_sample.append(pair_score(ab, [t for _, t in eh], [t for _, t in er], self.weights, sim_ba=ba))
        return MetricResult(
            self.name, per_sample, self.aggregate(per_sample),
            info={"ner": str(self.ner_path), "encoder": str(self.encoder_path), "variant": "positive-only (ECHO)",
                  "sentences": "PyRuSH rules (medspacy 1.3.1), re-implemented",
                  "note": "official scores English text (Chinese reports are translated first)"},
            sample_extra={"ratescore_hyp_entities": hyp_entities, "ratescore_ref_entities": ref_entities})
