"""Training cost of RAD (response-only duplication, P+2R tokens) vs full duplication (2(P+R) tokens).

FLOPs are the usual dense-transformer count: 6 * params * tokens for the matmuls of forward+backward, plus
12 * layers * hidden * tokens^2 for attention scores and values (forward+backward; masks do not make SDPA
skip work). Embeddings are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LMShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int

    @property
    def params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = self.hidden * self.hidden * 2 + 2 * self.hidden * self.kv_heads * head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp)


QWEN2_5_VL_7B = LMShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4)


def train_flops(shape: LMShape, tokens: int) -> float:
    return 6.0 * shape.params * tokens + 12.0 * shape.layers * shape.hidden * tokens * tokens


def layout_lengths(prompt_len: int, response_len: int, block_length: int) -> dict[str, int]:
    R = response_len + (-response_len % block_length)
    return {"rad": prompt_len + 2 * R, "full": 2 * (prompt_len + (-prompt_len % block_length) + R)}


def compare(shape: LMShape, prompt_len: int, response_len: int, block_length: int) -> dict:
    lens = layout_lengths(prompt_len, response_len, block_length)
    rad, full = train_flops(shape, lens["rad"]), train_flops(shape, lens["full"])
    return {"prompt_len": prompt_len, "response_len": response_len, "block_length": block_length,
            "tokens_rad": lens["rad"], "tokens_full": lens["full"], "flops_rad": rad, "flops_full": full,
            "flops_saving_pct": 100.0 * (1 - rad / full)}
