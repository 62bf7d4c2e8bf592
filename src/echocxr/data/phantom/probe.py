"""A small CNN probe that shows CXR-Phantom findings are visible (learnable from the pixels alone).

Trains a 4-block CNN on rendered frontal images to predict the 34 labels (multi-label), then reports
AUROC per label and per finding type on held-out studies from a different seed. Used by
`benchmarks/phantom_probe.py` (full size, committed result) and by a fast test (small size, lower bar).
torch and scikit-learn are imported inside the functions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from echocxr.data.phantom.findings import FINDING_LABELS, FINDING_TYPES, finding_type, sample_case
from echocxr.data.phantom.render import render_case


@dataclass
class ProbeConfig:
    n_train: int = 2000
    n_test: int = 1000
    train_seed: int = 0
    test_seed: int = 1
    image_size: int = 256  # rendered size
    probe_size: int = 128  # the CNN sees images downsampled to this
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 12  # channels of the first conv block (doubles up to 4x)
    min_positives: int = 5  # labels with fewer test positives are left out of the macro mean
    threads: int = 1
    seed: int = 0


def render_dataset(n: int, seed: int, image_size: int, probe_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [n, 1, s, s] in [0, 1], labels float32 [n, n_labels]) for studies 0..n-1 of `seed`."""
    from PIL import Image

    index = {lab: i for i, lab in enumerate(FINDING_LABELS)}
    x = np.zeros((n, 1, probe_size, probe_size), dtype=np.float32)
    y = np.zeros((n, len(FINDING_LABELS)), dtype=np.float32)
    for i in range(n):
        case = sample_case(seed, i)
        img = Image.fromarray(render_case(case, image_size)[0])
        if probe_size != image_size:
            img = img.resize((probe_size, probe_size), Image.BILINEAR)
        x[i, 0] = np.asarray(img, dtype=np.float32) / 255.0
        for lab in case.labels:
            y[i, index[lab]] = 1.0
    return x, y


def _model(width: int, size: int, n_out: int):
    import torch.nn as nn

    layers, c_in = [], 1
    for c_out in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c_in = c_out
    # flatten (not global pooling): side and zone are positions, the head must keep them
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3), nn.Linear(c_in * (size // 16) ** 2, n_out))


def train_probe(x: np.ndarray, y: np.ndarray, cfg: ProbeConfig):
    """Fit the CNN on (x, y); small random shifts as augmentation (they keep side and zone)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    model = _model(cfg.width, x.shape[-1], y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * int(np.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    shift = max(1, x.shape[-1] // 40)
    model.train()
    for _ in range(cfg.epochs):
        order = gen.permutation(len(x))
        for start in range(0, len(x), cfg.batch_size):
            idx = torch.from_numpy(order[start:start + cfg.batch_size])
            xb = F.pad(xt[idx], (shift,) * 4, mode="replicate")
            dx, dy = (int(v) for v in gen.integers(0, 2 * shift + 1, size=2))
            xb = xb[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
            loss = F.binary_cross_entropy_with_logits(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def predict(model, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(torch.sigmoid(model(torch.from_numpy(x[start:start + batch_size]))).numpy())
    return np.concatenate(out)


def auroc_report(y: np.ndarray, p: np.ndarray, min_positives: int = 5) -> dict:
    """Per-label AUROC, per-type AUROC (any label of the type; score = max over its labels), macro means."""
    from sklearn.metrics import roc_auc_score

    per_label: dict[str, dict] = {}
    for j, lab in enumerate(FINDING_LABELS):
        pos = int(y[:, j].sum())
        neg = len(y) - pos
        auc = float(roc_auc_score(y[:, j], p[:, j])) if pos and neg else None
        per_label[lab] = {"auroc": auc, "positives": pos, "in_macro": bool(auc is not None and pos >= min_positives)}
    per_type: dict[str, dict] = {}
    for t in FINDING_TYPES:
        cols = [j for j, lab in enumerate(FINDING_LABELS) if finding_type(lab) == t]
        yt, pt = y[:, cols].max(1), p[:, cols].max(1)
        pos = int(yt.sum())
        label_aucs = [per_label[FINDING_LABELS[j]]["auroc"] for j in cols if per_label[FINDING_LABELS[j]]["in_macro"]]
        per_type[t] = {
            "auroc_any": float(roc_auc_score(yt, pt)) if 0 < pos < len(yt) else None,
            "mean_label_auroc": float(np.mean(label_aucs)) if label_aucs else None,
            "positives": pos,
        }
    in_macro = [v["auroc"] for v in per_label.values() if v["in_macro"]]
    type_any = [v["auroc_any"] for v in per_type.values() if v["auroc_any"] is not None]
    return {
        "macro_auroc_labels": float(np.mean(in_macro)) if in_macro else None,
        "labels_in_macro": len(in_macro),
        "min_label_auroc": float(np.min(in_macro)) if in_macro else None,
        "macro_auroc_types": float(np.mean(type_any)) if type_any else None,
        "per_type": per_type,
        "per_label": per_label,
    }


def run_probe(cfg: ProbeConfig) -> dict:
    """Render, train, evaluate; returns a json-able dict with the settings, timings and AUROCs."""
    import torch

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    x_tr, y_tr = render_dataset(cfg.n_train, cfg.train_seed, cfg.image_size, cfg.probe_size)
    x_te, y_te = render_dataset(cfg.n_test, cfg.test_seed, cfg.image_size, cfg.probe_size)
    t1 = time.perf_counter()
    model = train_probe(x_tr, y_tr, cfg)
    t2 = time.perf_counter()
    report = auroc_report(y_te, predict(model, x_te), cfg.min_positives)
    return {"config": asdict(cfg), "seconds": {"render": round(t1 - t0, 1), "train": round(t2 - t1, 1)},
            **report}
