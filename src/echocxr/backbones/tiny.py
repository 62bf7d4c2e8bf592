"""Tiny Qwen2.5-VL and Qwen2 models built from configs: the offline stand-ins for 7B checkpoints.

They use the real transformers classes, so a directory written by `save_tiny_checkpoint` loads and decodes
through exactly the code path of a real ECHO / Lingshu checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from echocxr.backbones.tokenizer import IMAGE_PAD_TOKEN, VIDEO_PAD_TOKEN, VISION_START_TOKEN

TINY_IMAGE_MAX_PIXELS = 112 * 112  # 4x4 merged vision tokens per image: fast on CPU


def tiny_text_kwargs(tokenizer: PreTrainedTokenizerBase, hidden: int = 64, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def tiny_qwen2_5_vl_config(tokenizer: PreTrainedTokenizerBase, hidden: int = 64, layers: int = 2,
                           heads: int = 4, vision_hidden: int = 32, vision_depth: int = 2) -> Qwen2_5_VLConfig:
    head_dim = hidden // heads
    half = head_dim // 2
    # mrope_section must sum to head_dim / 2 (temporal, height, width)
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = tiny_text_kwargs(tokenizer, hidden, layers, heads, max(1, heads // 2))
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0}
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=2,
            out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            window_size=56, fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids(IMAGE_PAD_TOKEN),
        video_token_id=ids(VIDEO_PAD_TOKEN),
        vision_start_token_id=ids(VISION_START_TOKEN),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def tiny_qwen2_config(tokenizer: PreTrainedTokenizerBase, hidden: int = 64, layers: int = 2, heads: int = 4) -> Qwen2Config:
    return Qwen2Config(**tiny_text_kwargs(tokenizer, hidden, layers, heads, max(1, heads // 2)))


def build_tiny_model(kind: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, init_std: float | None = None,
                     **sizes):
    """kind: 'qwen2_5_vl' or 'qwen2'. Deterministic weights for a given seed.

    `init_std` re-draws every weight matrix with that std: tests use a large one so an untrained model's
    outputs depend visibly on its input (at the default 0.02 a tiny model predicts nearly one token).
    """
    torch.manual_seed(seed)
    if kind == "qwen2_5_vl":
        model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(tokenizer, **sizes))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, **sizes))
    else:
        raise ValueError(f"unknown tiny model kind {kind!r} (expected 'qwen2_5_vl' or 'qwen2')")
    if init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, init_std)
    model.config.mask_token_id = tokenizer.mask_token_id
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    return model.eval()


def save_tiny_checkpoint(out_dir: str | Path, kind: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                         echo_config: dict | None = None, model=None, init_std: float | None = None,
                         **sizes) -> Path:
    """Write model + tokenizer (+ image processor for VL) in the layout of a real HF checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_tiny_model(kind, tokenizer, seed=seed, init_std=init_std, **sizes)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if kind == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=TINY_IMAGE_MAX_PIXELS).save_pretrained(out)
    if echo_config is not None:
        (out / "echocxr.json").write_text(json.dumps(echo_config, indent=1))
    return out
