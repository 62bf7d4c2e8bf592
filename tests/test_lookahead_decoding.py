"""d3LLM's look-ahead (multi-block) decoding in the reference engine: the opening rule by hand (stub logits),
exactness (cache vs recompute, batch vs alone, threshold 1 = plain multistep), stops, validation, settings."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from echocxr.backbones.settings import (
    DEFAULT_LOOKAHEAD_THRESHOLD,
    MAX_LOOKAHEAD,
    ModelSettings,
    read_settings,
)
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.errors import UserError
from tests.test_engine import text_prompts, vl_prompts

MULTISTEP = dict(decoder="multistep", block_length=4, steps=4)
# the tiny random checkpoints' distributions are near flat (entropy ~6 nats, top probability 0.01-0.04): by
# confidence 0.02 some, not all, of a block passes; by entropy (bounds in [0, 1]) nothing does, so there the
# look-ahead blocks are fed but commit nothing, and the stub logits below check the rule by hand
ENTROPY = dict(MULTISTEP, remasking="low_entropy_dynamic", threshold=0.5)
CONFIDENCE = dict(MULTISTEP, remasking="low_confidence_dynamic", threshold=0.02)


def run(engine, prompts, cfg):
    """The generations and every step event: (sample, block, step) -> (event, its look-ahead blocks)."""
    events = {}

    def hook(ev):
        if ev.kind == "step":
            assert (ev.sample, ev.block, ev.step) not in events  # one event per sample and forward
            events[(ev.sample, ev.block, ev.step)] = ev

    return engine.generate(prompts, cfg, on_event=hook), events


def ahead_commits(events) -> int:
    return sum(sum(b["committed"]) for ev in events.values() for b in ev.extra.get("lookahead", []))


# ---- the rule by hand: stub logits ------------------------------------------------------------------
T = 7  # the token every stub position predicts (unless it is the <eos> slot)


def stub_logits(engine, sure_offsets=(0, 1), eos_at=None, sure_by_sample=None):
    """A `_step_logits` replacement: every fed position predicts T, with probability 0.99 at the block
    offsets in `sure_offsets` (or `sure_by_sample[sample]`) and 0.25 elsewhere; `eos_at` = (block, offset)
    predicts <eos> instead."""
    V = engine.model.get_output_embeddings().weight.shape[0]
    sure, unsure = math.log(0.99 * (V - 1) / 0.01), math.log(0.25 * (V - 1) / 0.75)

    def fake(batch, q0, q1, cfg, denoise=False, width=None):
        n = width if width is not None else cfg.block_length
        L = cfg.block_length
        cols = torch.arange(q1 - n, q1)
        off, blk = (cols - batch.C) % L, (cols - batch.C) // L
        logits = torch.zeros(len(batch), n, V)
        token = torch.full((n,), T)
        if eos_at is not None:
            token[(blk == eos_at[0]) & (off == eos_at[1])] = engine.bb.eos_token_ids[0]
        for r in range(len(batch)):
            offsets = sure_offsets if sure_by_sample is None else sure_by_sample[int(batch.index[r])]
            value = torch.where(torch.isin(off, torch.tensor(offsets, dtype=torch.long)), sure, unsure)
            logits[r, torch.arange(n), token] = value.float()
        return logits

    return fake


def trace(events):
    """Per forward in order: (block, step, current block's commits, [(look-ahead block, its commits)])."""
    out = []
    for (_, block, step), ev in sorted(events.items()):
        out.append((block, step, [int(c) for c in ev.committed],
                    [(b["block"], [int(c) for c in b["committed"]]) for b in ev.extra["lookahead"]]))
    return out


STUB_CFG = DecodeConfig(decoder="multistep", block_length=4, steps=4, remasking="low_confidence_dynamic",
                        threshold=0.5, max_new_tokens=12, prefill="response_aligned")


@pytest.mark.parametrize("lookahead,thr,expected", [
    # block 0 is half committed after its first forward: block 1 joins at the second (share 0.5 >= 0.5)
    (1, 0.5, [(0, 0, [1, 1, 0, 0], []), (0, 1, [0, 0, 1, 0], [(1, [1, 1, 0, 0])]), (0, 2, [0, 0, 0, 1], [(1, [0] * 4)]),
              (1, 0, [0, 0, 1, 0], [(2, [1, 1, 0, 0])]), (1, 1, [0, 0, 0, 1], [(2, [0] * 4)]),
              (2, 0, [0, 0, 1, 0], []), (2, 1, [0, 0, 0, 1], [])]),
    # 3 of 4 needed: block 1 joins one forward later, block 2 only once block 1 is 3/4 committed
    (1, 0.75, [(0, 0, [1, 1, 0, 0], []), (0, 1, [0, 0, 1, 0], []), (0, 2, [0, 0, 0, 1], [(1, [1, 1, 0, 0])]),
               (1, 0, [0, 0, 1, 0], []), (1, 1, [0, 0, 0, 1], [(2, [1, 1, 0, 0])]),
               (2, 0, [0, 0, 1, 0], []), (2, 1, [0, 0, 0, 1], [])]),
    # threshold 0: a block joins every forward (one a forward, never two), up to two blocks ahead
    (2, 0.0, [(0, 0, [1, 1, 0, 0], [(1, [1, 1, 0, 0])]),
              (0, 1, [0, 0, 1, 0], [(1, [0] * 4), (2, [1, 1, 0, 0])]),
              (0, 2, [0, 0, 0, 1], [(1, [0] * 4), (2, [0] * 4)]),
              (1, 0, [0, 0, 1, 0], [(2, [0] * 4)]), (1, 1, [0, 0, 0, 1], [(2, [0] * 4)]),
              (2, 0, [0, 0, 1, 0], []), (2, 1, [0, 0, 0, 1], [])]),
    # threshold 1: the next block would join only once the current one is full, i.e. never early: plain
    # multistep, per block the two sure positions, then one unsure position a forward
    (1, 1.0, [(b, s, c, []) for b in range(3) for s, c in enumerate([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])]),
])
@pytest.mark.parametrize("use_cache", [True, False])
def test_opening_rule_by_hand(text_engine, monkeypatch, lookahead, thr, expected, use_cache):
    monkeypatch.setattr(text_engine, "_step_logits", stub_logits(text_engine))
    prompts = [text_engine.encode(None, instruction="Write a report.")]
    cfg = replace(STUB_CFG, lookahead=lookahead, lookahead_threshold=thr, use_cache=use_cache)
    (out,), events = run(text_engine, prompts, cfg)
    assert trace(events) == expected
    assert out.token_ids == [T] * 12 and out.stop == "length"
    assert out.forwards == len(expected) and out.tokens == 12
    (plain,), _ = run(text_engine, prompts, replace(STUB_CFG, use_cache=use_cache))
    assert plain.forwards == 9 and plain.token_ids == out.token_ids


@pytest.mark.parametrize("eos_at,kept,forwards", [
    ((1, 1), 5, (5, 6)),  # <eos> committed ahead, in block 1: block 0 goes on, block 2 never joins
    ((0, 2), 2, (3, 3)),  # <eos> in the current block while block 1 commits ahead: those tokens are cut
])
def test_eos_stops_as_plain_multistep(text_engine, monkeypatch, eos_at, kept, forwards):
    assert text_engine.bb.eos_token_ids
    monkeypatch.setattr(text_engine, "_step_logits", stub_logits(text_engine, eos_at=eos_at))
    prompts = [text_engine.encode(None, instruction="Write a report.")]
    (plain,), _ = run(text_engine, prompts, STUB_CFG)
    (ahead,), events = run(text_engine, prompts, replace(STUB_CFG, lookahead=1, lookahead_threshold=0.5))
    for out in (plain, ahead):
        assert out.stop == "eos" and out.token_ids == [T] * kept and out.tokens == kept + 1
    assert (ahead.forwards, plain.forwards) == forwards
    assert all(b["block"] <= 1 for ev in events.values() for b in ev.extra["lookahead"])
    if eos_at == (0, 2):
        assert ahead_commits(events) == 2  # committed in block 1, then dropped with the rest after the <eos>


def test_a_block_fed_for_another_sample_is_not_committed(text_engine, monkeypatch):
    """Sample 0 opens block 1 after one forward, sample 1 only after three: meanwhile the batch's forwards
    feed sample 1's block 1 too (sure at offset 0), which it must leave alone until it opens it itself."""
    sure = {0: (0, 1, 2), 1: (0,)}
    monkeypatch.setattr(text_engine, "_step_logits", stub_logits(text_engine, sure_by_sample=sure))
    prompts = text_prompts(text_engine)[:2]
    cfg = replace(STUB_CFG, max_new_tokens=8, lookahead=1, lookahead_threshold=0.75)
    outs, events = run(text_engine, prompts, cfg)
    per_sample = [trace({k: v for k, v in events.items() if k[0] == i}) for i in range(2)]
    assert per_sample[0] == [(0, 0, [1, 1, 1, 0], []), (0, 1, [0, 0, 0, 1], [(1, [1, 1, 1, 0])]),
                             (1, 0, [0, 0, 0, 1], [])]
    assert per_sample[1] == [(0, 0, [1, 0, 0, 0], []), (0, 1, [0, 1, 0, 0], []), (0, 2, [0, 0, 1, 0], []),
                             (0, 3, [0, 0, 0, 1], [(1, [1, 0, 0, 0])]),
                             (1, 0, [0, 1, 0, 0], []), (1, 1, [0, 0, 1, 0], []), (1, 2, [0, 0, 0, 1], [])]
    assert [o.forwards for o in outs] == [3, 7]
    for i, p in enumerate(prompts):
        monkeypatch.setattr(text_engine, "_step_logits", stub_logits(text_engine, sure_by_sample={0: sure[i]}))
        (alone,), ev = run(text_engine, [p], cfg)
        assert trace({(0, *k[1:]): v for k, v in ev.items()}) == per_sample[i] and alone.forwards == outs[i].forwards


def test_a_block_past_max_new_tokens_never_joins(text_engine, monkeypatch):
    """Block-grid batch: the samples' responses start at different columns, so the canvas's last block lies
    past some samples' max_new_tokens (7): those never open it, the sample that reaches into it does."""
    monkeypatch.setattr(text_engine, "_step_logits", stub_logits(text_engine))
    prompts = text_prompts(text_engine)
    assert [p.length % 4 for p in prompts] == [2, 1, 1]  # responses start 2, 1, 1 columns into the first block
    cfg = replace(STUB_CFG, prefill="block_grid", max_new_tokens=7, lookahead=2, lookahead_threshold=0.0)
    outs, events = run(text_engine, prompts, cfg)
    opened = {i: {b["block"] for (s, _, _), ev in events.items() if s == i for b in ev.extra["lookahead"]}
              for i in range(3)}
    assert opened == {0: {1, 2}, 1: {1}, 2: {1}}
    assert all(b["response_offset"] < 7 for ev in events.values() for b in ev.extra["lookahead"])
    assert all(o.stop == "length" and o.token_ids == [T] * 7 for o in outs)
    alone = [run(text_engine, [p], cfg)[0][0] for p in prompts]
    assert [(o.token_ids, o.forwards) for o in outs] == [(o.token_ids, o.forwards) for o in alone]


# ---- exactness on the tiny checkpoints ------------------------------------------------------------------
@pytest.mark.parametrize("dec", [ENTROPY, CONFIDENCE], ids=["entropy", "confidence"])
@pytest.mark.parametrize("lookahead", [1, 2])
@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
def test_threshold_that_never_opens_early_is_plain_multistep(text_engine, dec, lookahead, prefill):
    prompts = text_prompts(text_engine)
    cfg = DecodeConfig(max_new_tokens=16, prefill=prefill, **dec)
    plain, ev_p = run(text_engine, prompts, cfg)
    ahead, ev_a = run(text_engine, prompts, replace(cfg, lookahead=lookahead, lookahead_threshold=1.0))
    assert [o.token_ids for o in ahead] == [o.token_ids for o in plain]
    assert [(o.forwards, o.tokens, o.stop) for o in ahead] == [(o.forwards, o.tokens, o.stop) for o in plain]
    assert [o.token_confidences for o in ahead] == [o.token_confidences for o in plain]
    assert ev_a.keys() == ev_p.keys() and ahead_commits(ev_a) == 0
    for k, ev in ev_p.items():
        assert (ev_a[k].tokens, ev_a[k].committed, ev_a[k].response_offset) == (ev.tokens, ev.committed,
                                                                                 ev.response_offset)


def assert_cached_equals_uncached(engine, prompts, cfg) -> dict:
    cached, ev_c = run(engine, prompts, replace(cfg, record_logits=True))
    plain, ev_p = run(engine, prompts, replace(cfg, record_logits=True, use_cache=False))
    assert [o.token_ids for o in cached] == [o.token_ids for o in plain]
    assert [o.forwards for o in cached] == [o.forwards for o in plain]
    assert ev_c.keys() == ev_p.keys()
    for k, ev in ev_c.items():
        torch.testing.assert_close(ev.logits, ev_p[k].logits, atol=1e-5, rtol=0)
        assert len(ev.extra["lookahead"]) == len(ev_p[k].extra["lookahead"])
        for a, b in zip(ev.extra["lookahead"], ev_p[k].extra["lookahead"], strict=True):
            assert (a["block"], a["tokens"], a["committed"]) == (b["block"], b["tokens"], b["committed"])
            torch.testing.assert_close(a["logits"], b["logits"], atol=1e-5, rtol=0)
    return ev_c


@pytest.mark.parametrize("dec", [ENTROPY, CONFIDENCE], ids=["entropy", "confidence"])
@pytest.mark.parametrize("lookahead,thr", [(1, 0.25), (2, 0.0), (2, 0.5)])
@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
def test_cached_equals_uncached(text_engine, dec, lookahead, thr, prefill):
    cfg = DecodeConfig(max_new_tokens=16, prefill=prefill, lookahead=lookahead, lookahead_threshold=thr, **dec)
    events = assert_cached_equals_uncached(text_engine, text_prompts(text_engine), cfg)
    assert any(ev.extra["lookahead"] for ev in events.values())  # look-ahead blocks were fed
    if dec is CONFIDENCE:
        assert ahead_commits(events) > 0


@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
def test_cached_equals_uncached_vl(vl_engine, images, prefill):
    cfg = DecodeConfig(max_new_tokens=12, prefill=prefill, lookahead=2, lookahead_threshold=0.0, **CONFIDENCE)
    assert ahead_commits(assert_cached_equals_uncached(vl_engine, vl_prompts(vl_engine, images), cfg)) > 0


@pytest.mark.parametrize("lookahead,thr", [(1, 0.25), (2, 0.0)])
@pytest.mark.parametrize("prefill", ["block_grid", "response_aligned"])
def test_batch_equals_one_by_one(vl_engine, images, lookahead, thr, prefill):
    prompts = vl_prompts(vl_engine, images)
    assert len({p.length for p in prompts}) == 3  # really mixed lengths
    cfg = DecodeConfig(max_new_tokens=14, prefill=prefill, lookahead=lookahead, lookahead_threshold=thr, **CONFIDENCE)
    batched, events = run(vl_engine, prompts, cfg)
    assert any(ev.extra["lookahead"] for ev in events.values()) and (thr > 0 or ahead_commits(events) > 0)
    alone = [vl_engine.generate([p], cfg)[0] for p in prompts]
    for b, a in zip(batched, alone, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert (b.tokens, b.forwards, b.stop) == (a.tokens, a.forwards, a.stop)


def test_text_batch_equals_one_by_one(text_engine):
    prompts = text_prompts(text_engine)
    cfg = DecodeConfig(max_new_tokens=16, prefill="block_grid", lookahead=2, lookahead_threshold=0.0, **CONFIDENCE)
    batched = text_engine.generate(prompts, cfg)
    alone = [text_engine.generate([p], cfg)[0] for p in prompts]
    assert [(o.token_ids, o.forwards) for o in batched] == [(o.token_ids, o.forwards) for o in alone]


@pytest.mark.parametrize("threshold", [0.02, 0.025])
def test_look_ahead_saves_forwards(text_engine, threshold):
    prompts = text_prompts(text_engine)
    cfg = DecodeConfig(max_new_tokens=16, prefill="response_aligned", **{**CONFIDENCE, "threshold": threshold})
    plain = text_engine.generate(prompts, cfg)
    for lookahead in (1, 2):
        ahead, events = run(text_engine, prompts, replace(cfg, lookahead=lookahead, lookahead_threshold=0.0))
        assert ahead_commits(events) > 0
        assert all(a.forwards <= p.forwards for a, p in zip(ahead, plain, strict=True))
        assert sum(a.forwards for a in ahead) < sum(p.forwards for p in plain)
        # each forward counted once per sample: one step event per sample and forward
        for i, a in enumerate(ahead):
            assert a.forwards == sum(1 for (s, _, _) in events if s == i)


def test_look_ahead_is_decoded_by_the_reference_engine(text_engine):
    from echocxr.decoding.fast_engine import FastPath

    cfg = DecodeConfig(max_new_tokens=8, **ENTROPY)
    fast = FastPath(text_engine, compile=False)
    assert fast.supports(cfg) and not fast.supports(replace(cfg, lookahead=1))


# ---- validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,needle", [
    (dict(lookahead=-1), "lookahead must be a whole number of blocks"),
    (dict(lookahead=MAX_LOOKAHEAD + 1), "lookahead must be a whole number of blocks"),
    (dict(lookahead=True), "lookahead must be a whole number of blocks"),
    (dict(lookahead=1.5), "lookahead must be a whole number of blocks"),
    (dict(lookahead_threshold=1.5), "lookahead threshold must be in [0, 1]"),
    (dict(lookahead_threshold=-0.1), "lookahead threshold must be in [0, 1]"),
    (dict(lookahead_threshold=float("nan")), "lookahead threshold must be in [0, 1]"),
    (dict(lookahead=1, decoder="onestep"), "--lookahead applies to the multistep decoder, not onestep"),
    (dict(lookahead=1, decoder="ar"), "--lookahead applies to the multistep decoder, not ar"),
    (dict(lookahead=1, remasking="sequential"), "--lookahead needs a threshold remasking"),
    (dict(lookahead=1, remasking="low_confidence_static"), "--lookahead needs a threshold remasking"),
    (dict(lookahead=1, tie_ratio=0.5, tie_break="one_step"), "--tie-break one_step does not combine"),
])
def test_bad_lookahead_is_a_one_line_user_error(kw, needle):
    with pytest.raises(UserError) as exc:
        DecodeConfig(**{**ENTROPY, **kw}).validate()
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kw", [dict(lookahead=-1), dict(lookahead=MAX_LOOKAHEAD + 1), dict(lookahead=1.5),
                                dict(lookahead_threshold=1.5), dict(lookahead_threshold="0.5")])
def test_a_model_with_a_bad_lookahead_setting_is_refused_as_a_decode_call_is(kw):
    with pytest.raises(UserError) as from_settings:
        ModelSettings(block_length=4, decoder="multistep", steps=4, **kw).validate()
    assert "lookahead" in str(from_settings.value) and "\n" not in str(from_settings.value)
    with pytest.raises(UserError) as from_call:
        DecodeConfig(**{**ENTROPY, **kw}).validate()
    assert str(from_call.value) == str(from_settings.value)  # one check serves both


def test_valid_lookahead_settings_pass():
    DecodeConfig(**ENTROPY, lookahead=MAX_LOOKAHEAD, lookahead_threshold=0.0).validate()
    DecodeConfig(**CONFIDENCE, lookahead=1, lookahead_threshold=1.0, tie_ratio=0.5).validate()
    DecodeConfig(decoder="onestep", lookahead=0, lookahead_threshold=0.3).validate()  # off: any decoder


def test_cli_lookahead_options(tiny_vl_dir, tmp_path, capsys):
    from echocxr.cli import build_parser, main
    from echocxr.decoding.options import decode_config_from_options
    from tests.conftest import random_image

    image = tmp_path / "x.png"
    random_image(0, 64, 64).save(image)
    base = ["report", "--model", str(tiny_vl_dir), "--image", str(image), "--max-new-tokens", "8"]
    ok = base + ["--decoder", "multistep", "--block-length", "4", "--remasking", "low_entropy_dynamic",
                 "--threshold", "0.5", "--lookahead", "2", "--lookahead-threshold", "0.25", "--json"]
    assert main(ok) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decoder"] == "multistep" and out["forwards"] >= 1
    for args, needle in [(["--decoder", "onestep", "--lookahead", "1"], "--lookahead applies to the multistep"),
                         (["--decoder", "multistep", "--lookahead", "1", "--lookahead-threshold", "2"],
                          "lookahead threshold must be in [0, 1]"),
                         (["--decoder", "multistep", "--remasking", "sequential", "--lookahead", "1"],
                          "needs a threshold remasking")]:
        assert main(base + args) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--lookahead", "two"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--lookahead: invalid int value" in err and len(err.strip().splitlines()) == 1
    # eval (and serve, bench, demo) share the decoding options
    args = build_parser().parse_args(["eval", "--model", str(tiny_vl_dir), "--lookahead", "3",
                                      "--lookahead-threshold", "0.2", "--decoder", "multistep"])
    assert (args.lookahead, args.lookahead_threshold) == (3, 0.2)
    from echocxr.backbones.loading import load_backbone

    cfg = decode_config_from_options(ReportEngine(load_backbone(tiny_vl_dir)), args)
    assert (cfg.decoder, cfg.lookahead, cfg.lookahead_threshold) == ("multistep", 3, 0.2)


# ---- settings and the d3LLM baseline ------------------------------------------------------------------------
def test_d3llm_baseline_carries_its_look_ahead_and_settings_round_trip(tmp_path):
    from echocxr.training.baselines import baseline_decoding

    d3 = baseline_decoding("d3llm", 8)
    assert d3 == {"steps": 8, "remasking": "low_entropy_dynamic", "threshold": 0.5, "lookahead": MAX_LOOKAHEAD,
                  "lookahead_threshold": 0.1}
    assert DEFAULT_LOOKAHEAD_THRESHOLD == 0.1  # d3LLM's released block_add_threshold (LLaDA and Dream)
    assert "lookahead" not in baseline_decoding("dparallel", 8)
    s = ModelSettings(block_length=8, prefill="response_aligned", decoder="multistep", stage="d3llm", **d3)
    s.save(tmp_path)
    assert read_settings(tmp_path) == s and read_settings(tmp_path).lookahead == MAX_LOOKAHEAD
    DecodeConfig(decoder="multistep", block_length=8, **d3).validate()
    # an echocxr.json written before look-ahead existed: off
    (tmp_path / "echocxr.json").write_text(json.dumps({"block_length": 4, "decoder": "multistep", "steps": 4}))
    old = read_settings(tmp_path)
    assert (old.lookahead, old.lookahead_threshold) == (0, DEFAULT_LOOKAHEAD_THRESHOLD)
    for bad in ({"lookahead": -1}, {"lookahead": "2"}, {"lookahead": True}, {"lookahead_threshold": 2}):
        (tmp_path / "echocxr.json").write_text(json.dumps({"decoder": "multistep", **bad}))
        with pytest.raises(UserError) as exc:
            read_settings(tmp_path)
        assert "\n" not in str(exc.value) and "echocxr.json" in str(exc.value)


def test_stage_settings_of_d3llm_decode_with_look_ahead(tmp_path):
    from echocxr.training.config import load_config
    from echocxr.training.stages import StageRequest, stage_settings

    cfg = load_config("dcd", "phantom-demo")
    s = stage_settings("d3llm", cfg, StageRequest("d3llm", cfg, tmp_path / "out"))
    assert (s.decoder, s.remasking, s.lookahead, s.lookahead_threshold) == (
        "multistep", "low_entropy_dynamic", MAX_LOOKAHEAD, 0.1)
    assert stage_settings("dparallel", cfg, StageRequest("dparallel", cfg, tmp_path / "out")).lookahead == 0


def test_default_config_passes_the_models_look_ahead_to_multistep_only(tiny_text_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.serving.app import ReportService

    bb = load_backbone(tiny_text_dir)
    bb.settings = ModelSettings(block_length=4, decoder="multistep", steps=4, remasking="low_entropy_dynamic",
                                threshold=0.5, lookahead=3, lookahead_threshold=0.2)
    engine = ReportEngine(bb)
    cfg = engine.default_config()
    assert (cfg.lookahead, cfg.lookahead_threshold) == (3, 0.2)
    assert engine.default_config(lookahead=1, lookahead_threshold=0.5).lookahead == 1
    assert engine.default_config(decoder="onestep").validate().lookahead == 0
    assert engine.default_config(decoder="ar").validate().lookahead == 0
    # a remasking of the caller's that look-ahead cannot go with drops the model's look-ahead, not the request
    assert engine.default_config(remasking="sequential").validate().lookahead == 0
    assert engine.default_config(remasking="low_confidence_dynamic").lookahead == 3
    with pytest.raises(UserError, match="needs a threshold remasking"):
        engine.default_config(remasking="sequential", lookahead=2).validate()
    # a one-step model asked for multistep gets the model's (here none) look-ahead
    bb.settings = ModelSettings(block_length=4, decoder="onestep", steps=1)
    assert engine.default_config(decoder="multistep").lookahead == 0
    # the server: a request that leaves multistep leaves look-ahead too
    bb.settings = ModelSettings(block_length=4, decoder="multistep", steps=4, remasking="low_entropy_dynamic",
                                lookahead=2)
    service = SimpleNamespace(base=engine.default_config().validate(), engine=engine)
    assert ReportService.decode_config(service, {"decoder": "onestep"}).lookahead == 0
    assert ReportService.decode_config(service, {"steps": 2}).lookahead == 2
    bb.settings = ModelSettings(block_length=4, decoder="onestep", steps=1, lookahead=2)
    service = SimpleNamespace(base=engine.default_config().validate(), engine=engine)
    assert service.base.lookahead == 0
    assert ReportService.decode_config(service, {"decoder": "multistep"}).lookahead == 2


def test_describe_decoder_names_the_look_ahead():
    from echocxr.clinical.record import describe_decoder

    text = describe_decoder(DecodeConfig(**ENTROPY, lookahead=2, lookahead_threshold=0.1))
    assert "look-ahead up to 2 blocks" in text and "0.1" in text
    assert "look-ahead" not in describe_decoder(DecodeConfig(**ENTROPY))
