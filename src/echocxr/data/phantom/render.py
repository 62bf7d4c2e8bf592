"""Procedural chest-radiograph renderer for CXR-Phantom (numpy + PIL, a few ms per 256 px image).

The image is an attenuation map drawn in normalised coordinates (u across, v down, both in [0, 1])
and mapped to grey levels: air is dark, soft tissue grey, bone and metal bright. Radiological
convention: the patient's right is on the image's left. Every labelled finding changes the picture in
a way a small CNN can learn (benchmarks/phantom_probe.py measures it); nuisance anatomy (body size,
position, heart shape, exposure, noise, vessel pattern) varies from study to study.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from echocxr.data.phantom.findings import FINDING_LABELS, STREAM_IMAGE, ZONES, Finding, PhantomCase, case_rng

VIEWS: tuple[str, ...] = ("frontal", "lateral")
CM = 0.021  # one centimetre in normalised units (the ~36 cm wide chest spans ~3/4 of the frame)
SIDES = ("right", "left")


@dataclass
class Anatomy:
    """Per-study body geometry shared by the views (drawn from the image stream, never from text)."""

    cx: float  # midline
    half_width: float  # lateral lung edge, from the midline
    mediastinum: float  # upper mediastinum half width
    apex: float
    dome: dict[str, float]  # top of each hemidiaphragm dome (v)
    costophrenic: dict[str, float]  # v of each lateral costophrenic angle
    ctr: float  # cardiothoracic ratio
    hilum_v: float
    carina_v: float
    gain: float
    gamma: float
    noise: float


def _anatomy(case: PhantomCase, rng: np.random.Generator) -> Anatomy:
    dome_r = rng.uniform(0.66, 0.70)
    dome = {"right": dome_r, "left": dome_r + rng.uniform(0.01, 0.03)}
    for f in case.of_kind("atelectasis"):  # volume loss lifts the hemidiaphragm
        dome[f.side] -= 0.05
    cp = {s: dome[s] + rng.uniform(0.08, 0.1) for s in SIDES}
    big_heart = bool(case.of_kind("cardiomegaly"))
    return Anatomy(
        cx=0.5 + rng.normal(0, 0.012),
        half_width=rng.uniform(0.35, 0.39),
        mediastinum=rng.uniform(0.06, 0.075),
        apex=rng.uniform(0.1, 0.13),
        dome=dome,
        costophrenic=cp,
        ctr=rng.uniform(0.58, 0.66) if big_heart else rng.uniform(0.38, 0.47),
        hilum_v=rng.uniform(0.37, 0.41),
        carina_v=rng.uniform(0.3, 0.33),
        gain=rng.uniform(0.92, 1.08),
        gamma=rng.uniform(0.85, 1.15),
        noise=rng.uniform(1.5, 3.5),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    v.setflags(write=False)
    u.setflags(write=False)
    return u, v


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 to 1 across `width` (cheap; the final blur rounds it off)."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def _stripes(phase: np.ndarray, thickness: float) -> np.ndarray:
    """Bands of the given thickness (in phase units) centred on every integer phase."""
    return np.clip(1 - np.abs(phase - np.round(phase)) / thickness, 0, 1)


class _Canvas:
    """Draws polylines/ellipses on a float layer with PIL (fast) in normalised coordinates."""

    def __init__(self, size: int):
        self.size = size
        self.img = Image.new("F", (size, size), 0.0)
        self.draw = ImageDraw.Draw(self.img)

    def line(self, pts: list[tuple[float, float]], width: float, value: float) -> None:
        s = self.size
        self.draw.line([(x * s, y * s) for x, y in pts], fill=float(value), width=max(1, round(width * s)),
                       joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: float) -> None:
        s = self.size
        self.draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=float(value))

    def rounded_rect(self, cx: float, cy: float, w: float, h: float, value: float) -> None:
        s = self.size
        self.draw.rounded_rectangle([(cx - w / 2) * s, (cy - h / 2) * s, (cx + w / 2) * s, (cy + h / 2) * s],
                                    radius=max(1, round(min(w, h) * s / 3)), fill=float(value))

    def array(self) -> np.ndarray:
        return np.asarray(self.img, dtype=np.float32)


def _sign(side: str) -> int:
    """Image-x direction of the patient's side: right -> towards the image's left."""
    return -1 if side == "right" else 1


def _finding_rng(case: PhantomCase, f: Finding, view: str) -> np.random.Generator:
    """Each finding draws from its own stream: adding a finding changes only the pixels it covers."""
    return case_rng(case.seed, case.index, STREAM_IMAGE, 10 + VIEWS.index(view), FINDING_LABELS.index(f.label))


def _to_uint8(d: np.ndarray, a: Anatomy, rng: np.random.Generator, blur: float) -> np.ndarray:
    """Attenuation -> grey levels: exposure (gain), film response (gamma via a lookup table), noise."""
    x = np.clip(d * (a.gain / 1.1 * 1023.0), 0.0, 1023.0).astype(np.uint16)
    lut = (np.linspace(0.0, 1.0, 1024) ** a.gamma * 255.0).astype(np.float32)
    grey = lut[x]
    if blur > 0:
        img = Image.fromarray((grey + 0.5).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(blur))
        grey = np.asarray(img, dtype=np.float32)
    grey = grey + rng.standard_normal(grey.shape, dtype=np.float32) * np.float32(a.noise)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ frontal
class _Frontal:
    """A PA view: every feature is drawn from the study's Anatomy and findings."""

    def __init__(self, case: PhantomCase, a: Anatomy, size: int, rng: np.random.Generator):
        self.case, self.a, self.size, self.rng = case, a, size, rng
        self.u, self.v = _grid(size)
        width = a.ctr * 2 * (a.half_width + 0.015)  # heart width
        self.heart_edge = {"left": 0.62 * width, "right": 0.38 * width}
        self.heart_top = a.hilum_v + 0.05

    def x(self, side: str) -> np.ndarray:
        """Distance from the midline towards the patient's `side` (negative on the other side)."""
        return _sign(side) * (self.u - self.a.cx)

    def zone_band(self, side: str, zone: str) -> tuple[float, float]:
        top, bottom = self.a.apex, self.a.costophrenic[side]
        z = ZONES.index(zone)
        return top + (bottom - top) * z / 3, top + (bottom - top) * (z + 1) / 3

    def _outline(self, side: str) -> tuple[float, float, float, float]:
        a = self.a
        mid, half = (a.mediastinum + a.half_width) / 2, (a.half_width - a.mediastinum) / 2
        top, bottom = a.apex, a.costophrenic[side]
        return mid, half, top + (bottom - top) * 0.45, (bottom - top)

    def lung_extent(self, side: str, v: float) -> tuple[float, float]:
        """(medial, lateral) edges of the lung field at height v, clear of the heart (for placing lesions)."""
        mid, half, vmid, height = self._outline(side)
        if v < vmid:
            frac = max(0.0, 1 - ((vmid - v) / (vmid - self.a.apex)) ** 2.2) ** (1 / 2.2)
        else:
            frac = 1.0
        medial, lateral = mid - half * frac, mid + half * frac
        if v > self.heart_top - 0.03:
            medial = max(medial, self.heart_edge[side] + 0.02)
        return medial, lateral

    def frng(self, f: Finding) -> np.random.Generator:
        return _finding_rng(self.case, f, "frontal")

    def lesion_centre(self, f: Finding, margin: float, rng: np.random.Generator) -> tuple[float, float]:
        lo, hi = self.zone_band(f.side, f.zone)
        hi = min(hi, self.a.dome[f.side] - margin)  # the lower zone's base is behind the diaphragm dome
        med, lat, v = 0.0, 0.0, (lo + hi) / 2
        for _ in range(10):
            v = lo + (hi - lo) * rng.uniform(0.3, 0.7)
            med, lat = self.lung_extent(f.side, v)
            if lat - med > 2 * margin + 0.02:
                break
        hi_frac = 0.5 if any(p.side == f.side for p in self.case.of_kind("pneumothorax")) else 0.9
        x = med + margin + max(lat - med - 2 * margin, 0.0) * rng.uniform(0.1, hi_frac)
        return self.a.cx + _sign(f.side) * x, v

    def render(self) -> np.ndarray:
        a, u, v, rng, case = self.a, self.u, self.v, self.rng, self.case
        dx = np.abs(u - a.cx)

        # soft tissue: shoulders slope down from the neck, the chest fills the frame
        shoulder = 0.02 + 0.3 * np.clip(dx - 0.1, 0, None)
        body = _ramp(v - shoulder, 0.01) * _ramp(a.half_width + 0.1 - dx, 0.01)
        d = 0.55 * body

        # heart: borders bulge from the hila down onto the diaphragm, more to the patient's left
        heart = np.zeros_like(u)
        self.heart_bottom = (a.dome["right"] + a.dome["left"]) / 2 + 0.03
        for side in SIDES:
            start = self.heart_top + (0.0 if side == "left" else 0.06)
            t = np.clip((v - start) / (a.dome[side] - start + 0.02), 0, 1)
            rise = np.sin(np.clip(t * 1.7, 0, 1) * (np.pi / 2)) ** 0.7 - 0.25 * np.clip(t - 0.8, 0, None)
            edge = a.mediastinum * 0.9 + (self.heart_edge[side] - a.mediastinum * 0.9) * rise
            heart = np.maximum(heart, _ramp(edge - self.x(side), 0.008) * (self.x(side) >= 0) * _ramp(v - start, 0.02))
        heart *= _ramp(self.heart_bottom - v, 0.01)
        # upper mediastinum (with the aortic knob on the patient's left) is as dense as the heart
        upper = _ramp(self.heart_top + 0.08 - v, 0.03) * _ramp(v - 0.03, 0.03)
        knob = ((u - a.cx - a.mediastinum - 0.005) / 0.03) ** 2 + ((v - a.carina_v + 0.02) / 0.03) ** 2
        central = np.maximum(heart, np.maximum(_ramp(a.mediastinum - dx, 0.01), _ramp(1 - knob, 0.3)) * upper)

        # lungs (superellipse outline cut by the diaphragm) and what lies below the diaphragm
        self.lung = {}
        self.shape = {}
        below = np.zeros_like(u)
        for side in SIDES:
            x = self.x(side)
            mid, half, vmid, height = self._outline(side)
            ex = np.abs(x - mid) / half
            ev = np.where(v < vmid, (vmid - v) / (vmid - a.apex), 0.0)
            shape = ex ** 2.2 + ev ** 2.2  # < 1 inside the outline
            curve = np.where(x > mid, 1.0, 0.35) * ((x - mid) / half) ** 2
            dome = a.dome[side] + (a.costophrenic[side] - a.dome[side]) * np.minimum(curve, 2.5)
            self.lung[side] = _ramp(1 - shape, 0.06) * _ramp(dome - v, 0.006) * (x > 0) * (1 - central)
            self.shape[side] = shape
            below = np.maximum(below, _ramp(v - dome, 0.006) * (x > -0.003))
        below = np.maximum(below, _ramp(v - self.heart_bottom + 0.01, 0.01) * _ramp(0.12 - dx, 0.01))
        lungs = self.lung["right"] + self.lung["left"]

        # lung markings: vessels fanning out of each hilum, plus fine texture
        vessels = _Canvas(self.size)
        for side in SIDES:
            s = _sign(side)
            hx, hy = a.cx + s * (a.mediastinum + 0.03), a.hilum_v + 0.02
            for _ in range(16):
                ang = rng.uniform(-1.3, 1.4)  # from horizontal, pointing laterally
                length = rng.uniform(0.12, 0.3)
                ex_, ey_ = hx + s * np.cos(ang) * length, hy + np.sin(ang) * length
                mx_, my_ = (hx + ex_) / 2 + rng.normal(0, 0.015), (hy + ey_) / 2 + rng.normal(0, 0.015)
                vessels.line([(hx, hy), (mx_, my_)], 0.008, 0.08)
                vessels.line([(mx_, my_), (ex_, ey_)], 0.004, 0.05)
        markings = vessels.array() + 0.03 * _smooth_noise(rng, self.size, 28)

        free = np.ones_like(u)  # where lung markings survive (not inside a pneumothorax)
        extra = np.zeros_like(u)
        for f in case.of_kind("pneumothorax"):
            rim, line = self._pneumothorax(f)
            free *= 1 - rim
            extra += -0.12 * rim + 0.25 * line
        d += (-0.4 + markings * free + extra) * lungs
        d += 0.38 * central * body + 0.25 * below * body * (1 - central)
        # gastric bubble under the left hemidiaphragm
        gb = ((u - a.cx - 0.17) / 0.055) ** 2 + ((v - a.dome["left"] - 0.075) / 0.03) ** 2
        d -= 0.3 * _ramp(1 - gb, 0.4)

        # spine, trachea and main bronchi
        vertebra = 0.8 + 0.2 * _stripes((v - a.apex) / 0.042, 0.35)
        d += 0.06 * _ramp(0.032 - dx, 0.006) * vertebra * body
        d -= 0.14 * _ramp(0.015 - dx, 0.006) * _ramp(a.carina_v - v, 0.01)
        airway = _Canvas(self.size)
        for s in (-1, 1):
            airway.line([(a.cx, a.carina_v), (a.cx + s * 0.055, a.carina_v + 0.05)], 0.014, 0.12)
        d -= airway.array()

        # bones: posterior ribs arch over each lung, anterior ribs slope down to the sternum; clavicles
        ribs = np.zeros_like(u)
        for side in SIDES:
            xx = np.clip(self.x(side), 0, None) / a.half_width
            cage = _ramp(1.1 - xx, 0.03) * (xx > 0.09) * _ramp(a.costophrenic[side] + 0.02 - v, 0.02)
            spacing = (a.costophrenic[side] - a.apex) / 9.0
            posterior = (v - a.apex + 0.02 + 0.13 * xx - 0.16 * xx**2) / spacing
            anterior = (v - a.apex - 0.1 - 0.12 * np.clip(1 - xx, 0, None) ** 1.5) / spacing - 0.5
            ribs = np.maximum(ribs, (_stripes(posterior, 0.22) * (posterior > -0.5)
                                     + 0.45 * _stripes(anterior, 0.2) * (xx > 0.3) * (anterior < 6)) * cage)
        d += 0.1 * ribs * body * (1 - 0.7 * central)
        bones = _Canvas(self.size)
        for s in (-1, 1):
            bones.line([(a.cx + s * 0.04, a.apex + 0.07), (a.cx + s * 0.17, a.apex + 0.035),
                        (a.cx + s * 0.33, a.apex + 0.015)], 0.022, 0.14)
        d += bones.array()

        # hila
        big = {f.side: f for f in case.of_kind("hilar_enlargement")}
        for side in SIDES:
            s = _sign(side)
            if side in big:
                frng = self.frng(big[side])
                r = frng.uniform(0.045, 0.055)
                hx = a.cx + s * (a.mediastinum + r * 0.7)
                ang = np.arctan2(v - a.hilum_v, u - hx)
                rr = r * (1 + 0.15 * np.cos(3 * ang + frng.uniform(0, 6.3)))
                d += 0.32 * _ramp(rr - np.hypot(u - hx, v - a.hilum_v), 0.006)
            else:
                hx = a.cx + s * (a.mediastinum + 0.016)
                d += 0.14 * _ramp(0.022 - np.hypot(u - hx, (v - a.hilum_v) * 0.8), 0.01)

        d += self._pathology()
        d *= 0.94 + 0.06 * _smooth_noise(rng, self.size, 3)  # uneven exposure
        return d

    def _pneumothorax(self, f: Finding) -> tuple[np.ndarray, np.ndarray]:
        """(rim of free air along the apex and lateral wall, visceral pleural line)."""
        a, v = self.a, self.v
        shape, lung = self.shape[f.side], self.lung[f.side]
        thr = self.frng(f).uniform(0.35, 0.45)
        mid, half, _, _ = self._outline(f.side)
        lateral = _ramp(self.x(f.side) - mid + 0.2 * half, 0.04)
        upper = _ramp(a.costophrenic[f.side] - 0.1 - v, 0.04)
        rim = _ramp(shape - thr, 0.03) * lateral * upper * lung
        line = np.clip(1 - np.abs(shape - thr) / 0.035, 0, 1) * lateral * upper * lung
        return rim, line

    def _pathology(self) -> np.ndarray:
        a, u, v, case = self.a, self.u, self.v, self.case
        out = np.zeros_like(u)
        for f in case.findings:
            rng = self.frng(f)
            if f.kind == "consolidation":
                x0, y0 = self.lesion_centre(f, 0.035, rng)
                sx, sy = rng.uniform(0.05, 0.07), rng.uniform(0.035, 0.045)
                blob = np.exp(-(((u - x0) / sx) ** 2 + ((v - y0) / sy) ** 2))
                patchy = blob * (0.8 + 0.45 * _smooth_noise(rng, self.size, 20))
                out += 0.36 * np.clip((patchy - 0.3) / 0.3, 0, 1) * self.lung[f.side]
            elif f.kind == "nodule":
                r = float(f.get("mm")) / 20 * CM
                x0, y0 = self.lesion_centre(f, r + 0.012, rng)
                out += 0.36 * _ramp(r - np.hypot(u - x0, v - y0), 0.004)
            elif f.kind == "mass":
                r = float(f.get("cm")) / 2 * CM
                x0, y0 = self.lesion_centre(f, r * 0.8, rng)
                ang = np.arctan2(v - y0, u - x0)
                rr = r * (1 + 0.12 * np.cos(3 * ang + rng.uniform(0, 6.3)) + 0.07 * np.cos(5 * ang + rng.uniform(0, 6.3)))
                out += 0.42 * _ramp(rr - np.hypot(u - x0, v - y0), 0.005) * self.lung[f.side]
            elif f.kind == "effusion":
                x = self.x(f.side)
                lat = np.clip((x - a.mediastinum) / (a.half_width - a.mediastinum), 0, 1)
                if f.size == "small":
                    top = a.costophrenic[f.side] - rng.uniform(0.04, 0.055)
                    menisc = top - 0.075 * lat**2
                else:
                    top = a.dome[f.side] - rng.uniform(0.17, 0.22)
                    menisc = top - 0.07 * lat**2
                fluid = _ramp(v - menisc, 0.012)
                grad = 0.8 + 0.2 * np.clip((v - menisc) / 0.06, 0, 1)
                out += 0.48 * fluid * grad * self.lung[f.side]
            elif f.kind == "edema":
                for side in SIDES:
                    hx = a.cx + _sign(side) * (a.mediastinum + 0.05)
                    haze = np.exp(-(((u - hx) / 0.11) ** 2 + ((v - a.hilum_v - 0.04) / 0.14) ** 2))
                    out += (0.22 * haze + 0.05) * self.lung[side]
                kerley = _Canvas(self.size)
                for side in SIDES:
                    s = _sign(side)
                    for _ in range(8):
                        y = a.costophrenic[side] - rng.uniform(0.04, 0.18)
                        x1 = a.half_width - rng.uniform(0.0, 0.02)
                        kerley.line([(a.cx + s * x1, y), (a.cx + s * (x1 - rng.uniform(0.03, 0.05)), y)], 0.005, 0.2)
                out += kerley.array() * (self.lung["right"] + self.lung["left"])
            elif f.kind == "atelectasis":
                s = _sign(f.side)
                bottom = a.costophrenic[f.side]
                y1, y2 = bottom - rng.uniform(0.12, 0.15), bottom - rng.uniform(0.1, 0.16)
                plate = _Canvas(self.size)
                plate.line([(a.cx + s * (self.heart_edge[f.side] - 0.02), y1),
                            (a.cx + s * (a.half_width - 0.02), y2)], 0.02, 0.34)
                out += plate.array() * self.lung[f.side]
        return out

    def devices(self, size: int) -> np.ndarray:
        """Tubes, lines and pacemaker: drawn at the output resolution, metal stays sharp."""
        a = self.a
        c = _Canvas(size)
        cx = a.cx
        for f in self.case.findings:
            if f.kind == "device_ett":
                tip = a.carina_v - float(f.get("cm")) * CM
                c.line([(cx, 0.0), (cx, tip)], 0.014, 0.28)
                c.line([(cx + 0.004, 0.0), (cx + 0.004, tip)], 0.004, 0.6)
            elif f.kind == "device_ngt":
                dl = a.dome["left"]
                c.line([(cx + 0.012, 0.0), (cx + 0.014, a.carina_v), (cx + 0.025, dl - 0.02),
                        (cx + 0.11, dl + 0.06), (cx + 0.17, dl + 0.08)], 0.006, 0.55)
            elif f.kind == "device_central_line":
                tip = a.carina_v + 0.04 if f.get("tip") == "svc" else self.heart_top + 0.03
                route = f.get("route")
                if route == "right_ij":
                    pts = [(cx - 0.13, 0.0), (cx - 0.08, 0.14), (cx - 0.055, a.carina_v - 0.03), (cx - 0.045, tip)]
                else:
                    s = -1 if route == "right_subclavian" else 1
                    pts = [(cx + s * 0.36, a.apex + 0.02), (cx + s * 0.17, a.apex + 0.06), (cx + s * 0.06, a.apex + 0.11),
                           (cx - 0.04, a.carina_v - 0.02), (cx - 0.045, tip)]
                c.line(pts, 0.006, 0.55)
            elif f.kind == "device_pacemaker":
                s = _sign(str(f.get("side")))
                gx, gy = cx + s * 0.26, a.apex + 0.08
                ra = [(gx, gy), (cx + s * 0.12, gy + 0.03), (cx - 0.02, a.carina_v), (cx - 0.06, self.heart_top + 0.02)]
                rv = [(gx, gy), (cx + s * 0.12, gy + 0.035), (cx - 0.01, a.carina_v + 0.01),
                      (cx + 0.02, self.heart_top + 0.08), (cx + 0.09, self.heart_top + 0.15)]
                for pts in ([ra, rv] if f.get("leads") == 2 else [rv]):
                    c.line(pts, 0.005, 0.55)
                c.rounded_rect(gx, gy, 0.1 + self.frng(f).uniform(-0.01, 0.01), 0.065, 1.0)
        return c.array()


# ------------------------------------------------------------------------------------------------ lateral
def _render_lateral(case: PhantomCase, a: Anatomy, size: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A simplified left-lateral view: anterior to the image's left, spine on the right.

    Laterality is not visible on a lateral view; the other findings show where they would.
    """
    u, v = _grid(size)
    ap = a.cx  # anteroposterior centre
    front, back = ap - 0.36, ap + 0.36
    body = _ramp(v - 0.02 - 0.4 * np.clip(0.1 - v, 0, None), 0.01) * _ramp(u - front + 0.02, 0.01) * _ramp(back + 0.04 - u, 0.01)
    d = 0.55 * body
    dome = (a.dome["right"] + a.dome["left"]) / 2 + 0.01
    diaphragm = dome + 0.12 * np.clip((u - ap + 0.1) / 0.4, 0, None) ** 2  # deep posterior sulcus
    lung_shape = ((u - ap - 0.02) / 0.3) ** 2 + (np.clip(0.45 - v, 0, None) / 0.36) ** 2
    lung = _ramp(1 - lung_shape, 0.08) * _ramp(diaphragm - v, 0.006)
    heart_r = 0.1 + 0.22 * a.ctr
    hcx, hcy = front + 0.06 + heart_r, dome + 0.02
    hu, hv = (u - hcx) * 0.87 + (v - hcy) * 0.5, (v - hcy) * 0.87 - (u - hcx) * 0.5  # tilted 30 degrees
    heart = _ramp(1 - (hu / (heart_r * 1.15)) ** 2 - (hv / (heart_r * 0.9)) ** 2, 0.1)
    lung = lung * (1 - heart)
    d += -0.4 * lung + 0.38 * heart * body + 0.25 * _ramp(v - diaphragm, 0.006) * body * (1 - heart)
    d += 0.03 * _smooth_noise(rng, size, 28) * lung
    # spine: vertebral bodies with disc spaces, behind the lungs
    spine_x = back - 0.07
    vert = 0.4 + 0.6 * (1 - _stripes((v - 0.02) / 0.05, 0.18))
    d += 0.25 * _ramp(0.04 - np.abs(u - spine_x), 0.006) * vert * body
    d += 0.12 * _ramp(0.01 - np.abs(u - front - 0.025), 0.006) * _ramp(v - 0.15, 0.02) * _ramp(0.62 - v, 0.02)
    d -= 0.1 * _ramp(0.016 - np.abs(u - (ap - 0.05 + 0.12 * v)), 0.006) * _ramp(a.carina_v - v, 0.01)

    out = np.zeros_like(u)
    zone_v = {"upper": 0.24, "middle": 0.42, "lower": 0.58}
    for f in case.findings:
        frng = _finding_rng(case, f, "lateral")
        if f.kind in ("consolidation", "nodule", "mass"):
            x0, y0 = ap + frng.uniform(-0.1, 0.15), zone_v[f.zone] + frng.uniform(-0.03, 0.03)
            if f.kind == "consolidation":
                blob = np.exp(-(((u - x0) / 0.07) ** 2 + ((v - y0) / 0.05) ** 2))
                out += 0.32 * np.clip((blob - 0.3) / 0.3, 0, 1) * lung
            else:
                r = float(f.get("mm")) / 20 * CM if f.kind == "nodule" else float(f.get("cm")) / 2 * CM
                out += 0.34 * _ramp(r - np.hypot(u - x0, v - y0), 0.004)
        elif f.kind == "effusion":
            level = dome + (0.05 if f.size == "small" else -0.12) - 0.05 * np.clip((u - ap) / 0.3, 0, 1)
            out += 0.45 * _ramp(v - level, 0.012) * _ramp(u - ap + 0.05, 0.08) * lung
        elif f.kind == "edema":
            out += (0.18 * np.exp(-(((u - ap) / 0.15) ** 2 + ((v - a.hilum_v) / 0.15) ** 2)) + 0.05) * lung
        elif f.kind == "hilar_enlargement":
            out += 0.22 * _ramp(0.045 - np.hypot(u - ap - 0.02, v - a.hilum_v), 0.008)
        elif f.kind == "atelectasis":
            out += 0.28 * _ramp(0.009 - np.abs(v - dome + 0.1 - 0.1 * (u - ap)), 0.004) * lung
    d += out
    return d, (hcx, hcy, dome)


def _lateral_devices(case: PhantomCase, a: Anatomy, size: int, heart: tuple[float, float, float]) -> np.ndarray:
    ap, front = a.cx, a.cx - 0.36
    hcx, hcy, dome = heart
    c = _Canvas(size)
    for f in case.findings:
        if f.kind == "device_ett":
            tip = a.carina_v - float(f.get("cm")) * CM
            c.line([(ap - 0.05, 0.0), (ap - 0.05 + 0.12 * tip, tip)], 0.012, 0.4)
        elif f.kind == "device_ngt":
            c.line([(ap + 0.0, 0.0), (ap + 0.06, dome), (ap - 0.02, dome + 0.1)], 0.006, 0.55)
        elif f.kind == "device_central_line":
            c.line([(ap + 0.04, 0.08), (ap - 0.04, 0.3), (ap - 0.06, a.hilum_v + 0.06)], 0.006, 0.55)
        elif f.kind == "device_pacemaker":
            c.line([(front + 0.03, 0.2), (ap - 0.12, 0.35), (hcx, hcy - 0.05)], 0.005, 0.55)
            c.rounded_rect(front + 0.02, 0.2, 0.035, 0.08, 1.0)
    return c.array()


def _work_size(size: int) -> int:
    """Anatomy is smooth, so it is drawn at half resolution above 192 px and upsampled (4x faster)."""
    return size // 2 if size >= 192 else size


def _upsample(d: np.ndarray, size: int) -> np.ndarray:
    if d.shape[0] == size:
        return d
    return np.asarray(Image.fromarray(d, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def render_case(case: PhantomCase, size: int = 256, views: tuple[str, ...] = ("frontal",)) -> list[np.ndarray]:
    """Render a case's images (uint8, size x size, one per view); deterministic per (seed, index)."""
    a = _anatomy(case, case_rng(case.seed, case.index, STREAM_IMAGE, 0))
    work = _work_size(size)
    out = []
    for view in views:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
        rng = case_rng(case.seed, case.index, STREAM_IMAGE, 1 + VIEWS.index(view))
        if view == "frontal":
            frontal = _Frontal(case, a, work, rng)
            d = _upsample(frontal.render(), size) + frontal.devices(size)
        else:
            d, heart = _render_lateral(case, a, work, rng)
            d = _upsample(d, size) + _lateral_devices(case, a, size, heart)
        noise = case_rng(case.seed, case.index, STREAM_IMAGE, 20 + VIEWS.index(view))
        out.append(_to_uint8(d, a, noise, blur=0.0 if work < size else 0.5 * size / 256))
    return out
