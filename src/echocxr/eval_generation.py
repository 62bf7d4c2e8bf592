"""Report generation for `echocxr eval --model`: decode a manifest's studies and record speed stats."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from echocxr.data.manifest import Sample


def generate_predictions(args: argparse.Namespace, samples: list[Sample]) -> Iterator[dict]:
    """Yield {"sample_id", "report", "stats"} per sample; unreadable images give an empty report, counted."""
    import warnings

    from tqdm.auto import tqdm

    from echocxr.cli.report import decode_config_from_args, load_engine
    from echocxr.data.images import load_image
    from echocxr.errors import UserError

    engine = load_engine(args.model, args)
    cfg = decode_config_from_args(engine, args)
    device, dtype = str(engine.device), str(engine.bb.dtype).replace("torch.", "")
    bs = max(1, int(getattr(args, "gen_batch_size", 1) or 1))
    bad = 0
    with tqdm(total=len(samples), desc="generate", dynamic_ncols=True) as bar:
        for i in range(0, len(samples), bs):
            chunk = samples[i:i + bs]
            prompts, rows = [], {}
            for j, s in enumerate(chunk):
                try:
                    imgs = [load_image(p) for p in s.images] if engine.is_vision else []
                    prompts.append(engine.encode(imgs, lang=getattr(args, "lang", None) or s.language))
                    rows[j] = len(prompts) - 1
                except UserError as exc:
                    bad += 1
                    rows[j] = str(exc)
            gens = engine.generate(prompts, cfg) if prompts else []
            for j, s in enumerate(chunk):  # manifest order
                r = rows[j]
                if isinstance(r, str):
                    yield {"sample_id": s.sample_id, "report": "", "stats": None, "error": r}
                else:
                    yield {"sample_id": s.sample_id, "report": gens[r].text,
                           "stats": {**gens[r].stats(), "device": device, "dtype": dtype}}
            bar.update(len(chunk))
    if bad:
        warnings.warn(f"{bad} studies had unreadable images and got an empty report", stacklevel=2)
