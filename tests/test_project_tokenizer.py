"""The project tokenizer: Qwen2.5-VL special tokens + <|MASK|>, chat template, round trip, report lengths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from echocxr.backbones.tokenizer import MASK_TOKEN, QWEN_VL_SPECIAL_TOKENS
from echocxr.cli import main
from echocxr.data.phantom import phantom_reports
from echocxr.data.project_tokenizer import build_project_tokenizer, split_cjk


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    build_project_tokenizer(out, n_phantom_reports=300, seed=0, vocab_size=4096)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_saved_in_hf_format_with_special_tokens(tok_dir, tok):
    assert (tok_dir / "tokenizer.json").is_file() and (tok_dir / "tokenizer_config.json").is_file()
    assert tok.mask_token == MASK_TOKEN
    assert tok.convert_tokens_to_ids(MASK_TOKEN) == 14
    for i, special in enumerate(QWEN_VL_SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(special) == i
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) > 1000


def test_chat_template(tok):
    assert tok.chat_template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Write a report."}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Write a report." in text
    assert text.endswith("<|im_start|>assistant\n")


def test_round_trip_and_length_band(tok):
    lengths: dict[tuple[str, str], list[int]] = {}
    for r in phantom_reports(seed=77, n=150):  # a seed the tokenizer never saw
        ids = tok(r.reference, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == r.reference
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
        lengths.setdefault((r.language, r.variant), []).append(len(ids))
    for lang in ("en", "zh"):
        norm = lengths[(lang, "normalised")]
        assert 60 <= min(norm) and max(norm) <= 250, (lang, min(norm), max(norm))
        raw = lengths[(lang, "raw")]
        assert max(raw) <= 250 and sum(raw) < sum(norm)  # reporting by exception is shorter


def test_chinese_is_tokenized_per_character(tok):
    """Whole-phrase tokens would hide the paraphrase dependencies the benchmark is built to expose."""
    text = "未见气胸。右侧少量胸腔积液。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_chars = len(re.findall(r"[\u4e00-\u9fff]", text))
    assert len(ids) >= n_chars
    assert split_cjk("右侧积液") == "\n右\n\n侧\n\n积\n\n液\n"


def test_cli_tokenizer(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tokenizer", "--out", str(out), "--vocab-size", "600", "--phantom-reports", "30", "--no-iu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mask_token_id"] == 14 and info["iu_reports"] is False
    assert AutoTokenizer.from_pretrained(str(out)).mask_token == MASK_TOKEN
    assert main(["tokenizer", "--out", str(out), "--vocab-size", "10"]) == 2
    assert "--vocab-size" in capsys.readouterr().err
