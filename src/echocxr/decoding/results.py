"""What a decode returns per sample, and the events it emits while it runs (for streaming and tracing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Generation:
    """One sample's report and the speed figures of its decode.

    tokens: response tokens kept, counting the <eos> that ended it (so an AR decode has TPF exactly 1.0);
    forwards: denoising forwards this sample took part in (prefill and vanilla KV-write passes excluded);
    prefill_s: wall time of the batch's prefill; decode_s: from decode start until this sample finished;
    batch_size: samples decoded together (above 1, both times are the batch's wall clock, shared by its samples);
    token_confidences: aligned with token_ids, each token's probability when it was committed (the chosen token
    under the distribution it was drawn from, at the step that committed it): a hint for the reader
    (decoding/confidence.py), not a calibrated error rate.
    """

    text: str
    token_ids: list[int]
    tokens: int
    forwards: int
    prefill_s: float
    decode_s: float
    stop: str  # "eos" | "length" | "cancelled"
    decoder: str = ""
    block_length: int = 1
    warnings: list[str] = field(default_factory=list)  # request outside the model's training (not a stat)
    batch_size: int = 1
    token_confidences: list[float] = field(default_factory=list)

    @property
    def tpf(self) -> float:
        return self.tokens / self.forwards if self.forwards else 0.0

    def stats(self) -> dict:
        d = asdict(self)
        d.pop("text")
        d.pop("token_ids")
        d.pop("warnings")
        d.pop("token_confidences")
        d["tpf"] = self.tpf
        return d


@dataclass
class DecodeEvent:
    """Emitted after every denoising forward for each sample in it (kind='step') and when a sample ends.

    tokens: the current block (mask ids where still masked); committed: positions decided in this step;
    logits: the block's logits (L, V) when the decode was asked to record them (tests, DCD trajectories);
    confidences: aligned with tokens, each committed position's probability when it was committed (0 while masked).
    """

    kind: str  # "step" | "done"
    sample: int
    block: int
    step: int
    tokens: list[int]
    committed: list[bool]
    response_offset: int = 0  # index in the response of the block's first generated position (may be < 0)
    logits: torch.Tensor | None = None
    generation: Generation | None = None
    extra: dict = field(default_factory=dict)
    confidences: list[float] | None = None
