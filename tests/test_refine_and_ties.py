"""Two decoding options: greedy's canonical tie-break (`tie_ratio`, used for DCD's teacher trajectories) and
one-step decoding with one refinement pass (`refine`): the rules by hand, and the fast path equal to the reference."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echocxr.decoding.engine import DecodeConfig
from echocxr.decoding.fast_engine import FastPath
from echocxr.decoding.sampling import image_tie_preference, sample_tokens
from echocxr.errors import UserError
from tests.test_engine import set_sample_specific_eos, vl_prompts
from tests.test_fast_engine import assert_same, run_recorded


def test_tie_ratio_takes_the_lowest_id_among_the_near_top_tokens():
    logits = torch.tensor([[0.05, 0.30, 0.40, 0.25], [0.70, 0.10, 0.05, 0.15]]).log()
    assert sample_tokens(logits)[0].tolist() == [2, 0]
    tok, conf, _ = sample_tokens(logits, tie_ratio=0.7)  # row 0: 0.30 >= 0.7 * 0.40, 0.25 is not
    assert tok.tolist() == [1, 0]
    torch.testing.assert_close(conf, torch.tensor([0.30, 0.70]))
    assert sample_tokens(logits, tie_ratio=0.8)[0].tolist() == [2, 0]  # 0.30 < 0.32: no tie
    assert sample_tokens(logits, tie_ratio=0.1)[0].tolist() == [0, 0]  # 0.05 >= 0.04
    ruled_out = logits.clone()
    ruled_out[:, 0] = -math.inf  # a suppressed token (mask, vision placeholder) is never a candidate
    assert sample_tokens(ruled_out, tie_ratio=0.1)[0].tolist() == [1, 1]
    batched = torch.stack([logits, logits])  # (2, 2, V): the leading shape is kept
    assert sample_tokens(batched, tie_ratio=0.7)[0].tolist() == [[1, 0], [1, 0]]


def test_a_preference_breaks_the_tie_instead_of_the_lowest_id():
    logits = torch.tensor([[0.05, 0.30, 0.40, 0.25], [0.70, 0.10, 0.05, 0.15]]).log()
    prefer = torch.tensor([[9.0, 0.0, 1.0, 5.0], [0.0, 9.0, 9.0, 9.0]])
    # row 0: near-top (ratio 0.6) are ids 1, 2, 3; the preference ranks 3 highest (0 is not near)
    tok, conf, _ = sample_tokens(logits, tie_ratio=0.6, prefer=prefer)
    assert tok.tolist() == [3, 0]  # row 1: only id 0 is near the top, whatever is preferred
    torch.testing.assert_close(conf, torch.tensor([0.25, 0.70]))
    assert sample_tokens(logits, tie_ratio=0.6)[0].tolist() == [1, 0]
    assert sample_tokens(logits, prefer=prefer)[0].tolist() == [2, 0]  # no tie ratio: the plain argmax


def test_one_step_tie_break_follows_the_blocks_first_forward(vl_engine, images):
    """Each later round of a block commits, of the tokens near its own top, the one the block's first (all
    masked) round ranks highest; the first round keeps the lowest-id rule. The fast path leaves it to the
    reference engine, and the cached and uncached reference paths agree."""
    prompts = vl_prompts(vl_engine, images)
    R = 0.3
    cfg = DecodeConfig(decoder="multistep", block_length=4, steps=4, remasking="sequential", max_new_tokens=16,
                       prefill="response_aligned", tie_ratio=R, tie_break="one_step")
    outs, ev = run_recorded(vl_engine.generate, prompts, cfg)
    ref, ev_r = run_recorded(vl_engine.generate, prompts, replace(cfg, use_cache=False))
    assert_same(outs, ev, ref, ev_r)
    assert not FastPath(vl_engine).supports(cfg, prompts)
    moved = 0
    for (sample, block, step), (logits, tokens, committed, _, _) in ev.items():
        lf = logits.float().log_softmax(-1)
        near = lf >= lf.amax(-1, keepdim=True) + math.log(R)
        first = ev[(sample, block, 0)][0].float()
        for j, c in enumerate(committed):
            if not c:
                continue
            cand = near[j].nonzero().flatten()
            rule = cand[0] if step == 0 else cand[first[j, cand].argmax()]
            assert tokens[j] == int(rule)
            moved += step > 0 and tokens[j] != int(cand[0])
    assert moved  # somewhere the first forward's preference differs from the lowest id
    lowest = vl_engine.generate(prompts, replace(cfg, tie_break="lowest_id"))
    assert [o.token_ids for o in lowest] != [o.token_ids for o in outs]


def test_image_tie_break_by_hand():
    """Near-top tokens (ratio 0.5: ids 1, 2, 3 in row 0) tie only when the image moves their log-probability
    (against the blank image's) within the margin of what it does for the top token (id 2)."""
    logits = torch.tensor([[0.05, 0.30, 0.40, 0.25], [0.70, 0.10, 0.05, 0.15]]).log()
    blind = torch.tensor([[0.05, 0.10, 0.40, 0.45], [0.70, 0.10, 0.05, 0.15]]).log()
    # row 0 gains: id 1 log 3 = 1.10 nats, id 2 0, id 3 log(0.25/0.45) = -0.59: with margin 1 only 3 ties with 2
    prefer = image_tie_preference(logits, blind, margin=1.0)
    assert sample_tokens(logits, tie_ratio=0.5, prefer=prefer)[0].tolist() == [2, 0]
    # margin 1.2: 1 ties as well, and the lowest id wins; margin 0.5: nothing ties with 2
    assert sample_tokens(logits, tie_ratio=0.5, prefer=image_tie_preference(logits, blind, 1.2))[0].tolist() == [1, 0]
    assert sample_tokens(logits, tie_ratio=0.5, prefer=image_tie_preference(logits, blind, 0.5))[0].tolist() == [2, 0]
    assert sample_tokens(logits, tie_ratio=0.5)[0].tolist() == [1, 0]  # lowest_id ignores the image
    same = image_tie_preference(logits, logits, 0.0)  # no image effect at all: the lowest-id rule
    assert sample_tokens(logits, tie_ratio=0.5, prefer=same)[0].tolist() == [1, 0]
    ruled_out = logits.clone()
    ruled_out[:, 0] = -math.inf  # suppressed in both: a NaN gain, never a candidate
    pref = image_tie_preference(ruled_out, ruled_out, 100.0)
    assert sample_tokens(ruled_out, tie_ratio=0.01, prefer=pref)[0].tolist() == [1, 1]


def test_image_tie_break_decodes_beside_blank_image_twins(vl_engine, images):
    """Each sample decodes beside its blank-image twin, which follows its tokens: with a margin nothing passes
    it is the plain argmax, with one everything passes it is the lowest-id rule, token for token, events and
    forwards alike; in between it differs from both somewhere. Samples of different lengths keep their twins."""
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(decoder="multistep", block_length=4, steps=4, remasking="sequential", max_new_tokens=16,
                       prefill="response_aligned", tie_ratio=0.3, tie_break="image")
    assert not FastPath(vl_engine).supports(cfg, prompts)
    for margin, same_as in ((100.0, dict(tie_break="lowest_id")), (0.0, dict(tie_ratio=0.0))):
        outs, ev = run_recorded(vl_engine.generate, prompts, replace(cfg, tie_margin=margin))
        ref, ev_r = run_recorded(vl_engine.generate, prompts, replace(cfg, tie_margin=margin, **same_as))
        assert_same(outs, ev, ref, ev_r)
        assert {k[0] for k in ev} == set(range(len(prompts)))  # the twins send no events
    lowest = [o.token_ids for o in vl_engine.generate(prompts, replace(cfg, tie_break="lowest_id"))]
    plain = [o.token_ids for o in vl_engine.generate(prompts, replace(cfg, tie_ratio=0.0))]
    assert lowest != plain


def test_image_tie_break_twins_stay_paired_as_samples_finish(tiny_vl_dir, images):
    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    bb = load_backbone(tiny_vl_dir)
    prompts = vl_prompts(ReportEngine(bb), images)
    cfg = DecodeConfig(decoder="multistep", block_length=4, steps=4, remasking="sequential", max_new_tokens=16,
                       prefill="response_aligned", tie_ratio=0.3, tie_break="image", tie_margin=0.05)
    set_sample_specific_eos(bb, prompts, cfg)
    engine = ReportEngine(bb)
    batched = engine.generate(prompts, cfg)
    alone = [engine.generate([p], cfg)[0] for p in prompts]
    assert [(o.token_ids, o.forwards, o.stop) for o in batched] == [(o.token_ids, o.forwards, o.stop) for o in alone]
    assert {o.stop for o in batched} == {"eos", "length"}  # the samples do finish at different times
    one = replace(cfg, decoder="onestep", tie_margin=100.0)
    assert ([o.token_ids for o in engine.generate(prompts, one)]
            == [o.token_ids for o in engine.generate(prompts, replace(one, tie_break="lowest_id"))])


def test_image_tie_break_commits_by_the_rule_on_the_twins_logits(vl_engine, images, monkeypatch):
    """Every committed token is, of the near-top tokens whose image gain (sample's log-probabilities against its
    twin's, as the engine computed them) is within the margin of the top token's, the lowest id; the twin's first
    forward is the blank-image prompt's own."""
    import echocxr.decoding.engine as engine_mod

    seen = []
    real_rule = engine_mod.image_tie_preference
    monkeypatch.setattr(engine_mod, "image_tie_preference",
                        lambda a, b, m: seen.append((a.clone(), b.clone())) or real_rule(a, b, m))
    prompts = vl_prompts(vl_engine, images)[:1]
    R, M = 0.3, 0.05
    cfg = DecodeConfig(decoder="multistep", block_length=4, steps=4, remasking="sequential", max_new_tokens=12,
                       prefill="response_aligned", tie_ratio=R, tie_break="image", tie_margin=M)
    outs, ev = run_recorded(vl_engine.generate, prompts, cfg)
    assert len(seen) == len(ev)  # one rule call per forward, in event order
    differs = 0
    for ((_, _, _), (logits, tokens, committed, _, _)), (real, blind) in zip(sorted(ev.items()), seen, strict=True):
        torch.testing.assert_close(real[0].float(), logits.float(), atol=1e-5, rtol=0)
        lf, bf = real[0].float().log_softmax(-1), blind[0].float().log_softmax(-1)
        for j, c in enumerate(committed):
            if not c:
                continue
            top = int(lf[j].argmax())
            gain = lf[j] - bf[j]
            ok = (lf[j] >= lf[j, top] + math.log(R)) & ((gain - gain[top]).abs() <= M)
            assert tokens[j] == int(ok.nonzero().flatten()[0])
            near = (lf[j] >= lf[j, top] + math.log(R)).nonzero().flatten()
            differs += int(near[0]) != tokens[j]  # where the image kept a token from the lowest-id rule
    assert differs
    blank = replace(prompts[0], pixel_values=torch.zeros_like(prompts[0].pixel_values))
    _, ev_b = run_recorded(vl_engine.generate, [blank], replace(cfg, tie_ratio=0.0))
    torch.testing.assert_close(seen[0][1][0].float(), ev_b[(0, 0, 0)][0].float(), atol=1e-5, rtol=0)


def test_image_tie_break_needs_images(text_engine):
    from echocxr.backbones.prompt import encode_prompt

    bb = text_engine.bb
    prompt = encode_prompt(bb.tokenizer, bb.image_processor, [], lang="en")
    cfg = DecodeConfig(decoder="multistep", max_new_tokens=8, tie_ratio=0.3, tie_break="image")
    with pytest.raises(UserError, match="needs an image in every prompt"):
        text_engine.generate([prompt], cfg)


@pytest.mark.parametrize("kw,needle", [
    (dict(tie_ratio=0.5, tie_break="highest_id"), "unknown tie break"),
    (dict(tie_ratio=0.5, tie_break="image", decoder="ar"), "applies to block decoding"),
    (dict(tie_ratio=0.5, tie_break="image", decoder="multistep", lookahead=1), "applies to block decoding"),
    (dict(tie_margin=float("nan")), "tie margin must be"),
    (dict(tie_margin=-1.0), "tie margin must be"),
    (dict(tie_ratio=0.5, temperature=1.0), "greedy decoding only"),
    (dict(tie_ratio=1.0), "tie ratio must be"),
    (dict(tie_ratio=-0.1), "tie ratio must be"),
    (dict(refine=0.5, decoder="multistep"), "--refine applies to the one-step decoder"),
    (dict(refine=0.5, decoder="ar"), "--refine applies to the one-step decoder"),
    (dict(refine=1.5), "refine threshold must be"),
])
def test_bad_tie_ratio_or_refine_is_a_user_error(kw, needle):
    with pytest.raises(UserError, match=needle):
        DecodeConfig(**kw).validate()


@pytest.mark.parametrize("dec", [dict(decoder="onestep"), dict(decoder="ar"),
                                 dict(decoder="multistep", steps=4, remasking="sequential")],
                         ids=["onestep", "ar", "sequential"])
def test_tie_ratio_on_the_fast_path_equals_the_reference(vl_engine, images, dec):
    prompts = vl_prompts(vl_engine, images)
    cfg = DecodeConfig(block_length=4, max_new_tokens=12, prefill="response_aligned", tie_ratio=0.3, **dec)
    fast, ev_f = run_recorded(FastPath(vl_engine).generate, prompts, cfg)
    ref, ev_r = run_recorded(vl_engine.generate, prompts, replace(cfg, use_cache=False))
    assert_same(fast, ev_f, ref, ev_r)
    plain = vl_engine.generate(prompts, replace(cfg, tie_ratio=0.0))
    assert [o.token_ids for o in plain] != [o.token_ids for o in fast]  # the tie-break really changed tokens


def _rounds(engine, prompts, cfg):
    """Per (sample, block): the rounds' (tokens, committed, max probabilities of the round's forward)."""
    blocks: dict = {}

    def hook(ev):
        if ev.kind == "step":
            top = torch.softmax(ev.logits.float(), dim=-1).amax(dim=-1)
            blocks.setdefault((ev.sample, ev.block), []).append((ev.tokens, ev.committed, top))

    outs = engine.generate(prompts, replace(cfg, record_logits=True), on_event=hook)
    return outs, blocks


def test_refine_keeps_the_sure_tokens_and_decodes_the_rest_in_one_more_forward(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)
    one = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=16, prefill="response_aligned")
    plain, plain_blocks = _rounds(vl_engine, prompts, one)
    tops = torch.cat([r[0][2] for r in plain_blocks.values()])
    t = float(tops.median())  # some blocks all above, some not
    outs, blocks = _rounds(vl_engine, prompts, replace(one, refine=t))
    refined, compared, diverged = 0, 0, set()
    for key in sorted(blocks):
        rounds = blocks[key]
        tokens, committed, top = rounds[0]
        if key[0] not in diverged:  # same text so far: round 1 is the plain one-step forward
            torch.testing.assert_close(top, plain_blocks[key][0][2])
            assert [tok for tok, c in zip(tokens, committed, strict=True) if c] == \
                [tok for tok, c in zip(plain_blocks[key][0][0], committed, strict=True) if c]
            compared += 1
        sure = (top > t).tolist()
        expect = sure if any(sure) else [i == int(top.argmax()) for i in range(4)]
        assert committed == expect, key
        if not all(committed):
            diverged.add(key[0])
        if all(committed):
            assert len(rounds) == 1
        else:  # one more forward commits every position round 1 left
            assert len(rounds) == 2 and all(a or b for a, b in zip(committed, rounds[1][1], strict=True))
            refined += 1
    assert 0 < refined < len(blocks) and compared > len(prompts)
    for o, p in zip(outs, plain, strict=True):
        n_blocks = math.ceil(o.tokens / 4)
        assert n_blocks <= o.forwards <= 2 * n_blocks and o.forwards >= p.forwards


def test_refine_at_the_extremes(vl_engine, images):
    prompts = vl_prompts(vl_engine, images)
    one = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=12, prefill="response_aligned")
    plain = vl_engine.generate(prompts, one)
    never = vl_engine.generate(prompts, replace(one, refine=1e-12))  # every token is surer than that
    assert [(o.token_ids, o.forwards) for o in never] == [(o.token_ids, o.forwards) for o in plain]
    always = vl_engine.generate(prompts, replace(one, refine=1.0))  # no token is: two forwards a block
    assert all(o.forwards == 2 * math.ceil(o.tokens / 4) for o in always)
    assert [o.token_ids for o in always] != [o.token_ids for o in plain]


def test_refine_is_decoded_by_the_reference_engine(vl_engine, images):
    cfg = DecodeConfig(decoder="onestep", block_length=4, max_new_tokens=8, refine=0.5)
    assert not FastPath(vl_engine).supports(cfg, vl_prompts(vl_engine, images))
