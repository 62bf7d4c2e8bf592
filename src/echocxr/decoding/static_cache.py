"""A preallocated KV cache as wide as the decoding canvas, written at its length and rolled back in place.

Why: the reference engine's DynamicCache re-concatenates every layer on every step, drops a denoised block with
`crop` (a slice and a copy per layer) and gathers every row when a sample ends. The canvas is a fixed (B, W)
grid whose column is the cache slot, so one (B, Hkv, W, D) buffer per layer holds the whole decode: a forward
writes its Q new keys at columns [length, length + Q) and the length moves on; a denoising pass is undone by
moving the length back (`rollback`), so the next forward overwrites those slots. Every tensor keeps its address
and shape for the whole decode, which is what torch.compile / CUDA graphs need. Attention always sees all W
slots: the 4D mask must be exactly W wide and block the slots not written yet.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class CanvasKVCache(Cache):
    """Static KV cache for `layers` layers of a (batch, width) canvas; `length` is a device scalar."""

    is_compileable = True

    def __init__(self, layers: int, batch: int, kv_heads: int, width: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        try:
            super().__init__(layers=[])
        except TypeError:  # transformers versions whose Cache takes no layers
            super().__init__()
        shape = (batch, kv_heads, width, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = torch.zeros((), dtype=torch.long, device=device)
        self.width = width
        self._slots = torch.arange(width, device=device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, width: int) -> CanvasKVCache:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, width, head_dim, p.dtype, p.device)

    # ---- what the model's attention layers call --------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new keys/values at [length, length + Q) and return the whole W-wide buffers."""
        q = key_states.shape[-2]
        slots = self._slots[:q] + self.length
        self.keys[layer_idx].index_copy_(2, slots, key_states)
        self.values[layer_idx].index_copy_(2, slots, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.width, 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.width

    def __len__(self) -> int:
        return len(self.keys)

    # ---- what the decoding loop calls ------------------------------------------------------------------
    def advance(self, n: int) -> None:
        """After a forward of n queries: those slots are now part of the cache."""
        self.length.add_(n)

    def rollback(self, n: int) -> None:
        """Forget the last n written slots (a denoising pass): the next forward overwrites them."""
        self.length.sub_(n)
