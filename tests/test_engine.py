"""Exactness of the decoding engine: cache vs recompute, fused vs vanilla, batched vs alone, TPF, masks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from echocxr.backbones.loading import load_backbone
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.diffusion.masks import additive_mask, block_causal_allowed

DECODERS = [
    dict(decoder="ar"),
    dict(decoder="multistep", steps=2, remasking="low_confidence_static"),
    dict(decoder="multistep", steps=4, remasking="low_confidence_dynamic", threshold=0.01),
    dict(decoder="multistep", steps=3, remasking="sequential"),
    dict(decoder="multistep", steps=4, remasking="low_entropy_dynamic", threshold=0.5),
    dict(decoder="onestep", fused=True),
    dict(decoder="onestep", fused=False),
]


def set_sample_specific_eos(bb, prompts, cfg) -> None:
    """Make `bb`'s <eos> a token that the first sample produces and some other sample does not."""
    bb.eos_token_ids = []
    free = ReportEngine(bb).generate(prompts, cfg)
    seen = [set(o.token_ids) for o in free]
    candidates = [t for t in free[0].token_ids[2:] if any(t not in s for s in seen[1:])]
    assert candidates, "the fixture model should produce sample-specific tokens"
    bb.eos_token_ids = [candidates[0]]


def vl_prompts(engine, images):
    return [engine.encode([images[0]]), engine.encode([images[1], images[2]], lang="zh"), engine.encode([images[2]])]


def text_prompts(engine):
    return [engine.encode(None, instruction="Write a report."), engine.encode(None, lang="zh"),
            engine.encode(None, instruction="Findings please, with extra words to change the length")]


def run_recorded(engine, prompts, cfg):
    events = {}

    def hook(ev):
        if ev.kind == "step":
            events[(ev.sample, ev.block, ev.step)] = ev.logits

    outs = engine.generate(prompts, replace(cfg, record_logits=True), on_event=hook)
    return outs, events


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("dec", DECODERS, ids=lambda d: "-".join(str(v) for v in d.values()))
def test_cached_equals_uncached_vl(vl_engine, images, dec, prefill):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(block_length=4, max_new_tokens=12, prefill=prefill, **dec)
    cached, ev_c = run_recorded(vl_engine, prompts, cfg)
    plain, ev_p = run_recorded(vl_engine, prompts, replace(cfg, use_cache=False))
    assert [o.token_ids for o in cached] == [o.token_ids for o in plain]
    assert ev_c.keys() == ev_p.keys() and len(ev_c) > 0
    for k in ev_c:
        torch.testing.assert_close(ev_c[k], ev_p[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dec", DECODERS, ids=lambda d: "-".join(str(v) for v in d.values()))
def test_cached_equals_uncached_text_only(text_engine, dec):
    prompts = text_prompts(text_engine)
    cfg = DecodeConfig(block_length=4, max_new_tokens=12, **dec)
    cached, ev_c = run_recorded(text_engine, prompts, cfg)
    plain, ev_p = run_recorded(text_engine, prompts, replace(cfg, use_cache=False))
    assert [o.token_ids for o in cached] == [o.token_ids for o in plain]
    for k in ev_c:
        torch.testing.assert_close(ev_c[k], ev_p[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("L", [4, 8])
def test_fused_equals_vanilla_one_step(vl_engine, images, prefill, L):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=L, max_new_tokens=24, prefill=prefill)
    fused, ev_f = run_recorded(vl_engine, prompts, cfg)
    vanilla, ev_v = run_recorded(vl_engine, prompts, replace(cfg, fused=False))
    assert [o.token_ids for o in fused] == [o.token_ids for o in vanilla]
    assert [o.forwards for o in fused] == [o.forwards for o in vanilla]
    for k in ev_f:
        torch.testing.assert_close(ev_f[k], ev_v[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("dec", DECODERS, ids=lambda d: "-".join(str(v) for v in d.values()))
def test_batch_equals_one_by_one(vl_engine, images, dec, prefill):
    prompts = vl_prompts(vl_engine, images)
    assert len({p.length for p in prompts}) == 3  # really mixed lengths
    cfg = DecodeConfig(block_length=4, max_new_tokens=14, prefill=prefill, **dec)
    batched = vl_engine.generate(prompts, cfg)
    alone = [vl_engine.generate([p], cfg)[0] for p in prompts]
    for b, a in zip(batched, alone, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert (b.tokens, b.forwards, b.stop) == (a.tokens, a.forwards, a.stop)


def test_per_sample_eos_in_a_batch(tiny_vl_dir, images):
    """Make a token that only some samples produce the <eos>: those stop early, the rest go on."""
    bb = load_backbone(tiny_vl_dir)
    engine = ReportEngine(bb)
    prompts = vl_prompts(engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=16, prefill="response_aligned")
    set_sample_specific_eos(bb, prompts, cfg)
    engine = ReportEngine(bb)
    batched = engine.generate(prompts, cfg)
    alone = [engine.generate([p], cfg)[0] for p in prompts]
    assert batched[0].stop == "eos" and bb.eos_token_ids[0] not in batched[0].token_ids
    assert "length" in {o.stop for o in batched}
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert [o.forwards for o in batched] == [o.forwards for o in alone]
    assert batched[0].tokens == len(batched[0].token_ids) + 1  # the <eos> counts as a kept token


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("fused", [True, False])
def test_one_step_tpf_equals_block_length_without_eos(tiny_vl_dir, images, L, fused):
    bb = load_backbone(tiny_vl_dir)
    bb.eos_token_ids = []
    engine = ReportEngine(bb)
    prompts = vl_prompts(engine, images)
    outs = engine.generate(prompts, DecodeConfig(decoder="onestep", block_length=L, max_new_tokens=4 * L,
                                                 prefill="response_aligned", fused=fused))
    for o in outs:
        assert o.stop == "length" and o.tokens == 4 * L and o.forwards == 4 and o.tpf == float(L)
    ar = engine.generate(prompts, DecodeConfig(decoder="ar", max_new_tokens=10))
    assert all(o.tpf == 1.0 and o.forwards == 10 for o in ar)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mask_semantics_later_block_never_changes_earlier_logits(tiny_text_dir, attn):
    bb = load_backbone(tiny_text_dir, attn_implementation=attn)
    L, S = 4, 16
    ids = torch.randint(20, 300, (1, S), generator=torch.Generator().manual_seed(0))
    mask = additive_mask(block_causal_allowed(S, L), torch.float32)[None, None]

    def logits(x):
        with torch.no_grad():
            return bb.model(input_ids=x, attention_mask=mask, position_ids=torch.arange(S)[None]).logits

    base = logits(ids)
    later = ids.clone()
    later[0, 9] = 5  # block 2
    out = logits(later)
    torch.testing.assert_close(out[:, :8], base[:, :8], atol=0, rtol=0)  # blocks 0-1 untouched
    assert not torch.allclose(out[:, 8], base[:, 8])  # same block (position 8 sees 9)
    assert not torch.allclose(out[:, 12:], base[:, 12:])


def test_vl_positions_match_get_rope_index_with_padded_mask(vl_engine, images):
    from echocxr.decoding.layout import build_canvas

    prompts = vl_prompts(vl_engine, images)
    canvas = build_canvas(prompts, "block_grid", 4, 8, fill_id=vl_engine.bb.mask_token_id,
                          pad_id=vl_engine.pad_id, rope_index=vl_engine._rope_index)
    C = canvas.prefill_end
    ids = canvas.tokens[:, :C]
    image_id = vl_engine.model.config.image_token_id
    grids = torch.cat([p.image_grid_thw for p in prompts])
    # the prompt part that lies in [0, C) plus each sample's leftover: compare over the whole prompt span
    W = int(max(canvas.response_start))
    ids = canvas.tokens[:, :W].clone()
    valid = canvas.key_valid[:, :W] & (torch.arange(W)[None] < canvas.response_start[:, None])
    ids[~valid] = vl_engine.pad_id
    pos, _ = vl_engine.model.model.get_rope_index(ids, (ids == image_id).int(), image_grid_thw=grids,
                                                  attention_mask=valid.long())
    assert torch.equal(pos[:, valid], canvas.positions[:, :, :W][:, valid])
    # generated text continues at max+1 on all three axes
    for i in range(len(prompts)):
        s = int(canvas.response_start[i])
        nxt = int(pos[:, i][:, valid[i]].max()) + 1
        assert canvas.positions[:, i, s].tolist() == [nxt] * 3
    assert C % 4 == 0


def test_sampling_with_temperature_is_seeded(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)[:1]
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=8, temperature=1.0, top_k=20,
                       top_p=0.9, seed=3)
    a = vl_engine.generate(prompts, cfg)[0].token_ids
    b = vl_engine.generate(prompts, cfg)[0].token_ids
    assert a == b


def test_cancelled_sample_leaves_the_batch(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=16, prefill="response_aligned")
    full = vl_engine.generate(prompts, cfg)
    steps = {}

    def hook(ev):
        if ev.kind == "step":
            steps[ev.sample] = steps.get(ev.sample, 0) + 1

    outs = vl_engine.generate(prompts, cfg, on_event=hook, is_cancelled=lambda i: i == 1 and steps.get(1, 0) >= 2)
    assert outs[1].stop == "cancelled" and outs[1].forwards == 2
    assert outs[1].token_ids == full[1].token_ids[: len(outs[1].token_ids)]
    assert [outs[0].token_ids, outs[2].token_ids] == [full[0].token_ids, full[2].token_ids]


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_cancelled_ar_sample_keeps_only_decoded_tokens(vl_engine, images, path):
    from echocxr.decoding.fast_engine import FastPath

    generate = vl_engine.generate if path == "reference" else FastPath(vl_engine).generate
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="ar", max_new_tokens=12)
    full = vl_engine.generate(prompts, cfg)
    steps = {}

    def hook(ev):
        if ev.kind == "step":
            steps[ev.sample] = steps.get(ev.sample, 0) + 1

    outs = generate(prompts, cfg, on_event=hook, is_cancelled=lambda i: i == 0 and steps.get(0, 0) >= 3)
    assert len(full[0].token_ids) > 3  # the uncancelled decode goes on past the cancel point
    assert outs[0].stop == "cancelled" and outs[0].forwards == 3
    assert outs[0].token_ids == full[0].token_ids[:3] and outs[0].tokens == 3
