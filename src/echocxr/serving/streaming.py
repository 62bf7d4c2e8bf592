"""Engine events -> what a streaming client sees: per-step block states and committed-block text deltas.

A `StreamState` belongs to one request and runs on the decode thread. For every denoising step it can emit
a `step` payload (the block's tokens, masked ones flagged, newly committed ones flagged: what the web page
draws) and, when a block has no masked position left, a `block` payload with the text that block added.
Text deltas come from decoding the whole committed prefix and holding back a trailing U+FFFD, so a
character split across byte-level tokens is sent once, whole; the deltas concatenate to the final report.
"""

from __future__ import annotations

import json

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
        self.sent = ""  # text already sent in `block` payloads
        self.ended = False  # <eos> committed: later blocks are not part of the report
        self.blocks = 0
        self.last_block = -1  # engine block index of the last finalised block (later steps of it are ignored)

    def on_step(self, ev: DecodeEvent) -> list[tuple[str, dict]]:
        if self.ended or ev.block <= self.last_block:
            return []  # after <eos>, or positions past max_new_tokens still being denoised
        out: list[tuple[str, dict]] = []
        pos = [(i, t) for i, t in enumerate(ev.tokens)
               if 0 <= ev.response_offset + i < self.max_new_tokens]  # skip prompt leftovers in block 0
        if self.steps and any(ev.committed[i] for i, _ in pos):
            out.append(("step", {
                "block": ev.block, "step": ev.step,
                "tokens": [{"text": "" if t == self.mask_id else self._piece(t), "masked": t == self.mask_id,
                            "new": bool(ev.committed[i])} for i, t in pos],
            }))
        if pos and all(t != self.mask_id for _, t in pos):  # the block is final
            self.last_block = ev.block
            new = []
            for _, t in pos:
                if t in self.eos:
                    self.ended = True
                    break
                new.append(t)
            self.ids.extend(new)
            delta = self._delta()
            out.append(("block", {"index": self.blocks, "text": delta, "tokens": len(new) + int(self.ended)}))
            self.blocks += 1
        return out

    def on_done(self, gen: Generation) -> list[tuple[str, dict]]:
        """Whatever text the deltas still owe the final report (held-back bytes, a final strip)."""
        rest = gen.text[len(self.sent):] if gen.text.startswith(self.sent) else ""
        self.sent = gen.text
        return [("block", {"index": self.blocks, "text": rest, "tokens": 0})] if rest else []

    def _piece(self, token_id: int) -> str:
        if token_id in self.eos:
            return ""
        return self.tok.decode([token_id], skip_special_tokens=True)

    def _delta(self) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        text = text.rstrip("\ufffd")  # an incomplete multi-byte character: send it when it is whole (or at done)
        if not text.startswith(self.sent):
            return ""
        delta = text[len(self.sent):]
        self.sent = text
        return delta


def sse(data: dict | str, event: str | None = None) -> str:
    """One Server-Sent Event; `data` is JSON-encoded unless it is already a string."""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in body.split("\n")) + "\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
