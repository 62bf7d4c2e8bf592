"""Distillation baselines: hand-checked loss formulas, keyed masks, determinism, and each loss falling on a tiny
overfit case (a tiny Qwen2 and hand-made teacher trajectories)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echocxr.backbones.prompt import EncodedPrompt
from echocxr.backbones.settings import MAX_LOOKAHEAD
from echocxr.training.baselines import (
    BASELINES,
    CD4LMObjective,
    D3LLMObjective,
    DParallelObjective,
    T3DObjective,
    baseline_decoding,
    block_logprob_sums,
    certainty_forcing_loss,
    consistency_loss,
    d3llm_block_size,
    d3llm_ratio,
    ddo_loss,
    decode_ranks,
    dpo_loss,
    make_baseline_objective,
    mean_over_examples,
    nested_sequence_masks,
    one_block_complementary_masks,
    path_levels,
    t3d_masks,
    trajectory_block_masks,
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


def test_consistency_terms_are_clamped_as_cd4lm_does():
    high = torch.tensor([[[20.0, 0.0, 0.0]]])
    low = torch.tensor([[[0.0, 20.0, 0.0]]])  # a confident disagreement: KL * T^2 far above 5
    t, m = torch.tensor([[1]]), torch.tensor([[True]])
    loss, mets = consistency_loss(high, low, t, m, m, 0.7, 2.0, clamp=(0.0, 5.0))
    assert mets["kl"] == pytest.approx(5.0) and mets["ce"] == pytest.approx(5.0)
    assert float(loss) == pytest.approx(5.0)
    free, _ = consistency_loss(high, low, t, m, m, 0.7, 2.0)
    assert float(free) > 10


STEPS = [1, 3, 2, 3, 2, 1, 1, 4]  # two teacher blocks of L = 4: the step that committed each slot


def test_decode_ranks_follow_the_teacher_block_by_block():
    # block 0 commits slot 0, then 2, then 1 and 3 together (left to right); block 1: 5 and 6, then 4, then 7
    assert decode_ranks(STEPS, L) == [0, 2, 1, 3, 6, 4, 5, 7]


def masks_for_each_block(fn, n_blocks):
    """fn(gen) -> masks; one draw per block it lands on (the block is chosen at random)."""
    seen = {}
    for seed in range(200):
        first, second = fn(torch.Generator().manual_seed(seed))
        on = {k for k in range(n_blocks) if any(first[k::n_blocks][:0]) or any(
            a or b for a, b in zip(first[k * (len(first) // n_blocks):(k + 1) * (len(first) // n_blocks)],
                                   second[k * (len(first) // n_blocks):(k + 1) * (len(first) // n_blocks)], strict=True))}
        assert len(on) == 1, "exactly one block is scored"
        seen.setdefault(on.pop(), (first, second))
    assert len(seen) == n_blocks
    return seen


def test_dparallel_masks_one_block_and_its_complement():
    seen = masks_for_each_block(lambda g: one_block_complementary_masks(8, L, g), 2)
    for k, (first, second) in seen.items():
        cols = range(k * L, (k + 1) * L)
        assert all(first[j] != second[j] for j in cols)
        assert not any(first[j] or second[j] for j in range(8) if j not in cols)
    share = sum(sum(one_block_complementary_masks(8, L, torch.Generator().manual_seed(s))[0])
                for s in range(400)) / (400 * L)
    assert 0.45 < share < 0.55  # each slot of the block with p ~ 0.5


def test_d3llm_masks_what_the_teacher_had_not_committed_yet():
    seen = masks_for_each_block(lambda g: trajectory_block_masks(STEPS, L, L, 0.5, g), 2)
    # halfway through block 0 the teacher had committed slots 0 and 2; in block 1 slots 5 and 6
    assert seen[0] == ([False, True, False, True, False, False, False, False],
                       [True, False, True, False, False, False, False, False])
    assert seen[1][0] == [False, False, False, False, True, False, False, True]
    # a training block of 2 (the curriculum's start) cuts teacher block 0 in two: slots 2-3 after 2 + 1 commits
    small = masks_for_each_block(lambda g: trajectory_block_masks(STEPS, L, 2, 0.5, g), 4)
    assert small[1] == ([False, False, False, True] + [False] * 4, [False, False, True, False] + [False] * 4)
    # ratio 0: the block's last-committed slot is still masked (never an empty copy)
    assert sum(masks_for_each_block(lambda g: trajectory_block_masks(STEPS, L, L, 0.0, g), 2)[1][0]) == 1


def test_d3llm_curricula():
    assert [d3llm_block_size(p, 8) for p in (0.0, 1 / 12, 1.5 / 6, 2.5 / 6, 4.5 / 6, 1.0)] == [4, 4, 5, 6, 8, 8]
    assert d3llm_block_size(0.0, 4) == 2 and d3llm_block_size(1.0, 4) == 4 and d3llm_block_size(0.0, 1) == 1
    assert d3llm_ratio(1.0, torch.Generator().manual_seed(0)) == pytest.approx(0.8)
    rs = [d3llm_ratio(0.5, torch.Generator().manual_seed(s)) for s in range(50)]
    assert all(0.4 <= r <= 0.8 for r in rs) and max(rs) - min(rs) > 0.2


def test_t3d_masks_the_earliest_committed_slots_at_a_drawn_ratio():
    rank = decode_ranks(STEPS, L)
    ratios = []
    for seed in range(300):
        masked, rand = t3d_masks(STEPS, L, torch.Generator().manual_seed(seed))
        n = sum(masked[:L])
        assert n == sum(masked[L:]) and n in (4, 3, 2, 1)
        ratios.append(n / L)
        for b0 in (0, L):  # the masked slots of a block are its first-committed ones
            block = sorted(range(b0, b0 + L), key=lambda j: rank[j])
            assert [masked[j] for j in block] == [True] * n + [False] * (L - n)
        assert all(m for m, r in zip(masked, rand, strict=True) if r)  # random tokens only where masked
        assert sum(rand) == max(1, int(0.1 * sum(masked)))
    assert 0.85 < ratios.count(1.0) / len(ratios) < 0.96  # weight 1 of 1 + 0.75^8 + 0.5^8 + 0.25^8


def test_t3d_path_levels():
    first, full = path_levels(STEPS, L, 2)
    assert first == [True, False, True, False, False, True, True, False]
    assert full == [True] * 8


def test_cd4lm_masks_are_nested_over_the_response():
    for seed in range(30):
        hi, lo = nested_sequence_masks(40, torch.Generator().manual_seed(seed))
        assert all(h or not x for h, x in zip(hi, lo, strict=True))
        assert 16 <= sum(hi) <= 36 and 4 <= sum(lo) <= 24 and sum(lo) < sum(hi)
        short_hi, short_lo = nested_sequence_masks(8, torch.Generator().manual_seed(seed))
        assert (sum(short_hi), sum(short_lo)) == (2, 1)


def test_baselines_are_saved_to_decode_as_their_papers_do():
    assert baseline_decoding("t3d", 8) == {"steps": 4, "remasking": "low_confidence_static", "threshold": 0.85}
    assert baseline_decoding("dparallel", 8) == {"steps": 8, "remasking": "low_entropy_dynamic", "threshold": 0.5}
    # d3LLM also decodes several blocks at once (its multi-block decoding): no cap, next block at 10% committed
    assert baseline_decoding("d3llm", 8) == {"steps": 8, "remasking": "low_entropy_dynamic", "threshold": 0.5,
                                             "lookahead": MAX_LOOKAHEAD, "lookahead_threshold": 0.1}
    assert baseline_decoding("cd4lm", 4) == {"steps": 4, "remasking": "low_confidence_dynamic", "threshold": 0.95}
    with pytest.raises(ValueError):
        baseline_decoding("dcd", 4)


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


OPTIONS = {"d3llm": dict(num_train=2), "t3d": dict(num_train=2), "dparallel": {}, "cd4lm": {}}


@pytest.mark.parametrize("stage", BASELINES)
def test_loss_is_deterministic_and_falls(setup, stage):
    model, positions, ids, cfg, trajs, examples = setup
    obj = make_baseline_objective(stage, positions, ids, False, cfg, trajs, **OPTIONS[stage])
    first, _ = obj(model, examples, [0, 1], 0)
    again, _ = obj(model, examples, [0, 1], 0)
    assert torch.isfinite(first) and float(first.detach()) == float(again.detach())
    if stage == "cd4lm":
        # an untrained tiny model's CE (ln V ~ 7) is above CD4LM's clamp, where the clamp passes no gradient
        # (a Base starts far below it); unclamped, the same loss learns
        assert not first.requires_grad or float(torch.autograd.grad(first, next(model.parameters()),
                                                                     allow_unused=True)[0].abs().sum()) == 0
        obj.clamp = None
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
    if stage == "cd4lm":
        obj.clamp = None  # the untrained model's terms all sit at the clamp (see above), which would hide the draw
    with torch.no_grad():
        whole, _ = obj(model, examples, [0, 1], 4)
        parts = [obj(model, [e], [i], 4)[0] for i, e in enumerate(examples)]
        other_epoch, _ = obj(model, examples, [0, 1], 5)
    assert float(whole) == pytest.approx(float(sum(parts)) / 2, rel=1e-4)
    if stage in ("dparallel", "cd4lm"):  # random masks: a new epoch draws new ones
        assert float(other_epoch) != pytest.approx(float(whole), rel=1e-4)


@pytest.mark.parametrize("form", ["ddo", "dpo"])
def test_t3d_forms_fall(setup, form):
    model, positions, ids, cfg, trajs, examples = setup
    obj = T3DObjective(positions, ids, False, replace(cfg, t3d_refresh_every=0), trajs, form=form)
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
    obj = T3DObjective(positions, ids, False, cfg, trajs, form="dpo")
    assert obj.reference is not model and not any(p.requires_grad for p in obj.reference.parameters())
    loss, m = obj(model, examples, [0, 1], 0)
    # policy == reference at the start: every preferred block scores -log sigmoid(0)
    assert m["pref_blocks_frac"] > 0 and float(loss.detach()) == pytest.approx(math.log(2), rel=1e-5)
    ddo = T3DObjective(positions, ids, False, cfg, trajs, form="ddo")
    _, m = ddo(model, examples, [0, 1], 0)
    # DDO with the reference equal to the student: -log s(0) - alpha log(1 - s(0)) = (1 + 0.5) log 2
    assert m["ddo"] == pytest.approx(1.5 * math.log(2), rel=1e-5) and m["path"] > 0


def test_t3d_reference_is_refreshed_from_the_student(setup):
    from echocxr.training.loop import global_batch_indices

    model, positions, ids, cfg, trajs, examples = setup
    cfg = replace(cfg, batch_size=1, micro_batch_size=1, t3d_refresh_every=3)
    obj = T3DObjective(positions, ids, False, cfg, trajs, num_train=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = {k: v.clone() for k, v in obj.reference.state_dict().items()}
    rounds = []
    for step in range(7):
        idx, epoch = global_batch_indices(2, cfg, step)
        loss, m = obj(model, [examples[i] for i in idx], idx, epoch)
        rounds.append(m["reference_round"])
        if step == 3:  # the first step of round 1: the reference is the student as it was before this step
            assert all(torch.equal(obj.reference.state_dict()[k], v) for k, v in model.state_dict().items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert rounds == [0, 0, 0, 1, 1, 1, 2]
    assert any(not torch.equal(first[k], v) for k, v in obj.reference.state_dict().items())
    # a resumed run (a new objective at step 6) starts round 2 from the weights it resumed with
    again = T3DObjective(positions, ids, False, cfg, trajs, num_train=2)
    idx, epoch = global_batch_indices(2, cfg, 6)
    again(model, [examples[i] for i in idx], idx, epoch)
    assert again._round == 2
    assert all(torch.equal(again.reference.state_dict()[k], v) for k, v in model.state_dict().items())


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
