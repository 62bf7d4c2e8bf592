"""CXR-Phantom's finding vocabulary and the random draw of one study's findings.

Label vocabulary (fixed; manifests' `labels` and the labeler's output use exactly these strings).
Sides are the PATIENT's (radiological convention: the patient's right is on the image's left).

    cardiomegaly                          heart width / thorax width >= 0.55
    effusion_{right,left}_{small,large}   pleural effusion; small = blunted costophrenic angle,
                                          large = meniscus up to the mid zone
    pneumothorax_{right,left}             lucent rim without lung markings, visible pleural line
    consolidation_{side}_{zone}           patchy airspace opacity; zone in {upper, middle, lower}
    nodule_{side}_{zone}                  round opacity 12-25 mm
    mass_{side}_{zone}                    lobulated opacity 3.5-6 cm
    edema                                 bilateral perihilar haze with septal (Kerley B) lines
    atelectasis_{right,left}              basal plate-like band with an elevated hemidiaphragm
    hilar_enlargement_{right,left}        enlarged, lobulated hilum
    device_ett                            endotracheal tube, tip 3-6 cm above the carina
    device_ngt                            nasogastric tube, tip in the stomach
    device_central_line                   central venous catheter (route + tip position)
    device_pacemaker                      chest-wall generator with one or two leads

Lung zones split the lung height (apex to costophrenic angle) into equal thirds.

Reading real (non-phantom) reports, `echocxr.data.labeler` maps text that omits a detail onto this same
vocabulary with fixed defaults: no side -> both sides, no effusion size -> small ("moderate" counts as
large), no zone -> lower zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIDES: tuple[str, ...] = ("right", "left")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIZES: tuple[str, ...] = ("small", "large")

# Finding types in the clinical order reports list them; devices last in the vocabulary.
PATHOLOGY_TYPES: tuple[str, ...] = (
    "cardiomegaly", "hilar_enlargement", "consolidation", "nodule", "mass", "atelectasis", "edema",
    "effusion", "pneumothorax",
)
DEVICE_TYPES: tuple[str, ...] = ("device_ett", "device_ngt", "device_central_line", "device_pacemaker")
FINDING_TYPES: tuple[str, ...] = PATHOLOGY_TYPES + DEVICE_TYPES


def _build_labels() -> tuple[str, ...]:
    out = ["cardiomegaly"]
    out += [f"hilar_enlargement_{s}" for s in SIDES]
    for kind in ("consolidation", "nodule", "mass"):
        out += [f"{kind}_{s}_{z}" for s in SIDES for z in ZONES]
    out += [f"atelectasis_{s}" for s in SIDES]
    out += ["edema"]
    out += [f"effusion_{s}_{size}" for s in SIDES for size in SIZES]
    out += [f"pneumothorax_{s}" for s in SIDES]
    out += list(DEVICE_TYPES)
    return tuple(out)


FINDING_LABELS: tuple[str, ...] = _build_labels()
_LABEL_SET = frozenset(FINDING_LABELS)

# Device details shown in the report text (they are visible in the image, not paraphrase choices).
CENTRAL_LINE_ROUTES: tuple[str, ...] = ("right_ij", "left_subclavian", "right_subclavian")
CENTRAL_LINE_TIPS: tuple[str, ...] = ("svc", "cavoatrial")
ETT_CM_ABOVE_CARINA: tuple[int, ...] = (3, 4, 5, 6)
NODULE_MM: tuple[int, ...] = (12, 16, 20, 25)
MASS_CM: tuple[float, ...] = (3.5, 4.5, 6.0)


def finding_type(label: str) -> str:
    """The finding type a label belongs to (`effusion_left_small` -> `effusion`), for type-level scores."""
    for t in sorted(FINDING_TYPES, key=len, reverse=True):
        if label == t or label.startswith(t + "_"):
            return t
    raise ValueError(f"not a CXR-Phantom label: {label!r}")


def is_label(label: str) -> bool:
    return label in _LABEL_SET


@dataclass(frozen=True)
class Finding:
    """One labelled finding of a phantom study; `attrs` holds visible details the report states."""

    kind: str
    side: str | None = None
    zone: str | None = None
    size: str | None = None
    attrs: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        if self.kind in ("cardiomegaly", "edema") or self.kind in DEVICE_TYPES:
            return self.kind
        if self.kind == "effusion":
            return f"effusion_{self.side}_{self.size}"
        if self.kind in ("consolidation", "nodule", "mass"):
            return f"{self.kind}_{self.side}_{self.zone}"
        return f"{self.kind}_{self.side}"

    def get(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)


@dataclass
class PhantomCase:
    """A phantom study's ground truth: everything the image shows and the report must say."""

    seed: int
    index: int
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def labels(self) -> list[str]:
        return sorted({f.label for f in self.findings})

    @property
    def is_normal(self) -> bool:
        return not self.findings

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


# Stream ids for np.random.SeedSequence([seed, index, stream]): image and text randomness never share a
# stream, so a report's phrasing carries no information about the image beyond its findings.
STREAM_CASE = 0
STREAM_IMAGE = 1
STREAM_TEXT = 2


def case_rng(seed: int, index: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream), *extra]))


P_NORMAL = 0.35
_TYPE_WEIGHTS = {
    "cardiomegaly": 1.0, "hilar_enlargement": 0.8, "consolidation": 1.3, "nodule": 1.0, "mass": 0.8,
    "atelectasis": 0.8, "edema": 0.7, "effusion": 1.3, "pneumothorax": 0.8,
}


def sample_case(seed: int, index: int) -> PhantomCase:
    """Draw study `index` of the set made with `seed` (independent of set size, so sets nest)."""
    rng = case_rng(seed, index, STREAM_CASE)
    if rng.random() < P_NORMAL:
        return PhantomCase(seed, index, ())
    found: list[Finding] = []
    # devices: an "ICU" study often has tube + line together
    if rng.random() < 0.15:
        found.append(Finding("device_ett", attrs=(("cm", int(rng.choice(ETT_CM_ABOVE_CARINA))),)))
    if rng.random() < (0.6 if found else 0.12):
        found.append(Finding("device_ngt"))
    if rng.random() < 0.15:
        found.append(Finding("device_central_line", attrs=(
            ("route", str(rng.choice(CENTRAL_LINE_ROUTES))), ("tip", str(rng.choice(CENTRAL_LINE_TIPS))))))
    if rng.random() < 0.10:
        found.append(Finding("device_pacemaker", attrs=(
            ("side", "left" if rng.random() < 0.8 else "right"), ("leads", int(rng.integers(1, 3))))))
    n_path = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.45, 0.3, 0.15]))
    if n_path == 0 and not found:
        n_path = 1
    types = list(_TYPE_WEIGHTS)
    w = np.array([_TYPE_WEIGHTS[t] for t in types])
    chosen = rng.choice(len(types), size=n_path, replace=False, p=w / w.sum())
    for ti in sorted(int(i) for i in chosen):
        for _ in range(20):  # a few redraws when a finding would hide another
            new = _draw_finding(types[ti], rng)
            if not any(_conflicts(a, b) for a in new for b in found):
                found.extend(new)
                break
    order = {t: i for i, t in enumerate(FINDING_TYPES)}
    found.sort(key=lambda f: (order[f.kind], f.label))
    return PhantomCase(seed, index, tuple(found))


def _side(rng: np.random.Generator) -> str:
    return str(rng.choice(SIDES))


def _draw_finding(kind: str, rng: np.random.Generator) -> list[Finding]:
    if kind in ("cardiomegaly", "edema"):
        return [Finding(kind)]
    if kind == "effusion":
        size = str(rng.choice(SIZES, p=[0.6, 0.4]))
        if rng.random() < 0.3:  # bilateral, sometimes of different sizes
            other = size if rng.random() < 0.7 else str(rng.choice(SIZES))
            return [Finding("effusion", "right", size=size), Finding("effusion", "left", size=other)]
        return [Finding("effusion", _side(rng), size=size)]
    if kind in ("hilar_enlargement", "atelectasis"):
        if rng.random() < 0.3:
            return [Finding(kind, "right"), Finding(kind, "left")]
        return [Finding(kind, _side(rng))]
    if kind == "pneumothorax":
        return [Finding(kind, _side(rng))]
    zone = str(rng.choice(ZONES))
    if kind == "nodule":
        return [Finding(kind, _side(rng), zone, attrs=(("mm", int(rng.choice(NODULE_MM))),))]
    if kind == "mass":
        return [Finding(kind, _side(rng), zone, attrs=(("cm", float(rng.choice(MASS_CM))),))]
    return [Finding(kind, _side(rng), zone)]  # consolidation


_LESIONS = ("consolidation", "nodule", "mass")


def _conflicts(a: Finding, b: Finding) -> bool:
    """True when two findings could not both be seen (one would cover or duplicate the other)."""
    if a.label == b.label or (a.kind == b.kind == "effusion" and a.side == b.side):
        return True
    if a.side is None or b.side is None or a.side != b.side:
        return False
    if a.kind in _LESIONS and b.kind in _LESIONS:
        return a.zone == b.zone
    for x, y in ((a, b), (b, a)):
        if x.kind == "effusion" and x.size == "large":
            if y.kind == "atelectasis" or (y.kind in _LESIONS and y.zone == "lower"):
                return True
        if x.kind == "atelectasis" and y.kind in _LESIONS and y.zone == "lower":
            return True
    return False
