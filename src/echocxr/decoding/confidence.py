"""Token confidence for the reader: the report as text pieces with their confidence, and a per-sentence summary.

A token's confidence is its probability when it was committed (`Generation.token_confidences`): under the
distribution it was drawn from, at the step that committed it. It points a reviewer at the words the model
was least sure of; it is not a calibrated probability that the words are wrong.

Pieces: tokens are detokenized incrementally (a window of recent tokens, as streaming detokenizers do, so a
report costs O(tokens) decodes), and a token whose text is not visible yet (part of a multi-byte character,
a special token, white space) joins the next piece; a piece's confidence is the lowest of its
tokens'. `report_pieces` fits the pieces to the final report text, so they always concatenate to it. The CLI,
the server's JSON, its SSE events and the web page all use this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes an incomplete character to
DIGITS = 4  # confidences are rounded to this in JSON
_ZH_SENTENCE = re.compile(r"[^。！？!?；;]*[。！？!?；;]*")


@dataclass(frozen=True)
class Piece:
    """A stretch of report text and the confidences of the tokens that wrote it."""

    text: str
    confidences: tuple[float, ...]

    @property
    def confidence(self) -> float | None:
        """The lowest of its tokens' (a piece is as unsure as its least sure token); None when none is known."""
        return min(self.confidences) if self.confidences else None

    def to_json(self) -> dict:
        conf = self.confidence
        return {"text": self.text, "confidence": None if conf is None else round(conf, DIGITS)}


class PieceStream:
    """Committed tokens in, visible text pieces out, as they arrive (one per request while streaming)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.start = 0  # window start: the tokens of the last emitted piece give the next one its context
        self.read = 0  # tokens before this are shown
        self.before = ""  # decode(ids[start:read])
        self.pending: list[float] = []  # confidences of tokens not shown yet
        self.text = ""  # all text emitted so far

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def add(self, ids: Iterable[int], confidences: Iterable[float]) -> list[Piece]:
        """The pieces these tokens complete (fewer than tokens when a character spans several)."""
        out = []
        for token, conf in zip(ids, confidences, strict=True):
            self.ids.append(int(token))
            self.pending.append(float(conf))
            after = self._decode(self.ids[self.start:])
            if after.endswith(REPLACEMENT) or not after.startswith(self.before):
                continue  # an incomplete character: wait for its last byte
            piece = after[len(self.before):]
            if not self.text:
                piece = piece.lstrip()  # the report text is stripped
            if not piece or piece.isspace():
                continue  # nothing visible yet: white space joins the next piece (the report is stripped)
            out.append(Piece(piece, tuple(self.pending)))
            self.text += piece
            self.pending = []
            self.start, self.read = self.read, len(self.ids)
            self.before = self._decode(self.ids[self.start:self.read])
        return out

    def finish(self, text: str) -> list[Piece]:
        """What the pieces still owe the final report `text` (held-back bytes), with the pending tokens."""
        if not text.startswith(self.text) or len(text) == len(self.text):
            return []
        rest, self.text = text[len(self.text):], text
        pending, self.pending = self.pending, []
        return [Piece(rest, tuple(pending))]


def report_pieces(tokenizer, token_ids: Sequence[int], confidences: Sequence[float], text: str) -> list[Piece]:
    """The report `text` (as decoded and stripped by the engine) as pieces that concatenate to it exactly."""
    if len(token_ids) != len(confidences):
        raise ValueError(f"{len(token_ids)} tokens but {len(confidences)} confidences")
    stream = PieceStream(tokenizer)
    pieces = stream.add(token_ids, confidences)
    kept, pos = 0, 0
    for p in pieces:
        if not text.startswith(p.text, pos):  # the final text differs (a strip, a tokenizer clean-up): lump the rest
            break
        kept, pos = kept + 1, pos + len(p.text)
    fitted = pieces[:kept]
    rest = text[pos:]
    if rest:
        confs = tuple(c for p in pieces[kept:] for c in p.confidences) + tuple(stream.pending)
        fitted.append(Piece(rest, confs or tuple(confidences)))
    return fitted


def sentence_spans(text: str, language: str | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence: the RaTEScore splitter for English, end punctuation (。！？；) for Chinese."""
    from echocxr.data.sections import detect_language

    if (language or detect_language(text)) == "zh":
        spans = []
        for m in _ZH_SENTENCE.finditer(text):
            b, e = m.span()
            chunk = text[b:e]
            if chunk.strip():
                b += len(chunk) - len(chunk.lstrip())
                spans.append((b, b + len(chunk.strip())))
        return spans
    from echocxr.metrics.sentences import split_sentence_spans

    return split_sentence_spans(text)


def sentence_summary(text: str, pieces: Sequence[Piece], language: str | None = None) -> list[dict]:
    """Each sentence's text, span, and the mean and lowest confidence of the tokens that wrote it (the tokens
    of every piece overlapping the sentence)."""
    bounds, pos = [], 0
    for p in pieces:
        bounds.append((pos, pos + len(p.text)))
        pos += len(p.text)
    out = []
    for b, e in sentence_spans(text, language):
        confs = [c for p, (pb, pe) in zip(pieces, bounds, strict=True) if pb < e and pe > b for c in p.confidences]
        if not confs:
            continue
        out.append({"text": text[b:e], "start": b, "end": e,
                    "mean_confidence": round(sum(confs) / len(confs), DIGITS),
                    "min_confidence": round(min(confs), DIGITS)})
    return out


def confidence_fields(tokenizer, generation, language: str | None = None) -> dict:
    """`pieces` and `sentences` of a Generation, for JSON (CLI, server responses, the web page); sentences
    are split by the language the report is written in unless `language` says otherwise."""
    pieces = report_pieces(tokenizer, generation.token_ids, generation.token_confidences, generation.text)
    return {"pieces": [p.to_json() for p in pieces],
            "sentences": sentence_summary(generation.text, pieces, language)}
