"""Decode many studies from files in batches: the loop behind `report --dir/--manifest` and `eval --model`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.decoding.results import Generation


@dataclass
class Study:
    sample_id: str
    images: list[str]  # paths; empty for a text-only model
    language: str = "en"


def decode_studies(engine: ReportEngine, cfg: DecodeConfig, studies: Sequence[Study], batch_size: int,
                   desc: str = "reports") -> Iterator[tuple[Study, Generation | None, str | None]]:
    """Yield (study, generation, None), or (study, None, error) when its images cannot be read, in input order."""
    from tqdm.auto import tqdm

    from echocxr.data.images import load_image
    from echocxr.errors import UserError

    with tqdm(total=len(studies), desc=desc, dynamic_ncols=True, file=sys.stderr) as bar:
        for i in range(0, len(studies), batch_size):
            chunk = studies[i:i + batch_size]
            prompts, slot = [], []
            for s in chunk:
                try:
                    prompts.append(engine.encode([load_image(p) for p in s.images], lang=s.language))
                    slot.append(len(prompts) - 1)
                except UserError as exc:
                    slot.append(str(exc))
            gens = engine.generate(prompts, cfg) if prompts else []
            for s, k in zip(chunk, slot, strict=True):
                yield (s, None, k) if isinstance(k, str) else (s, gens[k], None)
            bar.update(len(chunk))
