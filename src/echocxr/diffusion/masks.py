"""Attention masks for block diffusion, as additive float masks (0 = attend, dtype-min = blocked).

transformers' eager attention silently misreads boolean 4D masks, so every mask leaves here as floats.
Visibility inside a decoding canvas is expressed by one "group" number per column: a query sees a key iff
group(key) <= group(query) and the key is a real token. Causal columns have group = column index; a block's
columns all share the group of the block's last column, so a block sees itself and everything before it.
"""

from __future__ import annotations

import torch


def canvas_groups(width: int, block_origin: int, block_length: int, causal_end: int | None = None) -> torch.Tensor:
    """Group ids for columns [0, width).

    Columns before `causal_end` (default: `block_origin`) are causal; columns from `block_origin` on lie on a
    block grid of `block_length` starting at `block_origin`.
      - official block-grid prefill: block_origin=0 (the whole canvas is block-causal);
      - response-aligned: block_origin=C (causal prompt, blocks from the response start);
      - autoregressive: block_length=1.
    """
    cols = torch.arange(width)
    causal_end = block_origin if causal_end is None else causal_end
    block_group = block_origin + ((cols - block_origin).div(block_length, rounding_mode="floor") + 1) * block_length - 1
    return torch.where(cols < causal_end, cols, block_group)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (..., Q, K) -> float mask with 0 where allowed and the dtype's minimum elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)


def canvas_mask(groups: torch.Tensor, query_cols: torch.Tensor, key_end: int, key_valid: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, key_end) additive mask for queries at `query_cols` over keys [0, key_end).

    `key_valid` (B, >= key_end) marks real tokens (False on left padding).
    """
    gq = groups[query_cols]
    gk = groups[:key_end]
    allowed = (gk[None, :] <= gq[:, None])[None] & key_valid[:, None, :key_end]
    return additive_mask(allowed[:, None], dtype)


def block_causal_allowed(length: int, block_length: int) -> torch.Tensor:
    """bool (length, length): the official block-causal pattern on an absolute grid from position 0."""
    blocks = torch.arange(length) // block_length
    return blocks[None, :] <= blocks[:, None]


def rad_layout_allowed(prompt_len: int, response_len: int, block_length: int) -> torch.Tensor:
    """Visibility of the RAD training sequence [prompt P][noisy response R][clean response R] (ECHO-SPEC §3).

    - prompt: causal inside the prompt only;
    - noisy block n: whole prompt, clean blocks < n, its own noisy block (bidirectional);
    - clean block n: whole prompt, clean blocks <= n; never a noisy token.
    `response_len` must be a whole number of blocks.
    """
    if response_len % block_length:
        raise ValueError(f"response length {response_len} is not a multiple of the block length {block_length}")
    P, R = prompt_len, response_len
    S = P + 2 * R
    allowed = torch.zeros(S, S, dtype=torch.bool)
    allowed[:P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
    blk = torch.arange(R) // block_length
    noisy = slice(P, P + R)
    clean = slice(P + R, S)
    allowed[P:, :P] = True
    allowed[noisy, noisy] = blk[:, None] == blk[None, :]
    allowed[noisy, clean] = blk[None, :] < blk[:, None]
    allowed[clean, clean] = blk[None, :] <= blk[:, None]
    return allowed


def rad_layout_positions(prompt_len: int, response_len: int) -> torch.Tensor:
    """Column -> 1D position for the RAD sequence: the noisy copy reuses the clean copy's positions."""
    prompt = torch.arange(prompt_len)
    resp = torch.arange(prompt_len, prompt_len + response_len)
    return torch.cat([prompt, resp, resp])
