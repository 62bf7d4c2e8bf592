"""Text metrics: ROUGE-L / BLEU cross-checked against the reference packages, CIDEr and METEOR by hand."""

from __future__ import annotations

import inspect
import math
import random

import pytest

from echocxr.errors import UserError
from echocxr.metrics import get_metric
from echocxr.metrics.bleu import corpus_bleu, sentence_bleu
from echocxr.metrics.cider import cider_scores
from echocxr.metrics.rouge import lcs_words, rouge_l, rouge_n
from echocxr.metrics.text import rouge_text, word_tokens
from tests.conftest_metrics import iu_pairs

ZH_SENTENCES = [
    "双肺纹理清晰，未见明显实变影。", "心影大小正常。", "右下肺见斑片状高密度影，边界模糊！", "左侧肋膈角变钝？",
    "双肺透亮度增高……膈肌低平。", "“心影增大”。", "纵隔居中，气管通畅。", "右侧少量气胸，肺组织压缩约10%。",
    "左肺上叶见一结节影，直径约8mm。", "双侧胸腔未见积液。", "主动脉迂曲，可见钙化。", "胸椎退行性改变。",
]
ZH_CONCLUSIONS = ["心肺未见异常。", "右下肺炎。", "左侧少量胸腔积液。", "肺气肿。", "心脏增大，请结合临床。", "右侧气胸。"]


def reference_rouge():
    """PyPI `rouge` 1.0.1, unless rouge-chinese's top-level rouge/ has replaced it."""
    rouge = pytest.importorskip("rouge")
    source = inspect.getsource(rouge.rouge)
    if getattr(rouge, "__version__", None) != "1.0.1" or "cut_sent" in source:
        pytest.skip("the `rouge` package is shadowed by rouge-chinese's top-level rouge/ "
                    "(reinstall rouge==1.0.1 after rouge-chinese)")
    return rouge.Rouge()


def en_report(findings: str, impression: str) -> str:
    return f"Findings: {findings} Impression: {impression}."


def en_pairs() -> list[tuple[str, str]]:
    reports = [en_report(f, i) for _, f, i in iu_pairs(80)]
    rng = random.Random(5)
    pairs = [(rng.choice(reports), rng.choice(reports)) for _ in range(60)]
    pairs += [(r, r) for r in reports[:5]]
    # shapes that exercise the package's quirks: trailing blanks after ".", empty pieces, newlines, case
    pairs += [
        (reports[0] + " ", reports[0] + "  "), ("No pneumothorax.. Heart   normal.", "no pneumothorax. heart normal."),
        ("Heart size normal.\nLungs clear", "The heart is normal in size. The lungs are clear."),
        ("the the the heart", "the heart the"), ("Cardiomegaly", "No cardiomegaly."),
        ("A b c d. e f", "c d a b. f e"), (".", "Heart normal."), ("", "Heart normal."),
    ]
    return pairs


def zh_pairs() -> list[tuple[str, str]]:
    rng = random.Random(7)

    def report() -> str:
        return "所见：" + "".join(rng.sample(ZH_SENTENCES, 4)) + " 结论：" + rng.choice(ZH_CONCLUSIONS)

    pairs = [(report(), report()) for _ in range(50)]
    same = report()
    return pairs + [(same, same), ("Finding: 心影大小正常。Impression: 心肺未见异常。", "所见：心影大小正常。 结论：心肺未见异常。")]


def test_rouge_l_english_equals_rouge_package_on_real_reports():
    scorer = reference_rouge()
    for hyp, ref in en_pairs():
        ours = rouge_l(hyp, ref, "en")
        if not [s for s in hyp.lower().split(".") if s]:
            assert ours == 0.0  # the package raises on a hypothesis without sentences; we score 0
            continue
        expected = scorer.get_scores(hyp.lower(), ref.lower())[0]["rouge-l"]["f"]
        assert abs(ours - expected) < 1e-6, (hyp, ref, ours, expected)


def test_rouge_l_chinese_equals_rouge_chinese():
    rouge_chinese = pytest.importorskip("rouge_chinese")
    scorer = rouge_chinese.Rouge()
    for hyp, ref in zh_pairs():
        # the official run: hypothesis headers fixed, jieba tokens joined by spaces, lower-cased
        fixed = hyp.replace("Finding:", "所见：").replace("Impression:", "结论：")
        expected = scorer.get_scores(rouge_text(fixed, "zh"), rouge_text(ref, "zh"))[0]["rouge-l"]["f"]
        assert abs(rouge_l(hyp, ref, "zh") - expected) < 1e-6, (hyp, ref)


@pytest.mark.parametrize("n", [1, 2])
def test_rouge_n_english_equals_rouge_package_on_real_reports(n):
    scorer = reference_rouge()
    for hyp, ref in en_pairs():
        if not [s for s in hyp.lower().split(".") if s]:
            assert rouge_n(hyp, ref, n, "en") == 0.0
            continue
        expected = scorer.get_scores(hyp.lower(), ref.lower())[0][f"rouge-{n}"]["f"]
        assert abs(rouge_n(hyp, ref, n, "en") - expected) < 1e-9, (hyp, ref)


@pytest.mark.parametrize("n", [1, 2])
def test_rouge_n_chinese_equals_rouge_chinese(n):
    rouge_chinese = pytest.importorskip("rouge_chinese")
    scorer = rouge_chinese.Rouge()
    for hyp, ref in zh_pairs():
        fixed = hyp.replace("Finding:", "所见：").replace("Impression:", "结论：")
        expected = scorer.get_scores(rouge_text(fixed, "zh"), rouge_text(ref, "zh"))[0][f"rouge-{n}"]["f"]
        assert abs(rouge_n(hyp, ref, n, "zh") - expected) < 1e-9, (hyp, ref)


def test_rouge_n_hand_values():
    # n-grams are sets over the words of all sentences: hyp {a, b} (a twice), ref {a, b, c} -> P 1, R 2/3
    assert rouge_n("a a b.", "a b c.", 1) == pytest.approx(2 * (2 / 3) / (5 / 3 + 1e-8), abs=1e-12)
    # bigrams run across the sentence cut: "a. b" has the bigram (a, b)
    assert rouge_n("a. b", "a b", 2) == pytest.approx(2 / (2 + 1e-8), abs=1e-12)
    assert get_metric("rouge_2").score(["", "a b"], ["a b", "a b"], "en").per_sample == pytest.approx([0.0, 1.0])


def test_rouge_l_hand_values():
    # identical text: P = R = 1 -> 2 / (2 + 1e-8)
    assert rouge_l("Heart normal.", "heart normal.") == pytest.approx(2 / (2 + 1e-8), abs=1e-12)
    # set semantics of `rouge`: ref words {a,b,c}, hyp words {a,c,d}: union LCS {a,c} -> P = R = 2/3
    assert rouge_l("a c d", "a b c") == pytest.approx(2 * (4 / 9) / (4 / 3 + 1e-8), abs=1e-12)
    # tie rule of the LCS reconstruction decides which words join the union: on a tie, step back in y
    assert lcs_words(["a", "b"], ["b", "a"]) == ["b"]
    result = get_metric("rouge_l").score(["Heart normal.", ""], ["heart normal.", "x."], "en")
    assert result.per_sample[1] == 0.0 and result.corpus == pytest.approx(result.per_sample[0] / 2)


def test_bleu_equals_nltk():
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence

    pairs = [(h, r) for h, r in en_pairs() if h.strip()]
    hyps = [word_tokens(h, "en") for h, _ in pairs]
    refs = [word_tokens(r, "en") for _, r in pairs]
    assert abs(corpus_bleu(hyps, refs) - nltk_corpus([[r] for r in refs], hyps)) < 1e-6
    smooth = SmoothingFunction().method1
    for h, r in zip(hyps, refs, strict=True):
        assert abs(sentence_bleu(h, r) - nltk_sentence([r], h, smoothing_function=smooth)) < 1e-6
    # the metric reports the corpus value
    result = get_metric("bleu4").score([h for h, _ in pairs], [r for _, r in pairs], "en")
    assert result.corpus == pytest.approx(corpus_bleu(hyps, refs), abs=1e-12)


def test_cider_hand_computed():
    # corpus {"a b", "a c"}: idf(a) = 0, idf(b) = idf(c) = idf(a b) = idf(a c) = log 2
    # hyp "a b" vs "a b": cosine 1 for n = 1, 2 and 0 for n = 3, 4 -> 10 * 2 / 4; hyp "b" vs "a c": 0
    assert cider_scores([["a", "b"], ["b"]], [["a", "b"], ["a", "c"]]) == pytest.approx([5.0, 0.0])
    # a hypothesis equal to its reference, every n-gram order present and informative: 10
    refs = [["w1", "w2", "w3", "w4"], ["v1", "v2", "v3", "v4"], ["u1", "u2"]]
    assert cider_scores([refs[0]], refs[:1])[0] == 0.0  # one document: every idf is log(1) - log(1) = 0
    assert cider_scores(refs, refs)[0] == pytest.approx(10.0)
    # hand TF-IDF: hyp "x x y" vs ref "x y" with df(x) = 2 of N = 3 documents
    n3 = math.log(3.0)
    wx, wy = n3 - math.log(2), n3  # y, (x y), (x x) appear in one / no document -> idf log 3
    cos1 = (2 * wx * wx + wy * wy) / (math.hypot(2 * wx, wy) * math.hypot(wx, wy))
    cos2 = n3 * n3 / (math.hypot(n3, n3) * n3)  # hyp bigrams (x x), (x y); ref (x y)
    got = cider_scores([["x", "x", "y"], ["x"], ["z"]], [["x", "y"], ["x"], ["z"]])[0]
    assert got == pytest.approx(10 * (cos1 + cos2) / 4, abs=1e-12)
    result = get_metric("cider").score(["A B", "b"], ["a b", "a c"], "en")
    assert result.per_sample == pytest.approx([5.0, 0.0]) and result.corpus == pytest.approx(2.5)
    assert "corpus" in result.info["document_frequencies"]


def test_official_tokens():
    assert word_tokens("Heart size normal. No  effusion.", "en") == ["heart", "size", "normal", ".", "no", "effusion", "."]
    assert "".join(word_tokens("心影大小正常。", "zh")) == "心影大小正常。"
    assert rouge_text("心影 大小正常。", "zh") == " ".join(t for t in rouge_text("心影 大小正常。", "zh").split())


# ---------------------------------------------------------------------------------------------- METEOR

@pytest.fixture(scope="module")
def wordnet():
    from echocxr.metrics.wordnet import wordnet_reader

    try:
        return wordnet_reader()
    except UserError as exc:
        pytest.skip(str(exc))


def test_meteor_nltk_reference_value(wordnet):
    from nltk.translate.meteor_score import single_meteor_score

    hyp = ("It is a guide to action which ensures that the military always obeys the commands of the party").split()
    ref = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    assert round(single_meteor_score(ref, hyp, wordnet=wordnet), 4) == 0.6944  # NLTK's documented example


def test_meteor_metric_uses_wordnet_synonyms(wordnet):
    result = get_metric("meteor").score(["The chest is clear.", "The chest is clear."],
                                        ["The thorax is clear.", "The abdomen is clear."], "en")
    synonym, different = result.per_sample
    # "chest" ~ "thorax" through WordNet: 5 of 5 tokens aligned in one chunk -> P = R = 1
    assert synonym == pytest.approx(1 - 0.5 * (1 / 5) ** 3)
    # "abdomen" matches nothing: P = R = 4/5, two chunks -> penalty 0.5 * (2/4)^3
    assert different == pytest.approx(0.8 * (1 - 0.5 * 0.5**3))
    zh = get_metric("meteor").score(["心影大小正常。"], ["心影大小正常。"], "zh")
    assert zh.per_sample[0] > 0.9


def test_wordnet_missing_is_one_clear_error(tmp_path):
    from echocxr.metrics.wordnet import find_database

    with pytest.raises(UserError) as err:
        find_database([tmp_path])
    msg = str(err.value)
    assert "wordnet-base" in msg and "wordnet-sense-index" in msg and "\n" not in msg


def test_lexnames_is_the_wordnet30_list():
    from echocxr.metrics.wordnet import lexnames_text

    lines = lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[28] == "28\tnoun.time\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[43] == "43\tverb.weather\t2" and lines[44] == "44\tadj.ppl\t3"


def test_wordnet_folder_is_assembled_in_the_cache(tmp_path):
    from echocxr.metrics.wordnet import find_database, prepare_wordnet_dir

    try:
        source = find_database()
    except UserError as exc:
        pytest.skip(str(exc))
    target = prepare_wordnet_dir(source, cache=tmp_path)
    assert target == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (target / "lexnames").is_file() and (target / "data.noun").stat().st_size > 1_000_000
    assert prepare_wordnet_dir(source, cache=tmp_path) == target  # reused, not rebuilt
