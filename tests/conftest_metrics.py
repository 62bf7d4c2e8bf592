"""Helpers for the metric tests: real IU X-ray report texts and tiny saved models.

Imported by tests/test_metrics_*.py as tests.conftest_metrics. Report texts are read at test
time from the torchxrayvision wheel (never copied into the repo); models are built from configs and
saved by the tests themselves.
"""

from __future__ import annotations

import functools
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

ENTITY_LABELS = ["O"] + [f"{p}-{t}" for t in ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")
                         for p in ("B", "I")]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def iu_tgz() -> Path:
    from tests.conftest import iu_archive_or_skip

    return iu_archive_or_skip()


@functools.lru_cache(maxsize=1)
def _read_iu(path: str) -> dict[str, tuple[str, str]]:
    out = {}
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            if not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tf.extractfile(member).read())
            sections = {a.get("Label"): (a.text or "").strip() for a in root.iter("AbstractText")}
            out[Path(member.name).stem] = (sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""))
    return out


def iu_reports() -> dict[str, tuple[str, str]]:
    """IU X-ray report id ("1" for 1.xml) -> (findings, impression)."""
    return _read_iu(str(iu_tgz()))


def iu_pairs(n: int) -> list[tuple[str, str, str]]:
    """The first n reports (by numeric id) that have both sections: (id, findings, impression)."""
    reports = iu_reports()
    ids = sorted((k for k, (f, i) in reports.items() if f and i), key=int)
    return [(k, *reports[k]) for k in ids[:n]]


def word_tokenizer(words: list[str], wrap: bool = True):
    """A tiny BERT-style WordPiece tokenizer over `words` (lower-cased), built with `tokenizers`.

    `wrap` adds [CLS] ... [SEP] around each text (encoders); a causal LM gets none, like Qwen's.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(words)))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if wrap:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def words_of(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


def save_tiny_ner(path: Path, word_labels: dict[str, str], extra_words: list[str]) -> Path:
    """A token classifier whose label is a fixed function of the token: word -> label, others O.

    No transformer layers; embeddings are one-hot-like so LayerNorm keeps the label's coordinate the
    largest and the classifier reads it off: predictions are exact and hand-checkable.
    """
    import torch
    from transformers import BertConfig, BertForTokenClassification

    tokenizer = word_tokenizer(list(word_labels) + extra_words)
    vocab = tokenizer.get_vocab()
    h = len(ENTITY_LABELS) + 1
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=h, num_hidden_layers=0, num_attention_heads=1,
                     intermediate_size=4, max_position_embeddings=64, num_labels=len(ENTITY_LABELS),
                     id2label=dict(enumerate(ENTITY_LABELS)), label2id={lab: i for i, lab in enumerate(ENTITY_LABELS)})
    model = BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        emb = torch.zeros(len(vocab), h)
        for token, i in vocab.items():
            emb[i, ENTITY_LABELS.index(word_labels.get(token, "O"))] = 1.0
            emb[i, h - 1] = -1.0
        model.bert.embeddings.word_embeddings.weight.copy_(emb)
        model.bert.embeddings.position_embeddings.weight.zero_()
        model.bert.embeddings.token_type_embeddings.weight.zero_()
        model.classifier.weight.copy_(torch.eye(h)[: len(ENTITY_LABELS)])
        model.classifier.bias.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_encoder(path: Path, words: list[str], seed: int = 0) -> Path:
    """A random 1-layer BERT encoder (hidden 16) with a word tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(words)
    cfg = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_causal_lm(path: Path, words: list[str], seed: int = 0) -> Path:
    """A random 1-layer Qwen2 causal LM (hidden 16) with a word tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(words, wrap=False)
    n = len(tokenizer.get_vocab())
    cfg = Qwen2Config(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
