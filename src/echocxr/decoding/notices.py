"""One-line warnings when a request falls outside what the model was trained for (its `echocxr.json`).

They never stop a decode: the CLI prints them on stderr, the server returns them in `warnings`.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from echocxr.backbones.settings import PHANTOM_DOMAIN, ModelSettings


def input_notices(settings: ModelSettings, lang: str, images: Sequence[Image.Image] = ()) -> list[str]:
    """Warnings about a prompt: its language, and (phantom models) images that are not CXR-Phantom."""
    out = [w for w in (settings.language_warning(lang),) if w]
    if settings.domain == PHANTOM_DOMAIN and images:
        from echocxr.data.phantom.domain import phantom_mismatch

        for i, im in enumerate(images):
            why = phantom_mismatch(im)
            if why is not None:
                view = f"view {i + 1}: " if len(images) > 1 else ""
                out.append(f"out of domain: the image does not look like CXR-Phantom ({view}{why}); this model "
                           "was trained on phantoms only, its report says nothing about this image")
                break
    return out


def decode_notices(settings: ModelSettings, decoder: str) -> list[str]:
    """Warnings about the decoder chosen for this model."""
    return [w for w in (settings.decoder_warning(decoder),) if w]


def summarise(warnings_per_item: Sequence[Sequence[str]]) -> list[str]:
    """Distinct warnings of a batch run, each once, with how many items had it when not all did."""
    counts: dict[str, int] = {}
    for ws in warnings_per_item:
        for w in dict.fromkeys(ws):
            counts[w] = counts.get(w, 0) + 1
    n = len(warnings_per_item)
    return [w if c == n else f"{w} [{c} of {n}]" for w, c in counts.items()]
