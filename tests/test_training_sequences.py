"""RAD / full-duplication training sequences against plain block-causal forwards (ECHO-SPEC §3).

The clean copy of the RAD sequence must give exactly the logits a plain `[prompt causal][response
block-causal]` forward gives (the response-aligned decoding canvas); the noisy copy of block n must give the
logits of a decoding step on block n (clean blocks < n, block n as noisy), and never see later blocks.
"""

from __future__ import annotations

import pytest
import torch

from echocxr.backbones.loading import load_backbone
from echocxr.backbones.prompt import encode_prompt
from echocxr.diffusion.masks import additive_mask, canvas_groups, rad_layout_allowed
from echocxr.diffusion.sequences import build_ar_batch, build_diffusion_batch, gather_slots, pad_to_blocks
from echocxr.training.objectives import PromptPositions, slot_logits

L = 4


def _image(seed: int, h: int, w: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8), mode="L")


@pytest.fixture(scope="module", params=["qwen2", "qwen2_5_vl"])
def case(request, tiny_text_dir, tiny_vl_dir):
    """(backbone, prompts of different lengths, clean responses, noisy responses, rope_index)."""
    images = [_image(0, 64, 64), _image(1, 90, 70), _image(2, 56, 112)]
    vision = request.param == "qwen2_5_vl"
    # sdpa: what training loads (run_stage -> load_backbone default)
    bb = load_backbone(tiny_vl_dir if vision else tiny_text_dir, dtype="float32", attn_implementation="sdpa")
    tok = bb.tokenizer
    if vision:
        prompts = [encode_prompt(tok, bb.image_processor, [images[0]]),
                   encode_prompt(tok, bb.image_processor, [images[1], images[2]], lang="zh")]
    else:
        prompts = [encode_prompt(tok, None, None, instruction="Write a report."),
                   encode_prompt(tok, None, None, lang="zh")]
    assert prompts[0].length != prompts[1].length
    texts = ["Findings: The heart is normal in size. Impression: No acute disease.",
             "Findings: Mild cardiomegaly."]
    eos = tok.eos_token_id
    clean = [pad_to_blocks(tok(t, add_special_tokens=False)["input_ids"] + [eos], L, eos) for t in texts]
    assert len(clean[0]) >= 3 * L and len(clean[1]) >= 2 * L and len(clean[0]) != len(clean[1])
    g = torch.Generator().manual_seed(0)
    noisy = []
    for c in clean:
        n = list(c)
        for j in torch.randperm(len(c), generator=g)[: len(c) // 2].tolist():
            n[j] = bb.mask_token_id
        noisy.append(n)
    rope = PromptPositions(bb.model, True) if vision else None
    return bb, prompts, clean, noisy, rope


def _forward(bb, ids: torch.Tensor, allowed: torch.Tensor, pos: torch.Tensor, prompt) -> torch.Tensor:
    """One plain forward of a single sequence with an explicit visibility matrix; logits (S, V)."""
    kw = dict(input_ids=ids[None], attention_mask=additive_mask(allowed[None, None], torch.float32),
              position_ids=pos[:, None] if bb.is_vision else pos[:1])
    if prompt.pixel_values is not None:
        kw.update(pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw)
    with torch.no_grad():
        return bb.model(**kw).logits[0]


def _prompt_positions(bb, prompt) -> torch.Tensor:
    """(axes, P) straight from the model's own `get_rope_index` (M-RoPE for Qwen2.5-VL), not the training cache."""
    if not bb.is_vision:
        return torch.arange(prompt.length)[None]
    pos, _ = bb.model.model.get_rope_index(prompt.input_ids[None], prompt.mm_token_type_ids[None],
                                           image_grid_thw=prompt.image_grid_thw)
    return pos[:, 0]


def _plain(bb, prompt, response: list[int]) -> torch.Tensor:
    """Logits of `[prompt causal][response block-causal]`, response-aligned (the decoding canvas)."""
    P, R = prompt.length, len(response)
    ids = torch.cat([prompt.input_ids, torch.tensor(response)])
    groups = canvas_groups(P + R, block_origin=P, block_length=L, causal_end=P)
    allowed = groups[None, :] <= groups[:, None]
    ppos = _prompt_positions(bb, prompt)
    nxt = int(ppos.max()) + 1
    pos = torch.cat([ppos, torch.arange(nxt, nxt + R)[None].expand(ppos.shape[0], -1)], dim=1)
    return _forward(bb, ids, allowed, pos, prompt)


def _batch_logits(bb, batch) -> torch.Tensor:
    with torch.no_grad():
        return bb.model(**batch.model_inputs(torch.float32, bb.is_vision)).logits


def test_rad_clean_copy_equals_block_causal_forward(case):
    bb, prompts, clean, noisy, rope = case
    batch = build_diffusion_batch(prompts, clean, noisy, L, rope, bb.tokenizer.pad_token_id, bb.mask_token_id)
    logits = _batch_logits(bb, batch)
    for i, (p, c) in enumerate(zip(prompts, clean, strict=True)):
        R = len(c)
        got = gather_slots(logits, batch.clean_cols)[i, :R]
        plain = _plain(bb, p, c)
        torch.testing.assert_close(got, plain[p.length:], atol=1e-5, rtol=0)
        # and the prompt part is the plain causal prompt forward
        torch.testing.assert_close(logits[i, :p.length], plain[:p.length], atol=1e-5, rtol=0)


def test_rad_noisy_block_equals_a_decoding_step(case):
    """Noisy block n == a forward of [prompt][clean blocks < n][noisy block n] (what the decoder runs)."""
    bb, prompts, clean, noisy, rope = case
    batch = build_diffusion_batch(prompts, clean, noisy, L, rope, bb.tokenizer.pad_token_id, bb.mask_token_id)
    slots = gather_slots(_batch_logits(bb, batch), batch.target_cols)
    for i, (p, c, nz) in enumerate(zip(prompts, clean, noisy, strict=True)):
        N = len(c) // L
        for n in sorted({0, 1, N - 1}):  # first, second (sees clean block 0) and last block
            seq = c[:n * L] + nz[n * L:(n + 1) * L]
            ref = _plain(bb, p, seq)[p.length + n * L:]
            torch.testing.assert_close(slots[i, n * L:(n + 1) * L], ref, atol=1e-5, rtol=0)


def test_rad_noisy_block_unaffected_by_later_blocks(case):
    bb, prompts, clean, noisy, rope = case
    pad, mask = bb.tokenizer.pad_token_id, bb.mask_token_id
    n = 1  # block under test
    base = build_diffusion_batch(prompts, clean, noisy, L, rope, pad, mask)
    base_slots = gather_slots(_batch_logits(bb, base), base.target_cols)
    # change every later block, clean and noisy copy alike
    clean2 = [c[:(n + 1) * L] + [20 + (j % 50) for j in range(len(c) - (n + 1) * L)] for c in clean]
    noisy2 = [nz[:(n + 1) * L] + c2[(n + 1) * L:] for nz, c2 in zip(noisy, clean2, strict=True)]
    other = build_diffusion_batch(prompts, clean2, noisy2, L, rope, pad, mask)
    other_slots = gather_slots(_batch_logits(bb, other), other.target_cols)
    upto = (n + 1) * L
    torch.testing.assert_close(other_slots[:, :upto], base_slots[:, :upto], atol=1e-5, rtol=0)
    assert not torch.allclose(other_slots[0, upto:upto + L], base_slots[0, upto:upto + L], atol=1e-3)
    # but it does see the clean copy of earlier blocks
    clean3 = [[21] * L + c[L:] for c in clean]
    third = build_diffusion_batch(prompts, clean3, noisy, L, rope, pad, mask)
    third_slots = gather_slots(_batch_logits(bb, third), third.target_cols)
    assert not torch.allclose(third_slots[0, L:2 * L], base_slots[0, L:2 * L], atol=1e-3)


def test_slot_logits_equals_full_logits(case):
    """slot_logits (LM head only at the scored columns) equals gathering from full logits."""
    bb, prompts, clean, noisy, rope = case
    batch = build_diffusion_batch(prompts, clean, noisy, L, rope, bb.tokenizer.pad_token_id, bb.mask_token_id)
    full = gather_slots(_batch_logits(bb, batch), batch.target_cols)
    with torch.no_grad():
        got = slot_logits(bb.model, batch, bb.is_vision)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def test_ar_batch_equals_causal_forward(case):
    bb, prompts, clean, _, rope = case
    batch = build_ar_batch(prompts, clean, rope, bb.tokenizer.pad_token_id)
    with torch.no_grad():
        slots = slot_logits(bb.model, batch, bb.is_vision)
    for i, (p, c) in enumerate(zip(prompts, clean, strict=True)):
        P, R = p.length, len(c)
        ids = torch.cat([p.input_ids, torch.tensor(c)])
        ppos = _prompt_positions(bb, p)
        nxt = int(ppos.max()) + 1
        pos = torch.cat([ppos, torch.arange(nxt, nxt + R)[None].expand(ppos.shape[0], -1)], dim=1)
        ref = _forward(bb, ids, torch.ones(P + R, P + R, dtype=torch.bool).tril(), pos, p)
        torch.testing.assert_close(slots[i, :R], ref[P - 1:P - 1 + R], atol=1e-5, rtol=0)
        assert batch.targets[i, :R].tolist() == c and (batch.targets[i, R:] == -100).all()


def test_rad_positions_reuse_clean_positions(case):
    bb, prompts, clean, noisy, rope = case
    batch = build_diffusion_batch(prompts, clean, noisy, L, rope, bb.tokenizer.pad_token_id, bb.mask_token_id)
    for i, c in enumerate(clean):
        R = len(c)
        P = prompts[i].length
        ppos = _prompt_positions(bb, prompts[i])
        assert torch.equal(batch.position_ids[:, i, :P], ppos.expand(batch.position_ids.shape[0], -1))
        if bb.is_vision:  # M-RoPE: image tokens share temporal ids, so positions end below P
            assert int(ppos.max()) + 1 < P
        pn = batch.position_ids[:, i, batch.target_cols[i, :R]]
        assert pn[:, 0].tolist() == [int(ppos.max()) + 1] * pn.shape[0]  # text continues at max + 1, all axes
        pc = batch.position_ids[:, i, batch.clean_cols[i, :R]]
        assert torch.equal(pn, pc)
        assert batch.input_ids[i, batch.clean_cols[i, :R]].tolist() == c
        assert batch.input_ids[i, batch.target_cols[i, :R]].tolist() == noisy[i]
        assert batch.noised[i, :R].tolist() == [t == bb.mask_token_id for t in noisy[i]]


def test_rad_sequence_length_is_p_plus_2r():
    allowed = rad_layout_allowed(10, 8, 4)
    assert allowed.shape == (26, 26)
    # clean rows never see a noisy column
    assert not allowed[18:, 10:18].any()
    # noisy block 1 sees the prompt, clean block 0, its own noisy block and nothing else
    row = allowed[14]
    assert row[:10].all() and row[18:22].all() and row[14:18].all()
    assert not row[10:14].any() and not row[22:].any()


def test_full_layout_builds_and_its_loss_runs(case):
    """Prior work's whole-sequence duplication: length 2(P'+R) and a finite, differentiable loss."""
    from echocxr.diffusion.losses import mdlm_loss

    bb, prompts, clean, noisy, rope = case
    batch = build_diffusion_batch(prompts, clean, noisy, L, rope, bb.tokenizer.pad_token_id, bb.mask_token_id,
                                  layout="full")
    for i, (p, c) in enumerate(zip(prompts, clean, strict=True)):
        N = -(-p.length // L) * L + len(c)
        assert int((batch.allowed[i].diagonal()).sum()) >= 2 * N
        assert batch.input_ids[i, batch.clean_cols[i, :len(c)]].tolist() == c
        assert batch.input_ids[i, batch.target_cols[i, :len(c)]].tolist() == noisy[i]
    assert batch.input_ids.shape[1] == max(2 * (-(-p.length // L) * L + len(c)) for p, c in zip(prompts, clean,
                                                                                                   strict=True))
    bb.model.train()
    try:
        logits = slot_logits(bb.model, batch, bb.is_vision)
        loss = mdlm_loss(logits, batch.targets, batch.noised)
        assert torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.model.parameters())
    finally:
        bb.model.zero_grad(set_to_none=True)
        bb.model.eval()
    # the clean copy of the full layout is the block-causal forward of [prompt][response] on one grid
    with torch.no_grad():
        logits = _batch_logits(bb, batch)
    p, c = prompts[0], clean[0]
    lead = -p.length % L
    N = lead + p.length + len(c)
    ids = torch.cat([torch.full((lead,), bb.tokenizer.pad_token_id), p.input_ids, torch.tensor(c)])
    real = torch.ones(N, dtype=torch.bool)
    real[:lead] = False
    allowed = (canvas_groups(N, 0, L, 0)[None, :] <= canvas_groups(N, 0, L, 0)[:, None]) & real[None]
    allowed |= torch.eye(N, dtype=torch.bool)
    pos = batch.position_ids[:, 0, N:2 * N]
    ref = _forward(bb, ids, allowed, pos, p)
    torch.testing.assert_close(logits[0, N + lead:2 * N], ref[lead:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["rad", "full"])
def test_rad_objective_runs_in_both_layouts(case, layout):
    """The RAD objective end to end (noise, batch, slot logits, loss) in the RAD and the full layout."""
    from echocxr.training.config import TrainConfig
    from echocxr.training.examples import TrainExample
    from echocxr.training.objectives import RADObjective, TokenIds

    bb, prompts, clean, _, rope = case
    tok = bb.tokenizer
    ids = TokenIds(pad=tok.pad_token_id, mask=bb.mask_token_id, eos=tok.eos_token_id)
    examples = [TrainExample(prompt=p, response_ids=c, sample_id=str(i)) for i, (p, c) in
                enumerate(zip(prompts, clean, strict=True))]
    for inv_t in (False, True):
        obj = RADObjective(PromptPositions(bb.model, bb.is_vision), ids, bb.is_vision,
                           TrainConfig(block_length=L, layout=layout, inv_t_weight=inv_t))
        with torch.no_grad():
            a, mets = obj(bb.model, examples, [0, 1], 0)
            b, _ = obj(bb.model, examples, [0, 1], 0)
            c, _ = obj(bb.model, examples, [5, 6], 0)
        assert torch.isfinite(a) and float(a) > 0 and 0 < mets["masked_frac"] <= 1
        assert float(a) == float(b)  # the noise is a function of (seed, epoch, example index)
        assert float(a) != float(c)


def test_ar_label_term_by_hand(case):
    """AR + label BCE = the plain AR loss + w * BCE of a linear read-out of each response position's state,
    averaged over labels, then the sample's positions, then the batch (computed here from a plain forward)."""
    from echocxr.training.examples import TrainExample
    from echocxr.training.objectives import ARObjective, TokenIds
    from echocxr.training.vision import StateLabelHead

    bb, prompts, clean, _, rope = case
    tok = bb.tokenizer
    ids = TokenIds(pad=tok.pad_token_id, mask=bb.mask_token_id, eos=tok.eos_token_id)
    resp = [c[: len(c) - 2] for c in clean]  # different lengths: padding must not count
    examples = [TrainExample(prompt=p, response_ids=r, sample_id=str(i), labels=lab) for i, (p, r, lab) in
                enumerate(zip(prompts, resp, [("b",), ("a", "b")], strict=True))]
    positions = PromptPositions(bb.model, bb.is_vision)
    torch.manual_seed(0)
    hidden = bb.model.config.text_config.hidden_size if bb.is_vision else bb.model.config.hidden_size
    head = StateLabelHead(hidden, ("a", "b"))
    with torch.no_grad():
        plain, _ = ARObjective(positions, ids, bb.is_vision)(bb.model, examples, [0, 1], 0)
        total, mets = ARObjective(positions, ids, bb.is_vision, head, 0.5)(bb.model, examples, [0, 1], 0)
        per_sample = []
        for e, y in zip(examples, ([0.0, 1.0], [1.0, 1.0]), strict=True):
            P, r = e.prompt.length, e.response_ids
            seq = torch.cat([e.prompt.input_ids, torch.tensor(r)])
            allowed = torch.ones(len(seq), len(seq), dtype=torch.bool).tril()
            ppos = _prompt_positions(bb, e.prompt)
            nxt = int(ppos.max()) + 1
            pos = torch.cat([ppos, torch.arange(nxt, nxt + len(r))[None].expand(ppos.shape[0], -1)], dim=1)
            kw = dict(input_ids=seq[None], attention_mask=additive_mask(allowed[None, None], torch.float32),
                      position_ids=pos[:, None] if bb.is_vision else pos[:1], output_hidden_states=True)
            if e.prompt.pixel_values is not None:
                kw.update(pixel_values=e.prompt.pixel_values, image_grid_thw=e.prompt.image_grid_thw)
            h = bb.model(**kw).hidden_states[-1][0, P - 1:P - 1 + len(r)]  # the states that predict the response
            z = head.linear(h)
            t = torch.tensor(y).expand_as(z)
            bce = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z)))
            per_sample.append(bce.mean(-1).mean())
        expect = float(plain) + 0.5 * float(torch.stack(per_sample).mean())
    assert abs(float(total) - expect) < 1e-5
    assert abs(mets["label_bce"] - float(torch.stack(per_sample).mean())) < 1e-5
