"""RaTEScore's sentence split equals the official one (medspacy 1.3.1 + PyRuSH) on real report text:
golden file made by scripts/golden/make_rush_golden.py with the real PyRuSH."""

from __future__ import annotations

from functools import lru_cache

import pytest

from echocxr.metrics.sentences import assemble, split_sentence_spans, split_sentences
from tests.golden_texts import iu_rate_texts, read_golden, synthetic_rate_texts

GOLDEN = "rush_golden.json.gz"
#: synthetic texts (of 700, new lines and odd list marks) still split differently from PyRuSH
KNOWN_SYNTHETIC_DEVIATIONS = 27


@lru_cache(maxsize=1)
def golden() -> dict:
    return read_golden(GOLDEN)


def _differing(texts: list[str], expected: list[list[list[int]]]) -> list[int]:
    return [i for i, (t, e) in enumerate(zip(texts, expected, strict=True))
            if [list(s) for s in split_sentence_spans(t)] != e]


def _iu_texts() -> list[str]:
    try:
        return iu_rate_texts()
    except FileNotFoundError:
        pytest.skip("torchxrayvision's IU X-ray reports are not installed")


def test_every_iu_report_is_split_as_pyrush_splits_it():
    texts = _iu_texts()
    assert len(texts) == len(golden()["iu"]) == 3927
    bad = _differing(texts, golden()["iu"])
    assert not bad, f"{len(bad)} IU reports split differently, first: {texts[bad[0]]!r}"


def test_phantom_reports_en_and_zh_are_split_as_pyrush_splits_them():
    g = golden()["phantom"]
    assert any(t.startswith("所见") for t in g["texts"])
    assert _differing(g["texts"], g["sentences"]) == []


def test_synthetic_report_text_mostly_as_pyrush():
    _iu_texts()
    assert len(_differing(synthetic_rate_texts(), golden()["synthetic"])) <= KNOWN_SYNTHETIC_DEVIATIONS


def test_what_the_official_split_does_that_a_plain_split_does_not():
    # numbered items keep their number; a title opening a sentence ends nothing; "!" ends, a "?" before
    # a lower-case word does not; "x. y" splits after two lower-case letters
    assert split_sentences("Findings: The heart is normal. 2. No effusion. Pt. is well! Dr. Smith called? yes.") == [
        "Findings: The heart is normal.", "2. No effusion.", "Pt.", "is well!", "Dr. Smith called? yes."]
    assert split_sentences("No pleural effusion. cardiomegaly.") == ["No pleural effusion.", "cardiomegaly."]
    # a doubled period ends a sentence but opens none, so the next end stretches it
    assert split_sentences("A b c.. Dd ee ff. Gg hh.") == ["A b c.. Dd ee ff.", "Gg hh."]
    assert split_sentences("") == [] and split_sentences("ok") == []


def test_assembly_pairs_begins_with_ends():
    text = "Aa bb. Cc dd. Ee ff."
    # begins at A, C and E; no end after "bb." (say a title): the first sentence runs to "dd."
    assert assemble(text, [0, 7, 14], [(12, 13), (19, 20)]) == [[0, 13], [14, 20]]
    assert assemble(text, [0, 7, 14], [(5, 6), (12, 13), (19, 20)]) == [[0, 6], [7, 13], [14, 20]]
