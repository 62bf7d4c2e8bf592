"""Token confidence: what the decoders record (checked against separate forwards) and the pieces/sentences of it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from echocxr.decoding.confidence import Piece, PieceStream, report_pieces, sentence_spans, sentence_summary
from echocxr.decoding.engine import DecodeConfig
from echocxr.decoding.fast_engine import FastPath
from tests.test_engine import vl_prompts

PATHS = ["reference", "fast"]


def generator(engine, path):
    return engine.generate if path == "reference" else FastPath(engine).generate


# ---- the decoders ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("path", PATHS)
def test_ar_confidence_is_the_chosen_tokens_probability_in_a_separate_forward(text_engine, path, temperature):
    """AR: token t's confidence = softmax(logits / T)[token t] of a plain forward over prompt + tokens[:t]."""
    prompt = text_engine.encode(None, instruction="Write a report.")
    cfg = DecodeConfig(decoder="ar", max_new_tokens=8, temperature=temperature, seed=5)
    gen = generator(text_engine, path)([prompt], cfg)[0]
    assert len(gen.token_confidences) == len(gen.token_ids) > 2
    ids = prompt.input_ids.tolist()
    for t, (tok, conf) in enumerate(zip(gen.token_ids, gen.token_confidences, strict=True)):
        with torch.no_grad():
            logits = text_engine.model(input_ids=torch.tensor([ids + gen.token_ids[:t]])).logits[0, -1].float()
        logits[text_engine.suppress] = float("-inf")  # the engine never emits the mask token
        probs = torch.softmax(logits / (temperature or 1.0), dim=-1)
        if temperature == 0:
            assert tok == int(probs.argmax())  # greedy: the confidence is the softmax maximum
        assert conf == pytest.approx(float(probs[tok]), abs=1e-5)


BLOCK_DECODERS = [
    dict(decoder="onestep", fused=True),
    dict(decoder="onestep", fused=False),
    dict(decoder="multistep", steps=4, remasking="sequential"),  # one commit a step: later steps must not count
    dict(decoder="multistep", steps=2, remasking="low_confidence_static"),
    dict(decoder="multistep", steps=4, remasking="low_confidence_dynamic", threshold=0.01),
    dict(decoder="onestep", temperature=0.8, seed=2),  # sampled: the probability under the tempered softmax
]


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("dec", BLOCK_DECODERS, ids=lambda d: "-".join(str(v) for v in d.values()))
def test_block_confidence_is_the_probability_at_the_committing_step(vl_engine, images, dec, prefill):
    """Each position's confidence = the probability of its token in the step that committed it, computed here
    from the recompute oracle's step logits (a full forward every step), for the cached engine and the fast path."""
    prompts = vl_prompts(vl_engine, images)[: 1 if dec.get("temperature") else 2]  # sampling: batch 1 matches
    cfg = DecodeConfig(block_length=4, max_new_tokens=12, prefill=prefill, **dec)
    temperature = cfg.temperature or 1.0
    expected: dict[tuple[int, int], float] = {}  # (sample, response index) -> probability when committed

    def hook(ev):
        if ev.kind != "step":
            return
        probs = torch.softmax(ev.logits / temperature, dim=-1)
        for i, (tok, new) in enumerate(zip(ev.tokens, ev.committed, strict=True)):
            if new:
                if cfg.temperature == 0:
                    assert tok == int(probs[i].argmax())
                assert ev.confidences[i] == pytest.approx(float(probs[i, tok]), abs=1e-5)  # the event carries it
                assert (ev.sample, ev.response_offset + i) not in expected  # committed once
                expected[(ev.sample, ev.response_offset + i)] = float(probs[i, tok])

    oracle = vl_engine.generate(prompts, replace(cfg, use_cache=False, record_logits=True), on_event=hook)
    for path in PATHS:
        outs = generator(vl_engine, path)(prompts, cfg)
        assert [o.token_ids for o in outs] == [o.token_ids for o in oracle]
        for s, o in enumerate(outs):
            assert len(o.token_confidences) == len(o.token_ids) > 0
            want = [expected[(s, j)] for j in range(len(o.token_ids))]
            torch.testing.assert_close(torch.tensor(o.token_confidences), torch.tensor(want), atol=1e-5, rtol=0)


# ---- pieces and sentences -----------------------------------------------------------------------------------

def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_pieces_concatenate_and_group_a_split_character(tokenizer):
    text = "Findings: The heart is normal. 心影增大，右侧胸腔积液。"  # characters outside the tiny vocabulary
    ids = encode(tokenizer, text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # byte-level tokens split a character
    confs = [round(0.05 + 0.9 * ((7 * i) % len(ids)) / len(ids), 4) for i in range(len(ids))]
    pieces = report_pieces(tokenizer, ids, confs, text)
    assert "".join(p.text for p in pieces) == text and not any("\ufffd" in p.text for p in pieces)
    # pieces take consecutive tokens in order, and a piece is as sure as its least sure token
    assert [c for p in pieces for c in p.confidences] == confs
    assert all(p.confidence == min(p.confidences) for p in pieces)
    grouped = [p for p in pieces if len(p.confidences) > 1]
    assert grouped and all(len(p.text) <= len(p.confidences) for p in grouped)
    assert pieces[0].text == "Findings" and pieces[0].confidences == (confs[0],)


def test_pieces_fit_the_stripped_report_and_streaming_gives_the_same(tokenizer):
    raw = "  Impression: no acute disease.  "
    ids = encode(tokenizer, raw)
    confs = [0.9 - 0.01 * i for i in range(len(ids))]
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()  # what the engine reports
    pieces = report_pieces(tokenizer, ids, confs, text)
    assert "".join(p.text for p in pieces) == text
    assert pieces[0].confidences[0] == confs[0]  # the leading blank joined the first word
    stream = PieceStream(tokenizer)
    streamed = [p for k in range(0, len(ids), 3) for p in stream.add(ids[k:k + 3], confs[k:k + 3])]
    streamed += stream.finish(text)
    assert "".join(p.text for p in streamed) == text


def test_report_pieces_refuse_misaligned_confidences(tokenizer):
    with pytest.raises(ValueError, match="3 tokens but 2 confidences"):
        report_pieces(tokenizer, [1, 2, 3], [0.5, 0.5], "x")


def test_sentence_summary_english_and_chinese():
    en = [Piece("Findings: The heart", (0.9, 0.8, 0.7)), Piece(" is normal.", (0.6, 1.0)), Piece(" No", (0.2,)),
          Piece(" effusion.", (0.4, 0.9))]
    text = "".join(p.text for p in en)
    rows = sentence_summary(text, en)
    assert [r["text"] for r in rows] == ["Findings: The heart is normal.", "No effusion."]
    assert (rows[0]["mean_confidence"], rows[0]["min_confidence"]) == (0.8, 0.6)
    assert (rows[1]["mean_confidence"], rows[1]["min_confidence"]) == (0.5, 0.2)
    assert text[rows[1]["start"]:rows[1]["end"]] == "No effusion."

    zh = [Piece("心影增大", (0.5, 0.7)), Piece("。未见", (0.9, 0.3)), Piece("积液。", (0.6,))]  # a piece in two sentences
    text = "".join(p.text for p in zh)
    rows = sentence_summary(text, zh)
    assert [r["text"] for r in rows] == ["心影增大。", "未见积液。"]
    assert (rows[0]["mean_confidence"], rows[0]["min_confidence"]) == (0.6, 0.3)
    assert (rows[1]["mean_confidence"], rows[1]["min_confidence"]) == (0.6, 0.3)


def test_sentence_spans_follow_the_language():
    assert sentence_spans("所见：心影增大。结论：心影扩大；右侧积液。") == [(0, 8), (8, 16), (16, 21)]
    en = "Findings: A 4.5 cm nodule. No effusion."
    assert [en[b:e] for b, e in sentence_spans(en)] == ["Findings: A 4.5 cm nodule.", "No effusion."]
