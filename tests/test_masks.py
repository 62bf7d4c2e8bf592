import torch

from echocxr.diffusion.masks import (
    additive_mask,
    block_causal_allowed,
    canvas_groups,
    canvas_mask,
    rad_layout_allowed,
    rad_layout_positions,
)


def visible(groups):
    return groups[None, :] <= groups[:, None]


def test_block_grid_groups_equal_official_block_causal():
    g = canvas_groups(12, block_origin=0, block_length=4, causal_end=0)
    assert torch.equal(visible(g), block_causal_allowed(12, 4))


def test_response_aligned_groups_causal_prompt_then_blocks():
    g = canvas_groups(11, block_origin=5, block_length=3)
    v = visible(g)
    assert torch.equal(v[:5, :5], torch.ones(5, 5, dtype=torch.bool).tril())
    assert not v[:5, 5:].any()  # the prompt never sees the response
    assert v[5:, :5].all()  # every response token sees the whole prompt
    assert v[5, 7] and not v[5, 8]  # same block both ways, next block hidden
    assert v[8, 5] and v[8, 10]


def test_ar_groups_causal():
    g = canvas_groups(6, block_origin=6, block_length=1, causal_end=6)
    assert torch.equal(visible(g), torch.ones(6, 6, dtype=torch.bool).tril())


def test_canvas_mask_is_additive_float_with_padding():
    g = canvas_groups(8, block_origin=0, block_length=4, causal_end=0)
    valid = torch.tensor([[False] * 4 + [True] * 4, [True] * 8])
    m = canvas_mask(g, torch.arange(4, 8), 8, valid, torch.float32)
    assert m.dtype == torch.float32 and m.shape == (2, 1, 4, 8)
    lo = torch.finfo(torch.float32).min
    assert (m[0, 0, :, :4] == lo).all() and (m[0, 0, :, 4:] == 0).all()
    assert (m[1] == 0).all()
    assert torch.equal(additive_mask(torch.tensor([True, False]), torch.bfloat16),
                       torch.tensor([0.0, torch.finfo(torch.bfloat16).min], dtype=torch.bfloat16))


def test_rad_layout_mask_semantics():
    P, R, L = 3, 8, 4
    a = rad_layout_allowed(P, R, L)
    assert a.shape == (P + 2 * R, P + 2 * R)
    assert torch.equal(a[:P, :P], torch.ones(P, P, dtype=torch.bool).tril())
    assert not a[:P, P:].any()
    noisy = lambda n: slice(P + n * L, P + (n + 1) * L)  # noqa: E731
    clean = lambda n: slice(P + R + n * L, P + R + (n + 1) * L)  # noqa: E731
    # noisy block 1: prompt, clean block 0, itself; not clean block 1, not noisy block 0
    assert a[noisy(1), :P].all() and a[noisy(1), clean(0)].all() and a[noisy(1), noisy(1)].all()
    assert not a[noisy(1), clean(1)].any() and not a[noisy(1), noisy(0)].any()
    assert not a[noisy(0), clean(0)].any()
    # clean tokens never see noisy ones; clean is block-causal
    assert not a[P + R:, P:P + R].any()
    assert torch.equal(a[P + R:, P + R:], block_causal_allowed(R, L))
    assert torch.equal(rad_layout_positions(P, R), torch.tensor([0, 1, 2] + list(range(3, 11)) * 2))


def test_rad_layout_rejects_partial_block():
    import pytest

    with pytest.raises(ValueError):
        rad_layout_allowed(2, 5, 4)
