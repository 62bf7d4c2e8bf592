"""Engine events -> streamed text: deltas concatenate to the report, never split a character, stop at <eos>."""

from __future__ import annotations

from echocxr.decoding.confidence import report_pieces
from echocxr.decoding.results import DecodeEvent, Generation
from echocxr.serving.streaming import StreamState, sse


def feed(state: StreamState, ids: list[int], mask: int, L: int = 4, offset: int = 0,
         confs: list[float] | None = None) -> list[tuple[str, dict]]:
    """Simulate a multi-step decode: each block is revealed one position per step, left to right."""
    out = []
    for b, start in enumerate(range(offset, len(ids), L)):
        block = ids[start:start + L]
        for s in range(len(block)):
            cur = block[: s + 1] + [mask] * (len(block) - s - 1)
            committed = [i == s for i in range(len(block))]
            conf = None if confs is None else confs[start:start + s + 1] + [0.0] * (len(block) - s - 1)
            out += state.on_step(DecodeEvent("step", 0, b, s, cur, committed, response_offset=start,
                                             confidences=conf))
    return out


def test_chinese_deltas_are_whole_characters(tokenizer):
    text = "所见：心影增大，右侧胸腔积液。结论：心脏扩大。"  # characters outside the tiny vocabulary
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # byte-level pieces do split characters
    state = StreamState(tokenizer, tokenizer.mask_token_id, [tokenizer.eos_token_id], max_new_tokens=512, steps=True)
    events = feed(state, ids, tokenizer.mask_token_id)
    deltas = [d["text"] for k, d in events if k == "block"]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    steps = [d for k, d in events if k == "step"]
    assert steps[0]["tokens"][1]["masked"] and steps[0]["tokens"][0]["new"]
    assert state.on_done(Generation(text, ids, len(ids), 1, 0, 0, "length")) == []  # nothing left owed


def test_stream_stops_at_eos_and_respects_the_token_limit(tokenizer):
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    words = tokenizer("Findings: The lungs are clear.", add_special_tokens=False)["input_ids"]
    state = StreamState(tokenizer, mask, [eos], max_new_tokens=512)
    events = feed(state, words + [eos] + words, mask)
    assert "".join(d["text"] for k, d in events if k == "block") == "Findings: The lungs are clear."
    assert not [e for e in events if e[0] == "step"]  # per-step states only when asked for

    limited = StreamState(tokenizer, mask, [eos], max_new_tokens=3)
    events = feed(limited, words, mask)
    assert limited.ids == words[:3] and sum(k == "block" for k, _ in events) == 1


def test_prompt_leftovers_in_the_first_block_are_not_report_text(tokenizer):
    mask = tokenizer.mask_token_id
    words = tokenizer("Impression: normal.", add_special_tokens=False)["input_ids"]
    state = StreamState(tokenizer, mask, [tokenizer.eos_token_id], max_new_tokens=512, steps=True)
    prompt_tail = [7, 8]  # block_grid prefill: the prompt's last tokens open the first generated block
    ev = DecodeEvent("step", 0, 0, 0, prompt_tail + words[:2], [False, False, True, True], response_offset=-2)
    out = state.on_step(ev)
    assert len(out[0][1]["tokens"]) == 2 and out[1][0] == "block" and state.ids == words[:2]


def test_events_carry_the_confidence_of_their_tokens(tokenizer):
    text = "所见：心影增大，右侧胸腔积液。结论：心脏扩大。"  # split characters: their tokens share one piece
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    confs = [round(0.1 + 0.2 * (i % 5), 4) for i in range(len(ids))]
    state = StreamState(tokenizer, tokenizer.mask_token_id, [tokenizer.eos_token_id], max_new_tokens=512, steps=True)
    events = feed(state, ids, tokenizer.mask_token_id, confs=confs)
    blocks = [d for k, d in events if k == "block"]
    assert all("".join(p["text"] for p in b["pieces"]) == b["text"] for b in blocks)
    assert [p for b in blocks for p in b["pieces"]] == [p.to_json() for p in report_pieces(tokenizer, ids, confs, text)]
    steps = [d for k, d in events if k == "step"]
    assert steps[0]["tokens"][0]["confidence"] == confs[0] and steps[0]["tokens"][1]["confidence"] is None  # masked
    assert [t["confidence"] for t in steps[3]["tokens"]] == confs[:4]  # the block's last step: all committed


def test_sse_format():
    assert sse({"a": 1}, "block") == 'event: block\ndata: {"a":1}\n\n'
    assert sse("[DONE]") == "data: [DONE]\n\n"
    assert sse("two\nlines") == "data: two\ndata: lines\n\n"
