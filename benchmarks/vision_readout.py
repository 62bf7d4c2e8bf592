"""Why the built-in model's vision stage reads the tokens out flat: pooled vs flat read-outs of the same tower.

Trains the tiny Qwen2.5-VL vision tower on CXR-Phantom labels (multi-label BCE) with two read-outs of its
merged tokens and reports test label AUROC / F1 per epoch:
  pooled: attention pooling (one learned query per label) over the tokens, which cannot tell positions apart
          unless the tower encodes them (Qwen2.5-VL's tower has no absolute position embedding);
  flat:   echocxr.training.vision.LabelHead, a linear map of the flattened tokens (what `train vision` uses).

    python benchmarks/vision_readout.py --out benchmarks/results/builtin_model/vision_readout.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class PooledHead(nn.Module):
    def __init__(self, hidden: int, n_labels: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_labels, hidden) * 0.02)
        self.key = nn.Linear(hidden, hidden)
        self.weight = nn.Parameter(torch.zeros(n_labels, hidden))
        self.bias = nn.Parameter(torch.zeros(n_labels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        att = torch.einsum("lh,bth->blt", self.query, self.key(t)) / t.shape[-1] ** 0.5
        pooled = torch.einsum("blt,bth->blh", att.softmax(-1), t)
        return (pooled * self.weight).sum(-1) + self.bias


def load(data: Path, split: str, ip, labels):
    from echocxr.data.images import load_image
    from echocxr.data.manifest import load_manifest

    samples = load_manifest(data / f"{split}_en.json")
    out = ip(images=[load_image(s.images[0]) for s in samples], return_tensors="pt")
    index = {lab: i for i, lab in enumerate(labels)}
    y = torch.zeros(len(samples), len(labels))
    for i, s in enumerate(samples):
        for lab in s.labels:
            y[i, index[lab]] = 1
    n = int(out["image_grid_thw"][0].prod())
    return out["pixel_values"].view(len(samples), n, -1), out["image_grid_thw"], y


def run(readout: str, args, xtr, gtr, ytr, xte, gte, yte, labels) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    from echocxr.backbones.tiny import build_tiny_model
    from echocxr.backbones.tokenizer import train_bpe_tokenizer
    from echocxr.training.vision import LabelHead

    torch.manual_seed(0)
    tok = train_bpe_tokenizer(["a chest x-ray report"] * 4, vocab_size=300)
    model = build_tiny_model("qwen2_5_vl", tok, hidden=args.hidden, layers=1, heads=4,
                             vision_hidden=args.vision_hidden, vision_depth=args.vision_depth)
    vis = model.model.visual.train()
    n_tokens = int(gtr[0].prod()) // 4
    head = LabelHead(n_tokens, args.hidden, tuple(labels)) if readout == "flat" else PooledHead(args.hidden, len(labels))
    params = list(vis.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)

    def logits(x, g):
        b, n, d = x.shape
        t = vis(x.reshape(b * n, d), grid_thw=g).pooler_output
        return head(t.view(b, -1, t.shape[-1]))

    gen, curve, t0 = np.random.default_rng(0), [], time.perf_counter()
    for epoch in range(args.epochs):
        order = gen.permutation(len(xtr))
        for s in range(0, len(xtr) - args.batch_size + 1, args.batch_size):
            b = torch.from_numpy(order[s:s + args.batch_size])
            loss = F.binary_cross_entropy_with_logits(logits(xtr[b], gtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        vis.eval()
        head.eval()
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(logits(xte[i:i + 64], gte[i:i + 64])) for i in range(0, len(xte), 64)]).numpy()
        vis.train()
        head.train()
        y = yte.numpy()
        aucs = [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        curve.append({"epoch": epoch + 1, "auroc_macro": round(100 * float(np.mean(aucs)), 2),
                      "f1_micro": round(100 * f1_score(y, p > 0.5, average="micro", zero_division=0), 2),
                      "f1_macro": round(100 * f1_score(y, p > 0.5, average="macro", zero_division=0), 2),
                      "elapsed_s": round(time.perf_counter() - t0, 1)})
        print(readout, curve[-1], flush=True)
    return {"readout": readout, "curve": curve, "final": curve[-1]}


def main() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from echocxr.data.phantom.findings import FINDING_LABELS
    from echocxr.data.phantom.generate import write_phantom_set

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", help="a phantom set (default: render 2,400 studies at 224 px into --work)")
    ap.add_argument("--work", default="runs/vision_readout")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vision-hidden", type=int, default=96)
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else Path(args.work) / "phantoms"
    if not (data / "train_en.json").is_file():
        write_phantom_set(data, n=2400, seed=0, image_size=224, progress=False)
    ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=args.image_size ** 2)
    xtr, gtr, ytr = load(data, "train", ip, FINDING_LABELS)
    xte, gte, yte = load(data, "test", ip, FINDING_LABELS)
    results = [run(r, args, xtr, gtr, ytr, xte, gte, yte, FINDING_LABELS) for r in ("pooled", "flat")]
    import sys

    out = {"command": " ".join(["python", *sys.argv]), "settings": vars(args),
           "train_studies": len(xtr), "test_studies": len(xte), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
