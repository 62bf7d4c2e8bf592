"""DCD phase 1 (teacher trajectories) against the engine's multi-step decoder, and phase 2's loss by hand.

The trajectories must be exactly what `ReportEngine.generate` does with the teacher config
(low_confidence_dynamic, steps = L, threshold tau, response-aligned): the same committed tokens, the step at
which the engine committed each slot, the teacher's distribution at that step. Repetition loops and
unfinished decodes are dropped; the on-disk cache is reused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from echocxr.backbones.loading import load_backbone
from echocxr.decoding.engine import ReportEngine
from echocxr.training.examples import TrainExample
from echocxr.training.trajectories import (
    collect_trajectories,
    has_repetition_loop,
    load_or_collect,
    teacher_config,
    trajectory_key,
)

L = 4
MAX_NEW = 16


def _image(seed: int, h: int, w: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8), mode="L")


@pytest.fixture(scope="module")
def teacher(tiny_vl_dir):
    """A tiny teacher (logits sharpened so its confidences straddle tau) whose <eos> is a token that only some
    prompts produce: some decodes finish, some do not, and the finished ones are mostly loop-free."""
    bb = load_backbone(tiny_vl_dir, dtype="float32")
    with torch.no_grad():
        bb.model.lm_head.weight.mul_(8.0)
    bb.eos_token_ids = []
    free_engine = ReportEngine(bb)
    imgs = [_image(i, 64 + 8 * i, 64) for i in range(6)]
    examples = [TrainExample(prompt=free_engine.encode([im], lang="zh" if i % 3 == 2 else "en"), response_ids=[],
                             sample_id=f"s{i}") for i, im in enumerate(imgs)]
    free = [g.token_ids for g in free_engine.generate([e.prompt for e in examples], teacher_config(L, 0.9, MAX_NEW))]

    def outcome(c):  # (kept, unfinished) if token c were the <eos>
        done = [f[:f.index(c)] for f in free if c in f]
        return sum(not has_repetition_loop(d) for d in done), len(free) - len(done)

    cands = [c for c in sorted({t for f in free for t in f}) if outcome(c)[1] > 0 and outcome(c)[0] > 0]
    assert cands, "the fixture model should produce prompt-specific tokens"
    bb.eos_token_ids = [max(cands, key=lambda c: outcome(c)[0])]
    return ReportEngine(bb), examples


def engine_reference(engine, examples, tau):
    """Run the engine's multi-step decoder and rebuild (tokens, step index, distribution) per slot from events."""
    rec: dict[int, dict[int, tuple[int, int, torch.Tensor]]] = {i: {} for i in range(len(examples))}

    def hook(ev):
        if ev.kind != "step":
            return
        probs = torch.softmax(ev.logits.float(), -1)
        for j, c in enumerate(ev.committed):
            if c:
                slot = ev.response_offset + j
                assert slot not in rec[ev.sample], "a slot is committed once"
                rec[ev.sample][slot] = (ev.tokens[j], ev.step + 1, probs[j])

    cfg = teacher_config(L, tau, MAX_NEW)
    assert (cfg.decoder, cfg.remasking, cfg.steps, cfg.threshold, cfg.prefill) == (
        "multistep", "low_confidence_dynamic", L, tau, "response_aligned")
    gens = engine.generate([e.prompt for e in examples], cfg, on_event=hook)
    return gens, rec


@pytest.mark.parametrize("tau", [0.9, 0.5])
def test_trajectories_equal_the_engine_multistep_decode(teacher, tau):
    engine, examples = teacher
    gens, rec = engine_reference(engine, examples, tau)
    trajs, stats = collect_trajectories(engine, examples, L, tau, max_new_tokens=MAX_NEW, progress=False)
    finished = [i for i, g in enumerate(gens) if g.stop == "eos"]
    looped = [i for i in finished if has_repetition_loop(gens[i].token_ids)]
    assert 0 < len(finished) < len(examples), [g.stop for g in gens]
    assert stats == {"kept": len(finished) - len(looped), "dropped_unfinished": len(examples) - len(finished),
                     "dropped_loop": len(looped)}
    assert set(trajs) == {examples[i].key for i in finished if i not in looped}
    eos = engine.bb.eos_token_ids[0]
    V = engine.model.get_output_embeddings().weight.shape[0]
    rounds = []  # rounds each kept block took
    for i, e in enumerate(examples):
        if e.key not in trajs:
            continue
        t, g = trajs[e.key], gens[i]
        R = len(t.tokens)
        assert R % L == 0 and R == -(-(len(g.token_ids) + 1) // L) * L  # whole blocks, up to the <eos> block
        assert t.tokens[:len(g.token_ids)] == g.token_ids and t.tokens[len(g.token_ids)] == eos
        assert t.tokens == [rec[i][j][0] for j in range(R)]
        assert t.steps.tolist() == [rec[i][j][1] for j in range(R)]
        assert t.index.shape == t.probs.shape == (R, V) and torch.equal(t.index[0], torch.arange(V))
        ref = torch.stack([rec[i][j][2] for j in range(R)])
        torch.testing.assert_close(t.probs.float(), ref, atol=1e-3, rtol=1e-2)
        # the committed token is the teacher's argmax at commit time (greedy)
        assert ref.argmax(-1).tolist() == t.tokens
        for b in range(R // L):  # every block: rounds 1..k, each round commits at least one slot
            s = sorted(set(t.steps[b * L:(b + 1) * L].tolist()))
            assert s == list(range(1, len(s) + 1))
            rounds.append(len(s))
    # some blocks took several rounds, some rounds committed several slots
    assert max(rounds) > 1 and min(rounds) < L, rounds


def test_trajectories_batching_and_topk(teacher):
    engine, examples = teacher
    full, _ = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False)
    small, _ = collect_trajectories(engine, examples, L, 0.9, batch_size=2, max_new_tokens=MAX_NEW, progress=False)
    topk, _ = collect_trajectories(engine, examples, L, 0.9, topk=5, max_new_tokens=MAX_NEW, progress=False)
    assert full.keys() == small.keys() == topk.keys() and full
    for k in full:
        assert full[k].tokens == small[k].tokens and torch.equal(full[k].steps, small[k].steps)
        torch.testing.assert_close(full[k].probs, small[k].probs, atol=1e-3, rtol=0)
        assert topk[k].index.shape == (len(full[k].tokens), 5)
        ref = full[k].probs.float().topk(5, dim=-1)
        assert torch.equal(topk[k].index[:, 0], ref.indices[:, 0])
        torch.testing.assert_close(topk[k].probs.float(), ref.values, atol=1e-3, rtol=0)


def test_repetition_loop_examples_are_dropped(teacher, monkeypatch):
    import echocxr.training.trajectories as trajectories

    engine, examples = teacher
    gens = engine.generate([e.prompt for e in examples], teacher_config(L, 0.9, MAX_NEW))
    finished = [i for i, g in enumerate(gens) if g.stop == "eos"]
    victim = gens[finished[0]].token_ids
    monkeypatch.setattr(trajectories, "has_repetition_loop", lambda ids: ids == victim)
    trajs, stats = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False)
    n_victims = sum(gens[i].token_ids == victim for i in finished)
    assert stats["dropped_loop"] == n_victims >= 1
    assert stats["kept"] == len(finished) - n_victims and len(trajs) == stats["kept"]
    assert examples[finished[0]].key not in trajs


def test_unfinished_examples_are_dropped(teacher):
    engine, examples = teacher
    gens = engine.generate([e.prompt for e in examples], teacher_config(L, 0.9, L))  # one block only
    trajs, stats = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=L, progress=False)
    n_done = sum(g.stop == "eos" for g in gens)
    assert stats["dropped_unfinished"] == len(examples) - n_done > 0
    assert all(len(t.tokens) == L for t in trajs.values())


@pytest.mark.parametrize("ids,expected", [
    ([], False),
    ([7, 7, 7], False),
    ([7, 7, 7, 7], True),
    ([1, 2, 3, 7, 7, 7, 7], True),
    ([1, 2, 1, 2, 1, 2, 1, 2], True),
    ([1, 2, 1, 2, 1, 2, 1, 2, 9], False),  # the loop must be at the end
    ([1, 2, 1, 2, 1, 2], False),  # three copies only
    ([5, 1, 2, 3] * 4, True),
    (list(range(8)) * 4, True),  # an 8-gram, the longest checked
    (list(range(9)) * 4, False),  # a 9-gram is too long
    ([3, 1, 2, 3, 1, 2, 3, 1, 2, 4, 1, 2], False),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], False),
])
def test_has_repetition_loop(ids, expected):
    assert has_repetition_loop(ids) is expected


def test_has_repetition_loop_settings():
    assert has_repetition_loop([4, 4], min_repeats=2)
    assert not has_repetition_loop(list(range(3)) * 4, max_ngram=2)


def test_trajectory_cache_is_reused(teacher, tiny_vl_dir, tmp_path):
    engine, examples = teacher
    calls = []
    real = engine.generate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    engine.generate = counting
    try:
        a, sa = load_or_collect(tmp_path, str(tiny_vl_dir), engine, examples, L, 0.9, max_new_tokens=MAX_NEW,
                                progress=False)
        n = len(calls)
        b, sb = load_or_collect(tmp_path, str(tiny_vl_dir), engine, examples, L, 0.9, max_new_tokens=MAX_NEW,
                                progress=False)
        assert len(calls) == n  # no decoding the second time
        assert sa["cached"] is False and sb["cached"] is True and sa["path"] == sb["path"]
        assert {k: v for k, v in sa.items() if k != "cached"} == {k: v for k, v in sb.items() if k != "cached"}
        assert a.keys() == b.keys() and a
        for k in a:
            assert a[k].tokens == b[k].tokens and a[k].sample_id == b[k].sample_id
            assert torch.equal(a[k].index, b[k].index) and torch.equal(a[k].probs, b[k].probs)
            assert torch.equal(a[k].steps, b[k].steps)
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        del engine.generate
    # other settings, other examples or another teacher are another cache entry
    key = trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, MAX_NEW)
    assert sa["path"].endswith(f"trajectories-{key}.pt")
    others = {trajectory_key(str(tiny_vl_dir), examples, L, 0.5, 0, MAX_NEW),
              trajectory_key(str(tiny_vl_dir), examples, 8, 0.9, 0, MAX_NEW),
              trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 16, MAX_NEW),
              trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, 2 * MAX_NEW),
              trajectory_key(str(tiny_vl_dir), examples[:3], L, 0.9, 0, MAX_NEW),
              trajectory_key(str(tmp_path), examples, L, 0.9, 0, MAX_NEW),
              trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, MAX_NEW, "sequential"),
              trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, MAX_NEW, "sequential", 0.7)}
    assert len(others) == 8 and key not in others
    assert trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, MAX_NEW, "low_confidence_dynamic", 0.0) == key
    # naming the default order keeps the key of caches written before the setting existed
    assert trajectory_key(str(tiny_vl_dir), examples, L, 0.9, 0, MAX_NEW, "low_confidence_dynamic") == key


def test_sequential_trajectories_commit_left_to_right_as_the_engine_does(teacher):
    """`sequential`: one slot per round, left to right, each with the teacher's distribution given the slots
    before it in its block; the tokens are the engine's sequential multi-step decode."""
    engine, examples = teacher
    cfg = teacher_config(L, 0.9, MAX_NEW, "sequential")
    assert (cfg.remasking, cfg.steps) == ("sequential", L)
    gens = engine.generate([e.prompt for e in examples], cfg)
    trajs, stats = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False,
                                        remasking="sequential")
    conf, _ = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False)
    assert trajs and stats["kept"] == len(trajs)
    for i, e in enumerate(examples):
        if e.key not in trajs:
            continue
        t = trajs[e.key]
        assert t.tokens[:len(gens[i].token_ids)] == gens[i].token_ids
        assert t.steps.tolist() == [j % L + 1 for j in range(len(t.tokens))]
        assert t.probs.float().argmax(-1).tolist() == t.tokens
    # the confidence order commits in another order (or several slots in a round): other trajectories
    assert any(not torch.equal(conf[k].steps, trajs[k].steps) for k in conf if k in trajs)


def test_tie_ratio_trajectories_are_the_engine_decode_with_the_tie_break(teacher):
    """A tie ratio reaches the teacher's decode: its trajectories are the engine's sequential decode with the
    same tie-break, committing tokens the plain argmax would not."""
    engine, examples = teacher
    cfg = teacher_config(L, 0.9, MAX_NEW, "sequential", tie_ratio=0.3)
    gens = engine.generate([e.prompt for e in examples], cfg)
    trajs, _ = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False,
                                    remasking="sequential", tie_ratio=0.3)
    plain, _ = collect_trajectories(engine, examples, L, 0.9, max_new_tokens=MAX_NEW, progress=False,
                                    remasking="sequential")
    assert trajs
    for i, e in enumerate(examples):
        if e.key in trajs:
            assert trajs[e.key].tokens[:len(gens[i].token_ids)] == gens[i].token_ids
    assert any(trajs[k].tokens != plain[k].tokens for k in trajs if k in plain)
    # the committed token is not always the stored distribution's argmax any more, but always near it
    for t in trajs.values():
        p = t.probs.float()
        chosen = p.gather(1, torch.tensor(t.tokens)[:, None]).squeeze(1)
        assert bool((chosen >= 0.3 * p.amax(dim=1) - 1e-3).all())


def test_one_step_tie_break_reaches_the_trajectories_and_their_cache_key(teacher, monkeypatch):
    engine, examples = teacher
    seen = []
    generate = engine.generate

    def spy(prompts, cfg, **kw):
        seen.append(cfg)
        return generate(prompts, cfg, **kw)

    monkeypatch.setattr(engine, "generate", spy)
    collect_trajectories(engine, examples[:2], L, 0.9, max_new_tokens=MAX_NEW, progress=False,
                         remasking="sequential", tie_ratio=0.3, tie_break="one_step")
    assert [(c.tie_ratio, c.tie_break, c.remasking) for c in seen] == [(0.3, "one_step", "sequential")]
    key = [trajectory_key("t", examples, L, 0.9, 0, MAX_NEW, "sequential", 0.3, tb)
           for tb in ("lowest_id", "one_step")]
    assert key[0] != key[1]
    # without a tie ratio there is no tie to break: the setting does not split the cache
    assert trajectory_key("t", examples, L, 0.9, 0, MAX_NEW, "sequential", 0.0, "one_step") == \
        trajectory_key("t", examples, L, 0.9, 0, MAX_NEW, "sequential")


def test_a_cache_of_the_whole_set_serves_a_subset(teacher, tiny_vl_dir, tmp_path, monkeypatch):
    engine, examples = teacher
    whole, _ = load_or_collect(tmp_path, str(tiny_vl_dir), engine, examples, L, 0.9, max_new_tokens=MAX_NEW,
                               progress=False)
    calls = []
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1))
    subset = [e for e in examples if e.language == "en"]
    part, st = load_or_collect(tmp_path, str(tiny_vl_dir), engine, subset, L, 0.9, max_new_tokens=MAX_NEW,
                               progress=False, superset=examples)
    assert not calls and st["cached"] is True
    assert part.keys() == {e.key for e in subset if e.key in whole} and part
    assert st["kept"] + st["dropped_unfinished"] == len(subset)
    for k in part:
        assert part[k].tokens == whole[k].tokens and torch.equal(part[k].probs, whole[k].probs)
    with pytest.raises(TypeError):  # another setting: no cache of the whole set, so it decodes (the stub fails)
        load_or_collect(tmp_path, str(tiny_vl_dir), engine, subset, L, 0.5, max_new_tokens=MAX_NEW,
                        progress=False, superset=examples)
    assert calls


def test_collect_by_tie_setting_loads_each_setting_once_and_merges():
    from echocxr.training.trajectories import collect_by_tie_setting

    ex = [TrainExample(prompt=None, response_ids=[], sample_id=f"s{i}", language=lang)
          for i, lang in enumerate(["en", "zh", "en", "zh", "en"])]
    calls = []

    def load(examples, setting, superset):
        ratio, tie_break = setting
        calls.append(([e.key for e in examples], ratio))
        assert superset is (ex if len({e.language for e in examples}) < 2 else None)
        return ({e.key: ratio for e in examples},
                {"kept": len(examples), "dropped_unfinished": 1, "dropped_loop": 0, "cached": ratio == 0.5,
                 "path": f"p{ratio}"})

    ratios = {"en": 0.3}
    trajs, stats = collect_by_tie_setting(ex, lambda e: (ratios.get(e.language, 0.5), "lowest_id"), load)
    assert calls == [(["s0#en", "s2#en", "s4#en"], 0.3), (["s1#zh", "s3#zh"], 0.5)]
    assert trajs == {"s0#en": 0.3, "s2#en": 0.3, "s4#en": 0.3, "s1#zh": 0.5, "s3#zh": 0.5}
    assert stats == {"kept": 5, "dropped_unfinished": 2, "dropped_loop": 0, "cached": False,
                     "path": ["p0.3", "p0.5"], "tie_ratios": {"0.3": 3, "0.5": 2}}
    calls.clear()  # one ratio for all: one call over every example, the stats as load gave them
    trajs, stats = collect_by_tie_setting(ex, lambda e: (0.5, "lowest_id"), load)
    assert calls == [([e.key for e in ex], 0.5)] and stats["path"] == "p0.5"
    calls.clear()  # one ratio, a tie-break per language: two groups, named by both
    trajs, stats = collect_by_tie_setting(ex, lambda e: (0.5, "image" if e.language == "en" else "lowest_id"), load)
    assert calls == [(["s0#en", "s2#en", "s4#en"], 0.5), (["s1#zh", "s3#zh"], 0.5)]
    assert stats["tie_ratios"] == {"0.5 image": 3, "0.5": 2}


def test_trajectory_remasking_is_checked():
    from echocxr.errors import UserError
    from echocxr.training.config import load_config

    assert load_config("dcd", None, trajectory_remasking="sequential").trajectory_remasking == "sequential"
    with pytest.raises(UserError, match="trajectory_remasking"):
        load_config("dcd", None, trajectory_remasking="random")
    with pytest.raises(UserError, match="dcd_target"):
        load_config("dcd", None, dcd_target="onehot")
    assert load_config("dcd", None, trajectory_tie_ratio=0.7).trajectory_tie_ratio == 0.7
    with pytest.raises(UserError, match="trajectory_tie_ratio"):
        load_config("dcd", None, trajectory_tie_ratio=1.0)
    assert load_config("dcd", None, trajectory_tie_break="one_step").trajectory_tie_break == "one_step"
    with pytest.raises(UserError, match="trajectory_tie_break"):
        load_config("dcd", None, trajectory_tie_break="random")
    by_lang = load_config("dcd", None, trajectory_tie_ratio_by_language={"en": 0.3})
    assert by_lang.trajectory_tie_ratio_by_language == {"en": 0.3}
    for bad in ({"en": 1.0}, {"en": "x"}, [0.3], {"en": True}):
        with pytest.raises(UserError, match="trajectory_tie_ratio_by_language"):
            load_config("dcd", None, trajectory_tie_ratio_by_language=bad)
    with pytest.raises(UserError, match="max_examples"):
        load_config("dcd", None, max_examples=-1)
    assert load_config("dcd", None, trajectory_tie_break_by_language={"en": "image"},
                       trajectory_tie_margin=2.0).trajectory_tie_break_by_language == {"en": "image"}
    for bad in ({"en": "random"}, ["image"], {"en": 1}):
        with pytest.raises(UserError, match="trajectory_tie_break_by_language"):
            load_config("dcd", None, trajectory_tie_break_by_language=bad)
    for bad in (-1.0, float("nan"), True, "2"):
        with pytest.raises(UserError, match="trajectory_tie_margin"):
            load_config("dcd", None, trajectory_tie_margin=bad)


def test_dcd_objective_is_the_weighted_kl_to_the_teacher(tiny_text_dir):
    """Phase 2 by hand: the student's logits for block n are a one-step decode given the teacher's earlier
    blocks (all of block n masked); loss = sum_i w_i KL(P_tch[i] || p_student[i]) / sum_i w_i with w_i = s_i
    (SW) + eos_ce * CE(<eos>) on the slots where the teacher wrote <eos>; per-example means, then the mean."""
    from echocxr.diffusion.masks import additive_mask, canvas_groups
    from echocxr.training.config import TrainConfig
    from echocxr.training.objectives import DCDObjective, PromptPositions, TokenIds
    from echocxr.training.trajectories import Trajectory

    bb = load_backbone(tiny_text_dir, dtype="float32")
    tok, mask = bb.tokenizer, bb.mask_token_id
    eos = tok.eos_token_id
    other_stop = 7  # a second end-of-response id (as <|im_end|> beside <|endoftext|>)
    V = bb.model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    examples, trajs = [], {}
    for i, (instr, R) in enumerate([("Write a report.", 8), ("Findings please, and be brief about it.", 12)]):
        e = TrainExample(prompt=engine_prompt(tok, instr), response_ids=[], sample_id=f"x{i}")
        toks = torch.randint(20, 300, (R,), generator=g).tolist()
        toks[R - 3] = eos if i == 0 else other_stop  # a model may end a response with any of its stop ids
        logits = torch.randn(R, V, generator=g) * 2
        trajs[e.key] = Trajectory(e.sample_id, toks, torch.arange(V).expand(R, -1),
                                        torch.softmax(logits, -1).half(),
                                        torch.randint(1, L + 1, (R,), generator=g))
        examples.append(e)
    ids = TokenIds(pad=tok.pad_token_id, mask=mask, eos=eos, stops=(eos, other_stop))

    def by_hand(sw: bool, eos_ce: float, hard: bool = False) -> float:
        per = []
        for e in examples:
            t = trajs[e.key]
            P, R = e.prompt.length, len(t.tokens)
            kl = torch.zeros(R)
            ce = torch.zeros(R)
            for n in range(R // L):
                seq = torch.cat([e.prompt.input_ids, torch.tensor(t.tokens[:n * L] + [mask] * L)])
                grp = canvas_groups(len(seq), P, L, P)
                m = additive_mask((grp[None, :] <= grp[:, None])[None, None], torch.float32)
                with torch.no_grad():
                    out = bb.model(input_ids=seq[None], attention_mask=m,
                                   position_ids=torch.arange(len(seq))[None]).logits[0, -L:]
                logq = torch.log_softmax(out, -1)
                p = t.probs[n * L:(n + 1) * L].float()
                p = p / p.sum(-1, keepdim=True)
                if hard:  # cross-entropy of the committed tokens (a one-hot teacher)
                    p = torch.nn.functional.one_hot(torch.tensor(t.tokens[n * L:(n + 1) * L]), V).float()
                kl[n * L:(n + 1) * L] = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)
                ce[n * L:(n + 1) * L] = -logq[torch.arange(L), torch.tensor(t.tokens[n * L:(n + 1) * L])]
            w = t.steps.float() if sw else torch.ones(R)
            loss = (w * kl).sum() / w.sum()
            is_eos = torch.isin(torch.tensor(t.tokens), torch.tensor([eos, other_stop]))
            if eos_ce:
                loss = loss + eos_ce * ce[is_eos].mean()
            per.append(loss)
        return float(torch.stack(per).mean())

    for sw, eos_ce, target in [(True, 1.0, "soft"), (False, 0.0, "soft"), (True, 0.5, "soft"), (True, 1.0, "hard"),
                               (False, 0.0, "hard")]:
        cfg = TrainConfig(block_length=L, sw=sw, eos_ce=eos_ce, dcd_target=target)
        obj = DCDObjective(PromptPositions(bb.model, False), ids, False, cfg, trajs)
        with torch.no_grad():
            loss, mets = obj(bb.model, examples, [0, 1], 0)
        assert float(loss) == pytest.approx(by_hand(sw, eos_ce, target == "hard"), rel=1e-4, abs=1e-5)
        assert ("eos_ce" in mets) == (eos_ce > 0)
    # the reverse-KL ablation runs and differs
    obj = DCDObjective(PromptPositions(bb.model, False), ids, False, TrainConfig(block_length=L, rkl=True), trajs)
    with torch.no_grad():
        rkl, _ = obj(bb.model, examples, [0, 1], 0)
    assert torch.isfinite(rkl) and float(rkl) != pytest.approx(by_hand(True, 1.0), rel=1e-3)


def test_dcd_label_term_by_hand(tiny_text_dir):
    """DCD + label term = plain DCD + w * BCE of each example's labels read linearly from the state of every
    slot of its one-step blocks (block n all masked after the teacher's blocks < n), averaged over labels, then
    the example's slots, then the batch; a run with label_weight on a stage without the term is refused."""
    from echocxr.diffusion.masks import additive_mask, canvas_groups
    from echocxr.training.config import TrainConfig
    from echocxr.training.objectives import DCDObjective, PromptPositions, TokenIds
    from echocxr.training.trajectories import Trajectory
    from echocxr.training.vision import StateLabelHead

    bb = load_backbone(tiny_text_dir, dtype="float32")
    tok, mask = bb.tokenizer, bb.mask_token_id
    V = bb.model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(1)
    examples, trajs = [], {}
    for i, (R, labels) in enumerate([(8, ("b",)), (12, ("a", "b"))]):
        e = TrainExample(prompt=engine_prompt(tok, f"Report {i}."), response_ids=[], sample_id=f"x{i}",
                         labels=labels)
        toks = torch.randint(20, 300, (R,), generator=g).tolist()
        trajs[e.key] = Trajectory(e.sample_id, toks, torch.arange(V).expand(R, -1),
                                  torch.softmax(torch.randn(R, V, generator=g), -1).half(),
                                  torch.randint(1, L + 1, (R,), generator=g))
        examples.append(e)
    ids = TokenIds(pad=tok.pad_token_id, mask=mask, eos=tok.eos_token_id)
    torch.manual_seed(0)
    head = StateLabelHead(bb.model.config.hidden_size, ("a", "b"))
    cfg = TrainConfig(block_length=L, dcd_target="hard", label_weight=0.5)
    with torch.no_grad():
        plain, _ = DCDObjective(PromptPositions(bb.model, False), ids, False, cfg, trajs)(bb.model, examples, [0, 1], 0)
        total, mets = DCDObjective(PromptPositions(bb.model, False), ids, False, cfg, trajs, head)(
            bb.model, examples, [0, 1], 0)
        per = []
        for e, y in zip(examples, ([0.0, 1.0], [1.0, 1.0]), strict=True):
            t, P = trajs[e.key], e.prompt.length
            states = []
            for n in range(len(t.tokens) // L):
                seq = torch.cat([e.prompt.input_ids, torch.tensor(t.tokens[:n * L] + [mask] * L)])
                grp = canvas_groups(len(seq), P, L, P)
                m = additive_mask((grp[None, :] <= grp[:, None])[None, None], torch.float32)
                out = bb.model(input_ids=seq[None], attention_mask=m, position_ids=torch.arange(len(seq))[None],
                               output_hidden_states=True)
                states.append(out.hidden_states[-1][0, -L:])
            z = head.linear(torch.cat(states))
            target = torch.tensor(y).expand_as(z)
            bce = -(target * torch.log(torch.sigmoid(z)) + (1 - target) * torch.log(1 - torch.sigmoid(z)))
            per.append(bce.mean(-1).mean())
        label = float(torch.stack(per).mean())
    assert mets["label_bce"] == pytest.approx(label, rel=1e-4)
    assert float(total) == pytest.approx(float(plain) + 0.5 * label, rel=1e-4, abs=1e-5)
    assert label > 0.1  # an untrained head: the term is not vanishing


def engine_prompt(tok, instruction: str):
    from echocxr.backbones.prompt import encode_prompt

    return encode_prompt(tok, None, None, instruction=instruction)


def test_ranks_decode_their_share_and_read_one_joined_cache_entry(teacher, tiny_vl_dir, tmp_path):
    """Two ranks, played in this process: rank 1 decodes examples 1, 3, 5 and writes its part; at its second
    barrier rank 0 runs (examples 0, 2, 4), joins both parts in example order and writes the cache entry that
    both then read. The result equals one process decoding everything."""
    engine, examples = teacher
    one, s_one = load_or_collect(tmp_path / "one", str(tiny_vl_dir), engine, examples, L, 0.9,
                                 max_new_tokens=MAX_NEW, progress=False)
    decoded = []
    real = engine.generate

    def recording(prompts, *a, **k):
        decoded.extend(id(p) for p in prompts)
        return real(prompts, *a, **k)

    args = (tmp_path / "two", str(tiny_vl_dir), engine, examples, L, 0.9)
    results, barriers = {}, []

    def rank1_barrier():
        barriers.append(1)
        if len(barriers) == 2:  # rank 1 has written its part: rank 0 runs up to the joined entry
            results[0] = load_or_collect(*args, max_new_tokens=MAX_NEW, progress=False, rank=0, world=2)

    engine.generate = recording
    try:
        results[1] = load_or_collect(*args, max_new_tokens=MAX_NEW, progress=False, rank=1, world=2,
                                     barrier=rank1_barrier)
    finally:
        del engine.generate
    assert len(barriers) == 3
    assert sorted(decoded) == sorted(id(e.prompt) for e in examples)  # each example decoded once, by one rank
    for trajs, stats in results.values():
        assert list(trajs) == list(one)  # example order, as one process writes it
        assert {k: v for k, v in stats.items() if k != "path"} == {k: v for k, v in s_one.items() if k != "path"}
        for k in one:
            assert trajs[k].tokens == one[k].tokens and torch.equal(trajs[k].steps, one[k].steps)
            torch.testing.assert_close(trajs[k].probs, one[k].probs, atol=1e-3, rtol=0)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [Path(s_one["path"]).name]  # parts removed
    again, s_again = load_or_collect(*args, max_new_tokens=MAX_NEW, progress=False, rank=1, world=2)
    assert s_again["cached"] is True and list(again) == list(one)


def test_a_study_in_two_languages_keeps_both_trajectories(teacher):
    """A bilingual set holds each study once per language under one sample_id: each language's decode must
    stay its own trajectory (keying by sample_id alone trained English students on Chinese trajectories)."""
    engine, examples = teacher
    e = examples[0]
    pair = [TrainExample(prompt=engine.encode([_image(0, 64, 64)], lang=lang), response_ids=[], sample_id="same",
                         language=lang) for lang in ("en", "zh")]
    trajs, stats = collect_trajectories(engine, pair, L, 0.9, max_new_tokens=MAX_NEW, progress=False)
    assert e.key != pair[0].key and pair[0].key != pair[1].key
    gens, _ = engine_reference(engine, pair, 0.9)
    for p, g in zip(pair, gens, strict=True):
        if g.stop == "eos" and not has_repetition_loop(g.token_ids):
            assert trajs[p.key].tokens[:len(g.token_ids)] == g.token_ids
    assert len(trajs) == stats["kept"]
