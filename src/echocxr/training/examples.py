"""Training examples from a manifest: an encoded prompt and the response token ids (report + <eos>).

Bad records (missing/unreadable image, empty report) are skipped and counted, never crash a run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from echocxr.backbones.prompt import EncodedPrompt, encode_prompt
from echocxr.data.images import load_image
from echocxr.data.manifest import Sample, reference_text
from echocxr.errors import UserError


@dataclass
class TrainExample:
    prompt: EncodedPrompt
    response_ids: list[int]  # report tokens followed by one <eos>
    sample_id: str = ""
    language: str = "en"
    labels: tuple[str, ...] = ()  # finding labels of the study (vision pretraining)

    @property
    def key(self) -> str:
        """Unique per training example: a bilingual set holds each study once per language (same sample_id)."""
        return f"{self.sample_id}#{self.language}"


@dataclass
class ExampleStats:
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def response_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def build_examples(samples: list[Sample], tokenizer, image_processor, max_response_tokens: int = 512,
                   max_prompt_tokens: int = 8192) -> tuple[list[TrainExample], ExampleStats]:
    stats = ExampleStats()
    out: list[TrainExample] = []
    for s in samples:
        if not (s.findings.strip() or s.impression.strip()):
            stats.skip("empty report")
            continue
        try:
            images = [load_image(p) for p in s.images] if image_processor is not None else []
            if image_processor is not None and not images:
                stats.skip("no image")
                continue
            prompt = encode_prompt(tokenizer, image_processor, images, lang=s.language)
        except UserError:
            stats.skip("unreadable image")
            continue
        if prompt.length > max_prompt_tokens:
            stats.skip("prompt too long")
            continue
        ids = response_ids(tokenizer, reference_text(s.findings, s.impression, s.language))
        if len(ids) > max_response_tokens:
            stats.skip("response too long")
            continue
        out.append(TrainExample(prompt=prompt, response_ids=ids, sample_id=s.sample_id, language=s.language,
                                labels=tuple(s.labels or ())))
        stats.kept += 1
    if stats.skipped:
        detail = ", ".join(f"{v} {k}" for k, v in sorted(stats.skipped.items()))
        warnings.warn(f"skipped {sum(stats.skipped.values())} of {len(samples)} records: {detail}", stacklevel=2)
    return out, stats
