"""The project tokenizer: a small byte-level BPE trained on CXR-Phantom reports (+ IU X-ray texts).

Tiny models (tests, demo, CXR-Phantom recipes) use it in place of a 151k-token Qwen vocabulary.

One deliberate choice: Chinese is learned one character at a time. The byte-level pre-tokenizer keeps
a run of Chinese characters together, so trained on raw Chinese text BPE would turn whole phantom
phrases ("未见气胸") into single tokens; a statement's paraphrase would then be one token and the
Chinese half of the benchmark could not show the joint-token (mean-field) problem that one-step
decoding has. Training on Chinese split into characters leaves only within-character merges, so
Chinese text encodes to about one token per character, as in the English half one token per word.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from echocxr.data.manifest import LANGUAGES

if TYPE_CHECKING:  # transformers is imported only when a tokenizer is built (keeps the CLI start fast)
    from transformers import PreTrainedTokenizerFast

DEFAULT_VOCAB_SIZE = 4096
DEFAULT_PHANTOM_REPORTS = 3000  # studies; each gives EN+ZH x normalised+raw reports

# The ECHO instruction prompts (ECHO-SPEC §5), so prompts tokenize compactly too.
PROMPTS = (
    "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
)

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def split_cjk(text: str) -> str:
    """Put every CJK character (and full-width punctuation) on its own line, for tokenizer training only."""
    return _CJK.sub(lambda m: f"\n{m.group(0)}\n", text)


def training_texts(n_phantom_reports: int = DEFAULT_PHANTOM_REPORTS, seed: int = 0,
                   use_iu: bool = True) -> Iterator[str]:
    """Phantom reports (EN+ZH, normalised+raw), the IU X-ray findings/impressions when installed, prompts."""
    from echocxr.data.phantom.generate import phantom_reports

    for r in phantom_reports(seed, n_phantom_reports, languages=LANGUAGES):
        yield split_cjk(r.reference) if r.language == "zh" else r.reference
    if use_iu:
        from echocxr.data.iu_reports import iu_reports_path, read_iu_reports

        if iu_reports_path() is not None:
            for rec in read_iu_reports():
                text = " ".join(t for t in (rec["indication"], rec["findings"], rec["impression"]) if t)
                if text:
                    yield text
    for p in PROMPTS:
        yield split_cjk(p)


def build_project_tokenizer(out_dir: str | os.PathLike | None = None,
                            n_phantom_reports: int = DEFAULT_PHANTOM_REPORTS, seed: int = 0,
                            vocab_size: int = DEFAULT_VOCAB_SIZE, use_iu: bool = True) -> PreTrainedTokenizerFast:
    """Train the project tokenizer; saved with `save_pretrained` into `out_dir` when given."""
    from echocxr.backbones.tokenizer import MASK_TOKEN, train_bpe_tokenizer

    tok = train_bpe_tokenizer(training_texts(n_phantom_reports, seed, use_iu), vocab_size=vocab_size)
    assert tok.mask_token == MASK_TOKEN
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out_dir))
    return tok
