"""A deeper student than its teacher: decoder layers appended as exact identities.

A one-step student writes a whole block in one forward; its positions can only agree with one another (one
phrasing, one finding) through the attention rounds its layers give them. `append_identity_layers` adds
rounds without changing what the model computes at the start of distillation: each new layer is a copy of
the top layer with its two residual-branch outputs (attention `o_proj`, MLP `down_proj`) set to zero, so the
grown model's logits equal the teacher's exactly until training moves them.
"""

from __future__ import annotations

import copy

import torch


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (the module holding `layers`) of a Qwen2 or Qwen2.5-VL causal LM."""
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


def append_identity_layers(model: torch.nn.Module, n: int) -> int:
    """Append `n` identity decoder layers on top of `model`'s stack (in place); returns the new depth."""
    if n < 0:
        raise ValueError(f"cannot append {n} layers")
    lm = language_model(model)
    cfg = lm.config
    if n == 0:
        return len(lm.layers)
    top = lm.layers[-1]
    for _ in range(n):
        layer = copy.deepcopy(top)
        layer.self_attn.layer_idx = len(lm.layers)  # its slot in a KV cache
        with torch.no_grad():
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()
        lm.layers.append(layer)
    depth = len(lm.layers)
    types = list(getattr(cfg, "layer_types", None) or [])
    if types:
        cfg.layer_types = types + [types[-1]] * (depth - len(types))
    cfg.num_hidden_layers = depth
    return depth
