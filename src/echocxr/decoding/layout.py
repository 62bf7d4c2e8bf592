"""The batch canvas: where each sample's prompt and response sit, and their position ids.

All samples share one column grid so every forward works on the same columns for the whole batch
(ECHO-SPEC §5, "Batching prompts of different lengths"):
  - block_grid (official checkpoints): sample i is left-padded by C - floor(P_i/L)*L, a multiple of L, so block
    grids line up; columns [0, C) are prefilled block-causally; the first block already holds the prompt's
    P_i mod L leftover tokens as fixed positions.
  - response_aligned (echocxr-trained models) and AR: prompts are left-padded to end at column C; the response
    starts at C (block-causal from there, causal prompt).
Position ids count real tokens only; for Qwen2.5-VL they come from `get_rope_index` and generated text
continues at max+1 on all three M-RoPE axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echocxr.backbones.prompt import EncodedPrompt
from echocxr.diffusion.masks import canvas_groups


@dataclass
class Canvas:
    tokens: torch.Tensor  # (B, W) long: pads, prompt, then masks / generated tokens
    key_valid: torch.Tensor  # (B, W) bool: False on left padding
    positions: torch.Tensor  # (3 or 1, B, W) long
    groups: torch.Tensor  # (W,) visibility groups (see diffusion.masks)
    prefill_end: int  # C: columns [0, C) are prefilled
    response_start: torch.Tensor  # (B,) first generated column of each sample
    n_blocks: int  # decode steps (blocks, or tokens for AR)


def build_canvas(prompts: list[EncodedPrompt], mode: str, block_length: int, max_new_tokens: int,
                 fill_id: int, pad_id: int, rope_index=None) -> Canvas:
    """mode: 'block_grid' | 'response_aligned' | 'ar'. `rope_index(prompt) -> (3, P) positions` for VL models."""
    L = 1 if mode == "ar" else block_length
    lengths = [p.length for p in prompts]
    if mode == "block_grid":
        aligned = [(n // L) * L for n in lengths]
        C = max(aligned)
        pads = [C - a for a in aligned]
    else:
        C = max(lengths)
        pads = [C - n for n in lengths]
    starts = [pad + n for pad, n in zip(pads, lengths, strict=True)]  # first generated column
    last_needed = max(s + max_new_tokens for s in starts)
    n_blocks = -(-(last_needed - C) // L)
    W = C + n_blocks * L
    B = len(prompts)
    tokens = torch.full((B, W), fill_id, dtype=torch.long)
    key_valid = torch.ones(B, W, dtype=torch.bool)
    n_axes = 3 if rope_index is not None else 1
    positions = torch.zeros(n_axes, B, W, dtype=torch.long)
    for i, p in enumerate(prompts):
        s, e = pads[i], starts[i]
        tokens[i, :s] = pad_id
        key_valid[i, :s] = False
        tokens[i, s:e] = p.input_ids
        if rope_index is not None:
            pos = rope_index(p)
        else:
            pos = torch.arange(p.length)[None]
        positions[:, i, s:e] = pos
        nxt = int(pos.max()) + 1
        positions[:, i, e:] = torch.arange(nxt, nxt + W - e)[None]
        if mode == "block_grid" and bool(p.mm_token_type_ids[C - s:].any()):
            raise ValueError("the prompt's leftover tokens after the last whole block contain image tokens")
    if mode == "ar":
        groups = canvas_groups(W, block_origin=W, block_length=1, causal_end=W)
    elif mode == "block_grid":
        groups = canvas_groups(W, block_origin=0, block_length=L, causal_end=0)
    else:
        groups = canvas_groups(W, block_origin=C, block_length=L, causal_end=C)
    return Canvas(tokens=tokens, key_valid=key_valid, positions=positions, groups=groups, prefill_end=C,
                  response_start=torch.tensor(starts), n_blocks=n_blocks)
