"""Distillation baselines: hand-checked loss formulas, keyed masks, determinism, and each loss falling on a tiny
overfit case (a tiny Qwen2 and hand-made teacher trajectories)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echocxr.backbones.prompt import EncodedPrompt
from echocxr.training.baselines import (
    BASELINES,
    CD4LMObjective,
    D3LLMObjective,
    DParallelObjective,
    T3DObjective,
    block_logprob_sums,
    certainty_forcing_loss,
    commit_order_mask,
    complementary_block_masks,
    consistency_loss,
    curriculum_ratio,
    ddo_loss,
    dpo_loss,
    make_baseline_objective,
    mean_over_examples,
    nested_block_masks,
)
from echocxr.training.config import TrainConfig
from echocxr.training.examples import TrainExample
from echocxr.training.objectives import PromptPositions, TokenIds
from echocxr.training.trajectories import Trajectory

L = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits that cost 10-50x on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- pure maths, by hand

def test_mean_over_examples_keeps_empty_rows_as_zero():
    v = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    w = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert float(mean_over_examples(v, w)) == pytest.approx((2.0 + 0.0) / 2)


def test_certainty_forcing_by_hand():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [3.0, 0.0, 0.0]]])
    targets = torch.tensor([[0, 2, 1]])
    noised = torch.tensor([[True, True, False]])  # slot 2 visible: unscored
    loss, m = certainty_forcing_loss(logits, targets, noised, entropy_weight=2.0, temperature=0.5)
    ce = (-math.log(softmax([2.0, 0.0, -1.0])[0]) - math.log(softmax([0.0, 1.0, 0.5])[2])) / 2
    p = softmax([4.0, 0.0, -2.0])  # slot 0 only is correct (argmax 0 == 0); logits / T
    ent = -sum(q * math.log(q) for q in p)
    assert m["ce"] == pytest.approx(ce, rel=1e-5)
    assert m["entropy"] == pytest.approx(ent, rel=1e-5)
    assert float(loss) == pytest.approx(ce + 2.0 * ent, rel=1e-5)
    assert m["correct_frac"] == pytest.approx(0.5)


def test_consistency_loss_by_hand():
    high = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 0.0, 0.0]]])
    low = torch.tensor([[[0.0, 1.0, 0.0], [9.0, 9.0, 9.0], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([[0, 1, 2]])
    high_mask = torch.tensor([[True, True, False]])
    low_mask = torch.tensor([[True, False, False]])  # slot 1 visible to the low-noise view -> one-hot target
    lam, T = 0.7, 2.0
    loss, m = consistency_loss(high, low, targets, high_mask, low_mask, lam, T)
    p0, q0 = softmax([0.0, 0.5, 0.0]), softmax([0.5, 0.0, 0.0])
    kl0 = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p0, q0, strict=True))
    kl1 = -math.log(softmax([0.0, 1.0, 0.0])[1])
    kl = (kl0 + kl1) / 2 * T * T
    ce = (-math.log(softmax([1.0, 0.0, 0.0])[0]) - math.log(softmax([0.0, 2.0, 0.0])[1])) / 2
    assert m["kl"] == pytest.approx(kl, rel=1e-5)
    assert m["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(lam * kl + (1 - lam) * ce, rel=1e-5)


def test_block_sums_and_preference_losses_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.3, 0.7]]]))
    labels = torch.tensor([[0, 1, 0, 1]])
    valid = torch.tensor([[True, True, True, False]])
    sums = block_logprob_sums(logits, labels, valid, 2)
    assert sums.tolist()[0] == pytest.approx([math.log(0.5 * 0.8), math.log(0.9)], rel=1e-5)

    pc, pr, rc, rr = (torch.tensor([[v]]) for v in (-1.0, -2.0, -1.5, -1.5))
    w = torch.ones(1, 1)
    assert float(dpo_loss(pc, pr, rc, rr, 0.1, w)) == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))), rel=1e-6)
    ddo = -math.log(1 / (1 + math.exp(-0.05))) - 2.0 * math.log(1 - 1 / (1 + math.exp(0.05)))
    assert float(ddo_loss(pc, pr, rc, rr, 0.1, w, alpha=2.0)) == pytest.approx(ddo, rel=1e-6)


def test_masks_and_curriculum():
    g = torch.Generator().manual_seed(0)
    steps = [1, 3, 2, 3, 2, 1, 1, 4]  # two blocks; later-committed slots are masked first
    assert commit_order_mask(steps, L, 0.5, g) == [False, True, False, True, True, False, False, True]
    m = commit_order_mask(steps, L, 0.75, g)
    assert m[:4] == [False, True, True, True] and m[4] and m[7] and m[5] + m[6] == 1  # tie 5/6 broken at random
    assert sum(commit_order_mask(steps, L, 0.5, g, reverse_order=False)) == 4
    assert all(commit_order_mask(steps, L, 1.0, g))
    assert sum(commit_order_mask(steps, L, 0.0, g)) == 2  # at least one slot per block
    assert curriculum_ratio(0.0) == pytest.approx(0.25)
    assert curriculum_ratio(0.375) == pytest.approx(0.625)
    assert curriculum_ratio(0.75) == curriculum_ratio(1.0) == pytest.approx(1.0)
    for seed in range(20):
        hi, lo = nested_block_masks(8, L, torch.Generator().manual_seed(seed))
        assert all(h or not lw for h, lw in zip(hi, lo, strict=True)) and sum(lo) < sum(hi)
        assert all(sum(hi[b:b + L]) >= 1 for b in (0, L))
        a, b = complementary_block_masks(8, L, torch.Generator().manual_seed(seed))
        assert [not x for x in a] == b and all(sum(a[k:k + L]) >= 1 for k in (0, L))


# ---------------------------------------------------------------- objectives on a tiny model

@pytest.fixture
def setup(tokenizer):
    from echocxr.backbones.tiny import build_tiny_model

    model = build_tiny_model("qwen2", tokenizer, init_std=0.1).train()
    eos = tokenizer.eos_token_id
    ids = TokenIds(pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id, eos=eos)
    reports = {"a": [324, 514, 437, 520, 435, 522, 28, eos], "b": [363, 384, 492, 28, 517, 355, eos, eos]}
    steps = {"a": [1, 2, 2, 3, 1, 1, 2, 3], "b": [2, 1, 3, 3, 1, 2, 1, 1]}
    trajs, examples = {}, []
    for k, (sid, toks) in enumerate(reports.items()):
        prompt_ids = torch.tensor([5 + k, 40, 41, 42 + k, 43])
        examples.append(TrainExample(prompt=EncodedPrompt(prompt_ids, torch.zeros_like(prompt_ids)),
                                     response_ids=toks, sample_id=sid))
        trajs[f"{sid}#en"] = Trajectory(sample_id=sid, tokens=toks, index=torch.tensor(toks)[:, None],
                                probs=torch.ones(len(toks), 1), steps=torch.tensor(steps[sid]))
    cfg = TrainConfig(block_length=L, mixed_precision="no", seed=3)
    return model, PromptPositions(model, False), ids, cfg, trajs, examples


OPTIONS = {"d3llm": dict(num_train=2), "t3d": {}, "dparallel": {}, "cd4lm": {}}


@pytest.mark.parametrize("stage", BASELINES)
def test_loss_is_deterministic_and_falls(setup, stage):
    model, positions, ids, cfg, trajs, examples = setup
    obj = make_baseline_objective(stage, positions, ids, False, cfg, trajs, **OPTIONS[stage])
    first, _ = obj(model, examples, [0, 1], 0)
    again, _ = obj(model, examples, [0, 1], 0)
    assert torch.isfinite(first) and float(first.detach()) == float(again.detach())
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, metrics = obj(model, examples, [0, 1], 0)
        assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("stage", BASELINES)
def test_noise_is_keyed_by_example_so_any_split_matches(setup, stage):
    model, positions, ids, cfg, trajs, examples = setup
    obj = make_baseline_objective(stage, positions, ids, False, cfg, trajs, **OPTIONS[stage])
    with torch.no_grad():
        whole, _ = obj(model, examples, [0, 1], 4)
        parts = [obj(model, [e], [i], 4)[0] for i, e in enumerate(examples)]
        other_epoch, _ = obj(model, examples, [0, 1], 5)
    assert float(whole) == pytest.approx(float(sum(parts)) / 2, rel=1e-4)
    if stage in ("dparallel", "cd4lm"):  # random masks: a new epoch draws new ones
        assert float(other_epoch) != pytest.approx(float(whole), rel=1e-4)


@pytest.mark.parametrize("kw", [dict(form="ddo"), dict(rejected="student", ce_weight=0.5)])
def test_t3d_variants_fall(setup, kw):
    model, positions, ids, cfg, trajs, examples = setup
    obj = T3DObjective(positions, ids, False, cfg, trajs, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, metrics = obj(model, examples, [0, 1], 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0], losses


def test_factory_types_and_errors(setup):
    model, positions, ids, cfg, trajs, _ = setup
    kinds = {"dparallel": DParallelObjective, "cd4lm": CD4LMObjective, "d3llm": D3LLMObjective, "t3d": T3DObjective}
    for stage, cls in kinds.items():
        assert isinstance(make_baseline_objective(stage, positions, ids, False, cfg, trajs), cls)
    with pytest.raises(ValueError):
        make_baseline_objective("dcd", positions, ids, False, cfg, trajs)


def test_t3d_reference_is_frozen_initial_copy(setup):
    model, positions, ids, cfg, trajs, examples = setup
    obj = T3DObjective(positions, ids, False, cfg, trajs)
    assert obj.reference is not model and not any(p.requires_grad for p in obj.reference.parameters())
    loss, m = obj(model, examples, [0, 1], 0)
    # policy == reference at the start: every preferred block scores -log sigmoid(0)
    assert m["pref_blocks_frac"] > 0 and float(loss.detach()) == pytest.approx(math.log(2), rel=1e-5)


def test_d3llm_progress_matches_the_loop_schedule(setup):
    from echocxr.training.loop import global_batch_indices

    model, positions, ids, _, trajs, _ = setup
    cfg = replace(TrainConfig(block_length=L), batch_size=3, max_steps=40, seed=5)
    obj = D3LLMObjective(positions, ids, False, cfg, trajs, num_train=10)
    for step in range(40):
        idx, epoch = global_batch_indices(10, cfg, step)
        assert obj.step_of(idx[1:], epoch) == step  # any micro-batch of the step gives the same answer
    model.eval()
    assert obj.progress(model, [0], 0) == 1.0
    model.train()
    idx, epoch = global_batch_indices(10, cfg, 20)
    assert obj.progress(model, idx, epoch) == pytest.approx(0.5)
    counting = D3LLMObjective(positions, ids, False, cfg, trajs)
    assert [counting.progress(model, [0, 1, 2], 0) * 40 for _ in range(3)] == [0, 1, 2]
