"""Chat prompts for report generation: the official instructions, multi-view images, pixel cap, and the
resize to a model's training image size (the one place images become model inputs at inference)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from echocxr.backbones.tokenizer import IMAGE_PAD_TOKEN
from echocxr.errors import UserError

PROMPTS = {
    "en": "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
}
MAX_IMAGE_PIXELS = 2_250_000  # the official cap per image
MAX_VIEWS = 8


@dataclass
class EncodedPrompt:
    """One sample's prompt, ready for the engine."""

    input_ids: torch.Tensor  # (P,) long
    mm_token_type_ids: torch.Tensor  # (P,) int: 0 text, 1 image
    pixel_values: torch.Tensor | None = None  # (patches, dim)
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3)
    notices: list[str] = field(default_factory=list)  # warnings about the request (language, image domain)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def prompt_text(lang: str) -> str:
    if lang not in PROMPTS:
        raise UserError(f"unknown language {lang!r} (use one of: {', '.join(PROMPTS)})")
    return PROMPTS[lang]


def fit_to_size(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled to the area of a `size` x `size` square, aspect kept (a square becomes exactly that).

    A model trained at one size (a phantom model at 128 px) sees other sizes as other vision-token grids
    and writes worse reports; scaling by area keeps its token budget for non-square views too.
    """
    w, h = image.size
    if size <= 0 or (w == size and h == size):
        return image
    scale = size / (w * h) ** 0.5
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.Resampling.BICUBIC)  # antialiased when shrinking


def encode_prompt(tokenizer, image_processor, images: list[Image.Image] | None = None, lang: str = "en",
                  instruction: str | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS,
                  image_size: int = 0) -> EncodedPrompt:
    """Apply the chat template with one `<|image_pad|>` run per view, expanded to its vision token count.

    image_size: the model's training size (`ModelSettings.image_size`): every view is resized to it first.
    """
    images = [fit_to_size(im, image_size) for im in images or []]
    text = instruction if instruction is not None else prompt_text(lang)
    if images and image_processor is None:
        raise UserError("this model is text-only: it takes no images")
    if len(images) > MAX_VIEWS:
        raise UserError(f"too many views: {len(images)} (at most {MAX_VIEWS})")
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    pixel_values = grid = None
    if images:
        size = dict(image_processor.size)
        size["longest_edge"] = min(int(size.get("longest_edge", max_image_pixels)), max_image_pixels)
        try:
            out = image_processor(images=images, size=size, return_tensors="pt")
        except ValueError as exc:
            raise UserError(f"cannot process image: {exc}") from None
        pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
        merge = int(getattr(image_processor, "merge_size", 2))
        pieces = chat.split(IMAGE_PAD_TOKEN)
        if len(pieces) != len(images) + 1:
            raise UserError("chat template did not place one image token per view")
        counts = [int(g.prod()) // (merge * merge) for g in grid]
        chat = pieces[0] + "".join(IMAGE_PAD_TOKEN * n + p for n, p in zip(counts, pieces[1:], strict=True))
    ids = tokenizer(chat, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
    mm = (ids == image_id).to(torch.int32)
    return EncodedPrompt(input_ids=ids, mm_token_type_ids=mm, pixel_values=pixel_values, image_grid_thw=grid)
