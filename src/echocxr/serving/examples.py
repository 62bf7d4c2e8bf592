"""Built-in example studies for the web page, rendered by CXR-Phantom on first use (no files shipped)."""

from __future__ import annotations

import functools
from io import BytesIO

# (name, phantom seed, case index): a normal study and a few with clearly visible findings
EXAMPLES: tuple[tuple[str, int, int], ...] = (
    ("normal", 7, 2),
    ("cardiomegaly-effusion", 7, 0),
    ("pneumothorax-nodule", 7, 3),
    ("lines-and-tubes", 7, 1),
    ("pacemaker", 7, 10),
)
EXAMPLE_SIZE = 384


def list_examples() -> list[dict]:
    from echocxr.data.phantom import sample_case

    out = []
    for name, seed, index in EXAMPLES:
        labels = sample_case(seed, index).labels
        out.append({"name": name, "url": f"/examples/{name}.png",
                    "findings": [lb.replace("_", " ") for lb in labels] or ["no finding"]})
    return out


@functools.cache
def example_png(name: str) -> bytes | None:
    """PNG bytes of one example (rendered once per process), or None for an unknown name."""
    from PIL import Image

    from echocxr.data.phantom import render_case, sample_case

    for ex_name, seed, index in EXAMPLES:
        if ex_name == name:
            arr = render_case(sample_case(seed, index), size=EXAMPLE_SIZE)[0]
            buf = BytesIO()
            Image.fromarray(arr, mode="L").save(buf, format="PNG")
            return buf.getvalue()
    return None
