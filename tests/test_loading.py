"""Loading a saved checkpoint through the path a real 7B Qwen2.5-VL takes; mask-token resolution."""

from __future__ import annotations

import json

import pytest
import torch

from echocxr.backbones.loading import load_backbone, resolve_mask_token_id
from echocxr.backbones.prompt import MAX_IMAGE_PIXELS, encode_prompt
from echocxr.backbones.settings import ModelSettings
from echocxr.errors import UserError


def test_saved_vl_checkpoint_loads_like_a_real_one(tiny_vl_dir, tokenizer):
    bb = load_backbone(tiny_vl_dir)
    assert type(bb.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert bb.is_vision and bb.mask_token_id == tokenizer.mask_token_id
    assert bb.eos_token_ids[0] == tokenizer.eos_token_id
    assert bb.tokenizer.chat_template
    assert bb.settings == ModelSettings()  # no echocxr.json: official defaults (block-grid prefill)


def test_text_model_loads_and_rejects_images(tiny_text_dir, images):
    bb = load_backbone(tiny_text_dir)
    assert not bb.is_vision
    with pytest.raises(UserError, match="text-only"):
        encode_prompt(bb.tokenizer, bb.image_processor, images[:1])


def test_multi_view_prompt_expands_each_view(tiny_vl_dir, images):
    bb = load_backbone(tiny_vl_dir)
    p = encode_prompt(bb.tokenizer, bb.image_processor, images[:2], lang="zh")
    merge = bb.image_processor.merge_size
    n_img = int((p.mm_token_type_ids == 1).sum())
    assert p.image_grid_thw.shape[0] == 2
    assert n_img == int(sum(g.prod() for g in p.image_grid_thw)) // merge**2
    text = bb.tokenizer.decode(p.input_ids)
    assert text.count("<|vision_start|>") == 2 and "胸部X光" in text and text.endswith("<|im_start|>assistant\n")


def test_pixel_cap_is_the_official_one(tiny_vl_dir):
    from PIL import Image

    bb = load_backbone(tiny_vl_dir)
    bb.image_processor.size = {"shortest_edge": 28 * 28, "longest_edge": 10**8}
    p = encode_prompt(bb.tokenizer, bb.image_processor, [Image.new("L", (3000, 3000))])
    h, w = int(p.image_grid_thw[0, 1]) * 14, int(p.image_grid_thw[0, 2]) * 14
    assert h * w <= MAX_IMAGE_PIXELS


def test_mask_resolution_order_and_adding(tmp_path, tokenizer):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from echocxr.backbones.tiny import build_tiny_model
    from echocxr.backbones.tokenizer import QWEN_VL_SPECIAL_TOKENS

    # 1) config wins
    model = build_tiny_model("qwen2", tokenizer)
    model.config.mask_token_id = 7
    assert resolve_mask_token_id(model, tokenizer) == 7
    # 2) tokenizer's mask token
    model.config.mask_token_id = None
    assert resolve_mask_token_id(model, tokenizer) == tokenizer.mask_token_id
    # 3) no mask anywhere: <|MASK|> is added and the embeddings grow to hold it
    raw = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    no_mask = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    vocab = {k: v for k, v in no_mask.get_vocab().items() if k != "<|MASK|>"}
    assert "<|MASK|>" in no_mask.get_vocab()  # the BPE carries it as an added token...
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(__import__("tokenizers").models.WordLevel(
        {**{t: i for i, t in enumerate(QWEN_VL_SPECIAL_TOKENS)}, "a": len(QWEN_VL_SPECIAL_TOKENS)}, unk_token="a")),
        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    m2 = build_tiny_model("qwen2", plain)
    rows = m2.get_input_embeddings().weight.shape[0]
    mid = resolve_mask_token_id(m2, plain)
    assert plain.convert_ids_to_tokens(mid) == "<|MASK|>" and mid == rows
    assert m2.get_input_embeddings().weight.shape[0] == rows + 1 and m2.config.mask_token_id == mid
    assert len(vocab) > 0


def test_bad_model_dirs_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_backbone(tmp_path / "missing")
    with pytest.raises(UserError, match="no config.json"):
        load_backbone(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="unsupported model_type"):
        load_backbone(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_backbone(tmp_path)


def test_settings_file_round_trip(tmp_path, tiny_vl_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_vl_dir, d)
    ModelSettings(block_length=8, prefill="response_aligned", decoder="multistep", steps=8).save(d)
    bb = load_backbone(d)
    assert bb.settings.block_length == 8 and bb.settings.prefill == "response_aligned"
    from echocxr.decoding.engine import ReportEngine

    cfg = ReportEngine(bb).default_config(max_new_tokens=8)
    assert (cfg.decoder, cfg.block_length, cfg.prefill, cfg.steps) == ("multistep", 8, "response_aligned", 8)
    assert torch.is_tensor(bb.model.lm_head.weight)
