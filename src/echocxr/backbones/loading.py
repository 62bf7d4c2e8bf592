"""Load a model + tokenizer (+ image processor) from a local directory, as a real checkpoint would be.

`AutoProcessor` cannot be built here (its video processor needs torchvision), so the tokenizer, the image
processor and the chat template are loaded from the directory one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from echocxr.backbones.settings import ModelSettings, read_settings
from echocxr.backbones.tokenizer import MASK_TOKEN, QWEN_VL_CHAT_TEMPLATE
from echocxr.errors import UserError

VISION_MODEL_TYPES = ("qwen2_5_vl",)
TEXT_MODEL_TYPES = ("qwen2",)


@dataclass
class Backbone:
    """Everything decoding needs about one model."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object | None
    mask_token_id: int
    eos_token_ids: list[int]
    settings: ModelSettings = field(default_factory=ModelSettings)
    path: str = ""

    @property
    def is_vision(self) -> bool:
        return self.image_processor is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UserError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return table[dtype]


def read_model_type(model_dir: Path) -> str:
    cfg_path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    if not cfg_path.is_file():
        raise UserError(f"not a model directory (no config.json): {model_dir}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {cfg_path}: {exc}") from None
    model_type = cfg.get("model_type", "")
    if model_type not in VISION_MODEL_TYPES + TEXT_MODEL_TYPES:
        raise UserError(
            f"unsupported model_type {model_type!r} in {cfg_path} (supported: {', '.join(VISION_MODEL_TYPES + TEXT_MODEL_TYPES)})"
        )
    return model_type


def load_backbone(model_dir: str | Path, device: str = "cpu", dtype: str | torch.dtype = "auto",
                  attn_implementation: str = "sdpa", ensure_mask: bool = True) -> Backbone:
    """Load a Qwen2.5-VL (ECHO, ECHO-Base, Lingshu, tiny) or Qwen2 text model from `model_dir` ("builtin":
    the packaged model, so every verb that loads a model accepts it)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM

    from echocxr.backbones.builtin import resolve_model_dir

    model_dir = Path(resolve_model_dir(model_dir))
    model_type = read_model_type(model_dir)
    torch_dtype = resolve_dtype(dtype, device)
    settings = read_settings(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad tokenizer
        raise UserError(f"cannot load tokenizer from {model_dir}: {exc}") from None
    cls = Qwen2_5_VLForConditionalGeneration if model_type in VISION_MODEL_TYPES else Qwen2ForCausalLM
    try:
        model = cls.from_pretrained(model_dir, dtype=torch_dtype, attn_implementation=attn_implementation)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load model weights from {model_dir}: {exc}") from None
    model.to(device).eval()

    if tokenizer.chat_template is None:
        tokenizer.chat_template = read_chat_template(model_dir) or QWEN_VL_CHAT_TEMPLATE
    image_processor = load_image_processor(model_dir) if model_type in VISION_MODEL_TYPES else None
    mask_id = resolve_mask_token_id(model, tokenizer, add_if_missing=ensure_mask)
    return Backbone(model=model, tokenizer=tokenizer, image_processor=image_processor, mask_token_id=mask_id,
                    eos_token_ids=eos_token_ids(model, tokenizer), settings=settings, path=str(model_dir))


def read_chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = model_dir / "chat_template.json"
    if js.is_file():
        try:
            return json.loads(js.read_text()).get("chat_template")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def load_image_processor(model_dir: Path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if (model_dir / "preprocessor_config.json").is_file():
        try:
            return Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot load image processor from {model_dir}: {exc}") from None
    return Qwen2VLImageProcessorPil()


def resolve_mask_token_id(model, tokenizer, add_if_missing: bool = True) -> int:
    """As the official code: config.mask_token_id, then the tokenizer's mask token, then `<|MASK|>`.

    A model without one (e.g. an AR checkpoint about to be RAD-trained) gets `<|MASK|>` added, with the
    embeddings resized only when the new id does not fit the existing rows.
    """
    cfg_id = getattr(model.config, "mask_token_id", None)
    if cfg_id is not None:
        return int(cfg_id)
    if getattr(tokenizer, "mask_token_id", None) is not None:
        mask_id = int(tokenizer.mask_token_id)
    elif MASK_TOKEN in tokenizer.get_vocab():
        mask_id = int(tokenizer.convert_tokens_to_ids(MASK_TOKEN))
    elif add_if_missing:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        mask_id = int(tokenizer.convert_tokens_to_ids(MASK_TOKEN))
        if mask_id >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    else:
        raise UserError("model has no mask token (config.mask_token_id, tokenizer mask token or <|MASK|>)")
    model.config.mask_token_id = mask_id
    return mask_id


def eos_token_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for i in extra or []:
        if int(i) not in ids:
            ids.append(int(i))
    return ids
