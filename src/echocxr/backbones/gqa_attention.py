"""Grouped-query attention without copying KV heads, registered with transformers' `AttentionInterface`.

Why: transformers' sdpa path, given a float 4D mask (every block-diffusion step has one), expands each KV head
to its `G` query heads with `repeat_kv` in every layer and step: a full copy of the cache, the largest cost of a
batched decode step. Here the `G` query heads that share a KV head are folded into the query axis instead,
`(B, Hkv*G, Q, D) -> (B, Hkv, G*Q, D)`, so one sdpa call reads each KV head once; only the (small) mask is
repeated `G` times. Same arithmetic as sdpa over repeated heads, so it agrees with it to fp32 rounding.

Used by the fast decoding path on the language model's layers only (`text_attention`); the vision tower keeps
its own implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

GQA_ATTENTION = "echocxr_gqa"


def gqa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """query (B, Hq, Q, D), key/value (B, Hkv, K, D), additive or bool mask (B or 1, 1, Q, K) -> (B, Q, Hq, D)."""
    B, Hq, Q, D = query.shape
    Hkv = key.shape[1]
    G = Hq // Hkv
    q = query.reshape(B, Hkv, G * Q, D)  # heads j*G..j*G+G-1 share KV head j, as in repeat_kv
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, :, : key.shape[2]]
        if G > 1:
            mask = mask.unsqueeze(2).expand(mask.shape[0], 1, G, Q, mask.shape[-1]).reshape(
                mask.shape[0], 1, G * Q, mask.shape[-1])
    causal = mask is None and Q > 1 and bool(getattr(module, "is_causal", True))
    if causal and G > 1:  # a causal pattern does not survive the fold: spell it out per (group, query)
        qpos = torch.arange(Q, device=query.device).repeat(G)  # sdpa's is_causal: upper-left aligned
        mask = torch.arange(key.shape[2], device=query.device)[None, :] <= qpos[:, None]
        causal = False
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
                                         scale=scaling, is_causal=causal)
    out = out.reshape(B, Hq, Q, value.shape[-1]).transpose(1, 2).contiguous()
    return out, None


def register_gqa_attention() -> str:
    """Register the function (idempotent) and return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(GQA_ATTENTION, gqa_attention_forward)
    return GQA_ATTENTION


def _text_config(model: torch.nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


@contextmanager
def text_attention(model: torch.nn.Module, name: str | None = GQA_ATTENTION) -> Iterator[None]:
    """Run the language model's attention layers with `name` (None: unchanged) and restore the old one after.

    The vision tower (Qwen2.5-VL) reads its own sub-config and is left alone.
    """
    if name is None:
        yield
        return
    if name == GQA_ATTENTION:
        register_gqa_attention()
    cfg = _text_config(model)
    old = cfg._attn_implementation_internal
    cfg._attn_implementation_internal = name
    try:
        yield
    finally:
        cfg._attn_implementation_internal = old
