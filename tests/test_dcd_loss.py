"""dcd_loss on hand-made tensors: a top-k teacher is renormalised over its stored support, reverse KL lives on
that support too, and the <eos> CE pulls each end-of-response slot to the token the teacher wrote there."""

from __future__ import annotations

import pytest
import torch

from echocxr.diffusion.losses import dcd_loss

V = 6


def case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, V, generator=g)
    index = torch.tensor([[[0, 1], [2, 3], [4, 5]]])  # top-2 of 6: the stored support of each slot
    probs = torch.tensor([[[0.5, 0.3], [0.6, 0.2], [0.1, 0.1]]])  # the truncated teacher: rows sum below 1
    weight = torch.tensor([[1.0, 2.0, 3.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    return logits, index, probs, weight, valid


def test_a_top_k_teacher_is_renormalised_over_its_support():
    logits, index, probs, weight, valid = case()
    no_eos = torch.zeros(1, 3, dtype=torch.bool)
    loss, _ = dcd_loss(logits, index, probs, weight, valid, no_eos, torch.zeros(1, 3, dtype=torch.long))
    logq = torch.log_softmax(logits, -1)
    kl = []
    for r in range(3):
        p = probs[0, r] / probs[0, r].sum()  # e.g. [0.625, 0.375]
        kl.append(float((p * (p.log() - logq[0, r, index[0, r]])).sum()))
    expected = sum(w * k for w, k in zip([1, 2, 3], kl, strict=True)) / 6
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    unnormalised = sum(w * float((probs[0, r] * (probs[0, r].log() - logq[0, r, index[0, r]])).sum())
                       for r, w in enumerate([1, 2, 3])) / 6
    assert abs(expected - unnormalised) > 1e-2  # the case tells the two apart


def test_reverse_kl_is_over_the_stored_support_with_the_student_renormalised_there():
    logits, index, probs, weight, valid = case()
    no_eos = torch.zeros(1, 3, dtype=torch.bool)
    loss, _ = dcd_loss(logits, index, probs, weight, valid, no_eos, torch.zeros(1, 3, dtype=torch.long),
                       reverse=True)
    logq = torch.log_softmax(logits, -1)
    total = 0.0
    for r, w in enumerate([1, 2, 3]):
        p = probs[0, r] / probs[0, r].sum()
        q = torch.softmax(logq[0, r, index[0, r]], -1)  # the student's mass on the support, renormalised
        total += w * float((q * (q.log() - p.log())).sum())
    assert float(loss) == pytest.approx(total / 6, rel=1e-5)


def test_eos_ce_pulls_each_end_slot_to_the_token_written_there():
    logits, index, probs, weight, valid = case()
    ends = torch.tensor([[False, True, True]])  # two end-of-response slots, written as two different stop ids
    targets = torch.tensor([[-100, 4, 1]])
    plain, _ = dcd_loss(logits, index, probs, weight, valid, torch.zeros_like(ends), targets, eos_ce=0.0)
    loss, mets = dcd_loss(logits, index, probs, weight, valid, ends, targets, eos_ce=0.5)
    logq = torch.log_softmax(logits, -1)
    ce = -(logq[0, 1, 4] + logq[0, 2, 1]) / 2
    assert float(loss) == pytest.approx(float(plain) + 0.5 * float(ce), rel=1e-5)
    assert mets["eos_ce"] == pytest.approx(float(ce), rel=1e-5)
