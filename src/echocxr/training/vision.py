"""Vision pretraining on finding labels (`echocxr train vision`): teach the vision tower what to look at.

Trained only through the report loss, a small vision tower learns the report grammar's prior and little of
the image (CXR-Phantom: finding F1 macro 19.7 while a CNN probe reaches AUROC 0.997 on the same pixels).
This stage trains the tower on the labels directly, multi-label BCE, before AR.

The read-out is a linear map of the flattened merged vision tokens: every token position has its own
weights, so side and zone (a position) stay learnable. Qwen2.5-VL's vision tower has no absolute position
embedding, and a pooled read-out (mean/max/attention over tokens) hides which token fired; with it the same
tower stayed near AUROC 0.6-0.8 after 8 epochs, with the flat read-out it passes 0.9 in 15 epochs
(benchmarks/results/builtin_model/STUDY.md). The head exists only in training (its state lives in the
trainer state); the saved model is a plain Qwen2.5-VL.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from echocxr.errors import UserError


class LabelHead(nn.Module):
    """Linear multi-label read-out of one image's merged vision tokens (fixed count: fixed image size)."""

    def __init__(self, n_tokens: int, hidden: int, labels: tuple[str, ...], dropout: float = 0.0):
        super().__init__()
        self.n_tokens, self.labels = n_tokens, tuple(labels)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(n_tokens * hidden, len(self.labels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, n_labels) logits
        return self.linear(self.drop(tokens.flatten(1)))


class StateLabelHead(nn.Module):
    """Linear multi-label read-out of one language-model hidden state (AR's label term)."""

    def __init__(self, hidden: int, labels: tuple[str, ...]):
        super().__init__()
        self.labels = tuple(labels)
        self.linear = nn.Linear(hidden, len(self.labels))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., H) -> (..., n_labels)
        return self.linear(hidden)


def label_targets(examples, labels: tuple[str, ...]) -> torch.Tensor:
    index = {lab: i for i, lab in enumerate(labels)}
    y = torch.zeros(len(examples), len(labels))
    for b, e in enumerate(examples):
        for lab in e.labels:
            if lab in index:
                y[b, index[lab]] = 1.0
    return y


def image_tokens(model, examples) -> torch.Tensor:
    """(B, T, H) merged vision tokens of each example's first view, as the language model receives them."""
    dev = next(model.parameters()).device
    pv = torch.cat([e.prompt.pixel_values[: _patches(e)] for e in examples]).to(dev)
    grid = torch.stack([e.prompt.image_grid_thw[0] for e in examples]).to(dev)
    if not bool((grid == grid[0]).all()):
        raise UserError("vision pretraining needs every image at one size (set the recipe's image_size)")
    visual = model.model.visual
    out = visual(pv.to(visual.dtype), grid_thw=grid)
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out
    return tokens.view(len(examples), -1, tokens.shape[-1])


def _patches(example) -> int:
    return int(example.prompt.image_grid_thw[0].prod())


def tokens_per_image(example, merge: int = 2) -> int:
    return _patches(example) // (merge * merge)


class VisionLabelObjective:
    """BCE of the label head on the tower's tokens; reports nothing but the loss (AUROC is measured after)."""

    def __init__(self, head: LabelHead):
        self.head = head

    def __call__(self, model, examples, indices, epoch):
        logits = self.head(image_tokens(model, examples))
        y = label_targets(examples, self.head.labels).to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, y), {}


@torch.no_grad()
def label_scores(model, head: LabelHead, examples, batch_size: int = 64) -> dict:
    """Macro AUROC (labels with positives and negatives) and micro/macro F1 at 0.5, in percent."""
    import numpy as np
    from sklearn.metrics import f1_score, roc_auc_score

    if not examples:
        return {}
    was = head.training
    head.eval()
    probs = []
    for i in range(0, len(examples), batch_size):
        probs.append(torch.sigmoid(head(image_tokens(model, examples[i:i + batch_size]))).float().cpu())
    head.train(was)
    p = torch.cat(probs).numpy()
    y = label_targets(examples, head.labels).numpy()
    aucs = [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    return {
        "label_auroc_macro": round(100 * float(np.mean(aucs)), 2) if aucs else None,
        "label_f1_micro": round(100 * float(f1_score(y, p > 0.5, average="micro", zero_division=0)), 2),
        "label_f1_macro": round(100 * float(f1_score(y, p > 0.5, average="macro", zero_division=0)), 2),
        "labels_scored": len(aucs),
        "examples": len(examples),
    }
