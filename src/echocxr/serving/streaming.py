"""Engine events -> what a streaming client sees: per-step block states and committed-block text deltas.

A `StreamState` belongs to one request and runs on the decode thread. For every denoising step it can emit
a `step` payload (the block's tokens, masked ones flagged, newly committed ones flagged, committed ones with
their confidence: what the web page draws) and, when a block has no masked position left, a `block` payload
with the text that block added and that text's `pieces` with their confidence (decoding/confidence.py).
Text is detokenized incrementally, holding back an incomplete character, so a character split across
byte-level tokens is sent once, whole; the deltas concatenate to the final report.
"""

from __future__ import annotations

import json

from echocxr.decoding.confidence import DIGITS, Piece, PieceStream
from echocxr.decoding.results import DecodeEvent, Generation

MASK_GLYPH = "▒"


class StreamState:
    """One streaming request's view of the decode: what was committed and what text was already sent."""

    def __init__(self, tokenizer, mask_token_id: int, eos_token_ids: list[int], max_new_tokens: int,
                 steps: bool = False):
        self.tok = tokenizer
        self.mask_id = mask_token_id
        self.eos = set(eos_token_ids)
        self.max_new_tokens = max_new_tokens
        self.steps = steps  # also emit per-step block states (the page wants them, API clients need not)
        self.ids: list[int] = []  # committed response tokens so far, <eos> excluded
        self.pieces = PieceStream(tokenizer)  # text already sent in `block` payloads: self.pieces.text
        self.ended = False  # <eos> committed: later blocks are not part of the report
        self.blocks = 0
        self.last_block = -1  # engine block index of the last finalised block (later steps of it are ignored)

    def on_step(self, ev: DecodeEvent) -> list[tuple[str, dict]]:
        if self.ended or ev.block <= self.last_block:
            return []  # after <eos>, or positions past max_new_tokens still being denoised
        out: list[tuple[str, dict]] = []
        pos = [(i, t) for i, t in enumerate(ev.tokens)
               if 0 <= ev.response_offset + i < self.max_new_tokens]  # skip prompt leftovers in block 0
        conf = ev.confidences if ev.confidences is not None else [0.0] * len(ev.tokens)
        if self.steps and any(ev.committed[i] for i, _ in pos):
            out.append(("step", {
                "block": ev.block, "step": ev.step,
                "tokens": [{"text": "" if t == self.mask_id else self._piece(t), "masked": t == self.mask_id,
                            "new": bool(ev.committed[i]),
                            "confidence": None if t == self.mask_id else round(conf[i], DIGITS)} for i, t in pos],
            }))
        if pos and all(t != self.mask_id for _, t in pos):  # the block is final
            self.last_block = ev.block
            new, new_conf = [], []
            for i, t in pos:
                if t in self.eos:
                    self.ended = True
                    break
                new.append(t)
                new_conf.append(conf[i])
            self.ids.extend(new)
            pieces = self.pieces.add(new, new_conf)
            out.append(("block", {"index": self.blocks, "text": "".join(p.text for p in pieces),
                                  "tokens": len(new) + int(self.ended), "pieces": _json(pieces)}))
            self.blocks += 1
        return out

    def on_done(self, gen: Generation) -> list[tuple[str, dict]]:
        """Whatever text the deltas still owe the final report (held-back bytes), with its pieces."""
        rest = self.pieces.finish(gen.text)
        if not rest:
            return []
        return [("block", {"index": self.blocks, "text": rest[0].text, "tokens": 0, "pieces": _json(rest)})]

    def _piece(self, token_id: int) -> str:
        if token_id in self.eos:
            return ""
        return self.tok.decode([token_id], skip_special_tokens=True)



def _json(pieces: list[Piece]) -> list[dict]:
    return [p.to_json() for p in pieces]


def sse(data: dict | str, event: str | None = None) -> str:
    """One Server-Sent Event; `data` is JSON-encoded unless it is already a string."""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in body.split("\n")) + "\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
