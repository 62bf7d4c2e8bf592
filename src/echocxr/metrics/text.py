"""Text preparation shared by the n-gram metrics, exactly as the official ECHO evaluation does it.

Official conventions (eval/EasyEval/evaluation.py of the ECHO release):
- a Chinese hypothesis first gets English section headers replaced ("Finding:" -> "所见：",
  "Impression:" -> "结论：");
- METEOR/BLEU tokens: English = lower-case, "." becomes " .", split on single spaces, empty strings
  dropped; Chinese = lower-case, jieba tokens, whitespace tokens dropped;
- ROUGE/CIDEr strings: English = the lower-cased text itself; Chinese = the jieba tokens joined by spaces.
"""

from __future__ import annotations

import functools
import logging


def fix_zh_headers(hyp: str) -> str:
    """Official ZH preprocessing of a hypothesis (reports sometimes keep English headers)."""
    return hyp.replace("Finding:", "所见：").replace("Impression:", "结论：")


def prepare_hypothesis(hyp: str, language: str) -> str:
    return fix_zh_headers(hyp) if language == "zh" else hyp


@functools.lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it announces its dictionary load on stderr otherwise
    return jieba


def jieba_tokens(text: str) -> list[str]:
    """jieba's default (accurate, HMM) segmentation, whitespace tokens dropped."""
    return [tok for tok in _jieba().cut(text) if tok.strip()]


def word_tokens(text: str, language: str) -> list[str]:
    """Tokens for METEOR and BLEU."""
    text = str(text).lower()
    if language == "zh":
        return jieba_tokens(text)
    return [tok for tok in text.replace(".", " .").split(" ") if tok != ""]


def rouge_text(text: str, language: str) -> str:
    """The string the official run hands to `rouge` (EN) / `rouge_chinese` (ZH), also used for CIDEr."""
    if language == "zh":
        return " ".join(jieba_tokens(str(text).lower())).lower()
    return str(text).lower()
