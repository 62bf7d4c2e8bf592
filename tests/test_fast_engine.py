"""Exactness of the fast decoding path against the reference engine (the oracle), and of its GQA attention.

Every equivalence the reference engine is tested on (test_engine.py) is checked here with the fast path on one
side: cache vs recompute, fused vs vanilla, batch vs alone with mixed prompt lengths, per-sample <eos>,
cancellation, block lengths 4 and 8, both prefill modes, for every decoder the fast path takes (one-step fused and
vanilla, multi-step with each remasking rule, AR). Tokens must be equal, step logits and token confidences
within 1e-5.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from echocxr.backbones.gqa_attention import GQA_ATTENTION, gqa_attention_forward, text_attention
from echocxr.backbones.loading import load_backbone
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.decoding.fast_engine import FastPath, bucket
from tests.test_engine import set_sample_specific_eos, vl_prompts

FAST_DECODERS = [
    dict(decoder="onestep", fused=True),
    dict(decoder="ar"),
    dict(decoder="onestep", fused=False),
    dict(decoder="multistep", steps=2, remasking="low_confidence_static"),
    dict(decoder="multistep", steps=4, remasking="low_confidence_dynamic", threshold=0.01),
    dict(decoder="multistep", steps=3, remasking="sequential"),
    dict(decoder="multistep", steps=4, remasking="low_entropy_dynamic", threshold=0.5),
]


def ids(d):
    return "-".join(str(v) for v in d.values())


def run_recorded(generate, prompts, cfg, **kw):
    events = {}

    def hook(ev):
        if ev.kind == "step":
            events[(ev.sample, ev.block, ev.step)] = (ev.logits, ev.tokens, ev.committed, ev.response_offset,
                                                      ev.confidences)

    outs = generate(prompts, replace(cfg, record_logits=True), on_event=hook, **kw)
    return outs, events


def assert_same_confidences(fast, ref):
    for f, r in zip(fast, ref, strict=True):
        assert len(f.token_confidences) == len(f.token_ids) == len(r.token_confidences)
        torch.testing.assert_close(torch.tensor(f.token_confidences), torch.tensor(r.token_confidences),
                                   atol=1e-5, rtol=0)


def assert_same(fast, ev_f, ref, ev_r):
    assert [o.token_ids for o in fast] == [o.token_ids for o in ref]
    assert [(o.tokens, o.forwards, o.stop, o.text) for o in fast] == [(o.tokens, o.forwards, o.stop, o.text) for o in ref]
    assert_same_confidences(fast, ref)
    assert ev_f.keys() == ev_r.keys() and len(ev_f) > 0
    for k in ev_f:
        torch.testing.assert_close(ev_f[k][0], ev_r[k][0], atol=1e-5, rtol=0)
        assert ev_f[k][1:4] == ev_r[k][1:4]
        torch.testing.assert_close(torch.tensor(ev_f[k][4]), torch.tensor(ev_r[k][4]), atol=1e-5, rtol=0)


# ---- GQA attention ---------------------------------------------------------------------------------------

class _Attn(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("groups", [1, 2, 7])
@pytest.mark.parametrize("masked", [True, False])
def test_gqa_attention_equals_sdpa(groups, masked):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(groups)
    B, Hkv, Q, K, D = 2, 2, 5, 11, 8
    q = torch.randn(B, Hkv * groups, Q, D, generator=g)
    k, v = torch.randn(B, Hkv, K, D, generator=g), torch.randn(B, Hkv, K, D, generator=g)
    mask = None
    if masked:
        allowed = torch.rand(B, 1, Q, K, generator=g) > 0.3
        allowed[..., 0] = True
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    q_in, k_in, v_in = (q, k, v) if masked else (q, k[:, :, :Q], v[:, :, :Q])
    ours, _ = gqa_attention_forward(_Attn(groups), q_in, k_in, v_in, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(_Attn(groups), q_in, k_in, v_in, mask, scaling=0.3)
    assert ours.shape == ref.shape == (B, Q, Hkv * groups, D)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_gqa_attention_in_a_model_equals_sdpa_and_is_restored(vl_engine, images):
    prompt = vl_engine.encode([images[0]])
    model = vl_engine.model
    kwargs = dict(input_ids=prompt.input_ids[None], pixel_values=prompt.pixel_values,
                  image_grid_thw=prompt.image_grid_thw, mm_token_type_ids=prompt.mm_token_type_ids[None])
    before = model.config.get_text_config()._attn_implementation
    with torch.no_grad():
        ref = model(**kwargs).logits
        with text_attention(model, GQA_ATTENTION):
            assert model.config.get_text_config()._attn_implementation == GQA_ATTENTION
            assert model.config.vision_config._attn_implementation == before  # the vision tower keeps its own
            ours = model(**kwargs).logits
    assert model.config.get_text_config()._attn_implementation == before
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


# ---- fast path == reference ------------------------------------------------------------------------------

@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("dec", FAST_DECODERS, ids=ids)
def test_fast_equals_reference_cached_and_recomputed(vl_engine, images, dec, prefill, L):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(block_length=L, max_new_tokens=3 * L, prefill=prefill, **dec)
    fast, ev_f = run_recorded(FastPath(vl_engine).generate, prompts, cfg)
    ref, ev_r = run_recorded(vl_engine.generate, prompts, cfg)
    assert_same(fast, ev_f, ref, ev_r)
    plain, ev_p = run_recorded(vl_engine.generate, prompts, replace(cfg, use_cache=False))
    assert_same(fast, ev_f, plain, ev_p)


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("L", [4, 8])
def test_fast_fused_equals_reference_vanilla(vl_engine, images, prefill, L):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=L, max_new_tokens=3 * L, prefill=prefill)
    fast, ev_f = run_recorded(FastPath(vl_engine).generate, prompts, cfg)
    vanilla, ev_v = run_recorded(vl_engine.generate, prompts, replace(cfg, fused=False))
    assert_same(fast, ev_f, vanilla, ev_v)


@pytest.mark.parametrize("dec", FAST_DECODERS, ids=ids)
def test_fast_equals_reference_text_only(text_engine, dec):
    prompts = [text_engine.encode(None, instruction="Write a report."), text_engine.encode(None, lang="zh"),
               text_engine.encode(None, instruction="Findings please, with extra words to change the length")]
    cfg = DecodeConfig(block_length=4, max_new_tokens=12, **dec)
    fast, ev_f = run_recorded(FastPath(text_engine).generate, prompts, cfg)
    ref, ev_r = run_recorded(text_engine.generate, prompts, replace(cfg, use_cache=False))
    assert_same(fast, ev_f, ref, ev_r)


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
@pytest.mark.parametrize("dec", FAST_DECODERS, ids=ids)
def test_fast_batch_equals_alone(vl_engine, images, dec, prefill):
    prompts = vl_prompts(vl_engine, images)
    assert len({p.length for p in prompts}) == 3  # really mixed lengths
    cfg = DecodeConfig(block_length=4, max_new_tokens=14, prefill=prefill, **dec)
    fast = FastPath(vl_engine)
    batched = fast.generate(prompts, cfg)  # no hook: stop checks every k steps
    alone = [vl_engine.generate([p], cfg)[0] for p in prompts]
    for b, a in zip(batched, alone, strict=True):
        assert (b.token_ids, b.text, b.tokens, b.forwards, b.stop) == (a.token_ids, a.text, a.tokens, a.forwards, a.stop)
    assert_same_confidences(batched, alone)


def eos_engine(tiny_vl_dir, images, cfg, n_prompts=3):
    """An engine whose <eos> is a token only some samples produce, and prompts for it (see test_engine.py)."""
    bb = load_backbone(tiny_vl_dir)
    pool = [[images[0]], [images[1], images[2]], [images[2]], [images[1]], [images[0], images[2]]]
    prompts = [ReportEngine(bb).encode(v, lang="zh" if i % 2 else "en") for i, v in enumerate(pool[:n_prompts])]
    set_sample_specific_eos(bb, prompts, cfg)
    return ReportEngine(bb), prompts


@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("dec", FAST_DECODERS, ids=ids)
def test_fast_per_sample_eos_and_compaction(tiny_vl_dir, images, dec, check_every):
    cfg = DecodeConfig(block_length=4, max_new_tokens=16, prefill="response_aligned", **dec)
    engine, prompts = eos_engine(tiny_vl_dir, images, cfg, n_prompts=5)
    ref = engine.generate(prompts, cfg)
    assert ref[0].stop == "eos" and "length" in {o.stop for o in ref}
    fast = FastPath(engine, check_every=check_every).generate(prompts, cfg)
    assert [(o.token_ids, o.tokens, o.forwards, o.stop) for o in fast] == \
        [(o.token_ids, o.tokens, o.forwards, o.stop) for o in ref]
    assert_same_confidences(fast, ref)  # rows compacted mid-decode keep their confidences


def test_engine_routes_supported_configs_to_the_fast_path(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)[:2]
    engine = ReportEngine(vl_engine.bb)
    engine.fast_path = FastPath(engine)
    calls = []
    real = engine.fast_path.generate
    engine.fast_path.generate = lambda *a, **k: calls.append(a[1].decoder) or real(*a, **k)
    for dec in (dict(decoder="onestep"), dict(decoder="ar"), dict(decoder="onestep", fused=False),
                dict(decoder="multistep", steps=2)):
        cfg = DecodeConfig(block_length=4, max_new_tokens=8, **dec)
        assert [o.token_ids for o in engine.generate(prompts, cfg)] == \
            [o.token_ids for o in vl_engine.generate(prompts, cfg)]
    cfg = DecodeConfig(block_length=4, max_new_tokens=8, use_cache=False)
    assert [o.token_ids for o in engine.generate(prompts, cfg)] == [o.token_ids for o in vl_engine.generate(prompts, cfg)]
    assert calls == ["onestep", "ar", "onestep", "multistep"]  # not the recompute oracle


@pytest.mark.parametrize("use_hook", [True, False])
def test_fast_cancelled_sample_leaves_the_batch(vl_engine, images, use_hook):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=16, prefill="response_aligned")
    fast = FastPath(vl_engine)
    full = fast.generate(prompts, cfg)
    steps, calls = {}, {"n": 0}

    def hook(ev):
        if ev.kind == "step":
            steps[ev.sample] = steps.get(ev.sample, 0) + 1

    def cancelled(i):  # without a hook: cancelled when asked the second time (after step 2)
        if i == 1:
            calls["n"] += 1
        return i == 1 and (steps.get(1, 0) >= 2 if use_hook else calls["n"] >= 2)

    outs = fast.generate(prompts, cfg, on_event=hook if use_hook else None, is_cancelled=cancelled)
    assert outs[1].stop == "cancelled" and outs[1].forwards == 2
    assert outs[1].token_ids == full[1].token_ids[: len(outs[1].token_ids)] and len(outs[1].token_ids) == 8
    assert [outs[0].token_ids, outs[2].token_ids] == [full[0].token_ids, full[2].token_ids]


def test_fast_sampling_at_batch_one_equals_reference(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)[:1]
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9,
                       seed=3)
    assert FastPath(vl_engine).generate(prompts, cfg)[0].token_ids == vl_engine.generate(prompts, cfg)[0].token_ids


def test_one_step_tpf_on_the_fast_path(tiny_vl_dir, images):
    bb = load_backbone(tiny_vl_dir)
    bb.eos_token_ids = []
    engine = ReportEngine(bb)
    outs = FastPath(engine).generate(vl_prompts(engine, images), DecodeConfig(
        decoder="onestep", block_length=8, max_new_tokens=32, prefill="response_aligned"))
    assert all(o.stop == "length" and o.tokens == 32 and o.forwards == 4 and o.tpf == 8.0 for o in outs)


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


def test_one_fast_path_reuses_its_buffers_across_decodes(vl_engine, images):
    """Decodes of other batch sizes, lengths and decoders in between leave no state behind."""
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=12, prefill="block_grid")
    fast = FastPath(vl_engine, max_shapes=2)
    first = fast.generate(prompts, cfg)
    fast.generate(prompts[:1], replace(cfg, decoder="ar", max_new_tokens=5))
    fast.generate(prompts[1:], replace(cfg, block_length=8, max_new_tokens=200))
    again = fast.generate(prompts, cfg)
    assert [o.token_ids for o in again] == [o.token_ids for o in first] == \
        [o.token_ids for o in vl_engine.generate(prompts, cfg)]
    assert len(fast._buffers) <= 2
