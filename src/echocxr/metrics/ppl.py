"""PPL: how fluent a judge causal LM finds the generated report (official judge: Qwen3-1.7B).

Official semantics (ECHO eval_PPL.py): text = instruction prompt + report, tokenised together; the
first len(tokenize(prompt)) positions are not scored; per report PPL = exp(mean token NLL of the
rest); the corpus value is the mean of per-report PPLs. Empty reports are not scored (None).
Reports are batched with right padding; each report's NLL comes from its own positions only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from echocxr.errors import UserError
from echocxr.metrics.base import MetricResult, SampleMeanMetric, check_pairs, languages_for

# The official instruction prompts (ECHO-SPEC §5), the prefix the judge conditions on.
PROMPTS = {
    "en": "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
}


class Perplexity(SampleMeanMetric):
    name = "ppl"
    percent = False

    def __init__(self, ppl_model: str | Path | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 8, prompts: dict[str, str] | None = None, **_: object) -> None:
        from echocxr.metrics import models

        if not ppl_model:
            raise UserError("PPL needs a judge causal LM directory: --ppl-model DIR (official: Qwen3-1.7B)")
        self.path = models.model_dir(ppl_model, "PPL judge")
        self.device_option, self.dtype_option = device, dtype
        self.batch_size = int(batch_size)
        self.prompts = dict(PROMPTS if prompts is None else prompts)
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from echocxr.metrics import models

            device = models.resolve_device(self.device_option)
            dtype = models.resolve_dtype(self.dtype_option, device)
            tokenizer = models.load_tokenizer(self.path, "PPL judge")
            model = models.load_model(self.path, "PPL judge", "AutoModelForCausalLM", device, dtype)
            self._loaded = (tokenizer, model, device, dtype)
        return self._loaded

    def _batch_nll(self, seqs: list[list[int]], prompt_lens: list[int]) -> list[tuple[float, int]]:
        import torch

        tokenizer, model, device, _ = self._load()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for row, (seq, plen) in enumerate(zip(seqs, prompt_lens, strict=True)):
            if len(seq) < 2:
                out.append((0.0, 0))
                continue
            target = torch.tensor(seq[1:], device=logprobs.device)
            picked = logprobs[row, : len(seq) - 1].gather(1, target[:, None])[:, 0]
            first = max(plen, 1) - 1  # row t predicts token t+1
            scored = picked[first:]
            out.append((float(-scored.double().sum()), int(scored.numel())))
        return out

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str] = "en") -> MetricResult:
        check_pairs(hyps, refs)
        langs = languages_for(language, len(hyps))
        tokenizer, _, device, dtype = self._load()
        prompt_len = {lang: len(tokenizer(self.prompts[lang])["input_ids"]) for lang in set(langs)}
        per_sample: list[float | None] = [None] * len(hyps)
        nll: list[float | None] = [None] * len(hyps)
        todo = [i for i, h in enumerate(hyps) if h and h.strip()]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            seqs = [list(tokenizer(self.prompts[langs[i]] + hyps[i])["input_ids"]) for i in idx]
            for i, (total, count) in zip(idx, self._batch_nll(seqs, [prompt_len[langs[i]] for i in idx]), strict=True):
                if count:
                    nll[i] = total / count
                    per_sample[i] = math.exp(total / count)
        return MetricResult(self.name, per_sample, self.aggregate(per_sample),
                            info={"judge": str(self.path), "device": device, "dtype": str(dtype).replace("torch.", "")},
                            sample_extra={"ppl_mean_nll": nll})
