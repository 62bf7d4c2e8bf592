"""Is this image a CXR-Phantom radiograph? A cheap pixel check for the out-of-domain notice.

A phantom-trained model writes a confident phantom report for anything, so a photo or a real radiograph
should be flagged. The check tests properties `render.py` guarantees for every study, view and size
(measured on 120+ studies per view at 48-512 px, with wide margins), on a 64 px grey copy:

1. square: the renderer draws size x size;
2. grey: written as 8-bit L (R = G = B after loading);
3. dark top corners: above the shoulders (frontal) and in front of / behind the body (lateral) is air,
   grey level ~0-18 (threshold 40);
4. a bright body: the lower centre (heart, diaphragm) is >= 117 grey levels above those corners (threshold 60);
5. a lung valley: across the mid-chest rows the darkest column (a lung) has brighter columns on both
   sides (mediastinum, chest wall, spine) by >= 50 (threshold 25): this is what gradients and vignettes lack.

It is a guard against obvious misuse, not a proof: a real radiograph that happens to be square with
black top corners may pass. Lossy re-encoding (JPEG) and resizing keep a phantom passing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CHECK_SIZE = 64
MAX_ASPECT_DIFF = 0.02
MAX_CHANNEL_DIFF = 4.0
MAX_CORNER = 40.0
MIN_BODY_OVER_CORNER = 60.0
MIN_LUNG_VALLEY = 25.0


def phantom_mismatch(image: Image.Image) -> str | None:
    """Why `image` does not look like a CXR-Phantom radiograph, or None when it does."""
    w, h = image.size
    if abs(w - h) > MAX_ASPECT_DIFF * max(w, h):
        return f"not square ({w}x{h})"
    small = image.convert("RGB").resize((CHECK_SIZE, CHECK_SIZE), Image.Resampling.BOX)
    rgb = np.asarray(small, dtype=np.float32)
    if float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) > MAX_CHANNEL_DIFF:
        return "in colour"
    a = rgb.mean(axis=2)
    n = CHECK_SIZE
    c = round(0.08 * n)
    corner = max(float(a[:c, :c].mean()), float(a[:c, -c:].mean()))
    if corner > MAX_CORNER:
        return "no dark air in the top corners"
    body = float(a[round(0.45 * n):round(0.9 * n), round(0.3 * n):round(0.7 * n)].mean())
    if body - corner < MIN_BODY_OVER_CORNER:
        return "no bright chest in the centre"
    band = a[round(0.3 * n):round(0.55 * n)].mean(axis=0)
    prof = np.convolve(band, np.ones(2) / 2, mode="same")
    lo, hi = round(0.15 * n), round(0.85 * n)
    j = lo + int(np.argmin(prof[lo:hi]))
    if min(float(prof[:j + 1].max()), float(prof[j:].max())) - float(prof[j]) < MIN_LUNG_VALLEY:
        return "no lung fields"
    return None
