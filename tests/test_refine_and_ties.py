"""Two decoding options: greedy's canonical tie-break (`tie_ratio`, used for DCD's teacher trajectories) and
one-step decoding with one refinement pass (`refine`): the rules by hand, and the fast path equal to the reference."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echocxr.decoding.engine import DecodeConfig
from echocxr.decoding.fast_engine import FastPath
from echocxr.decoding.sampling import sample_tokens
from echocxr.errors import UserError
from tests.test_engine import vl_prompts
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


@pytest.mark.parametrize("kw,needle", [
    (dict(tie_ratio=0.5, tie_break="highest_id"), "unknown tie break"),
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
