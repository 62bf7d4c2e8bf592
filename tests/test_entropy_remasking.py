"""`low_entropy_dynamic`, the remasking rule dParallel and d3LLM decode with: by hand against confidence."""

from __future__ import annotations

import pytest
import torch

from echocxr.decoding.sampling import select_transfer


def block() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    V = 21
    a = torch.tensor([0.6] + [0.02] * 20)  # the most confident token, but a flat tail: entropy 1.87 nats
    b = torch.zeros(V)
    b[:2] = torch.tensor([0.55, 0.45])  # less confident, two candidates only: entropy 0.69
    c = torch.zeros(V)
    c[:3] = torch.tensor([0.4, 0.3, 0.3])  # entropy 1.09
    done = torch.zeros(V)
    done[0] = 1.0
    probs = torch.stack([a, b, c, done])[None]  # (1, 4, V)
    masked = torch.tensor([[True, True, True, False]])
    return masked, probs.amax(-1), probs


def test_entropy_rule_orders_by_entropy_not_confidence():
    masked, conf, probs = block()
    pick = select_transfer(masked, conf, 1, "low_entropy_dynamic", threshold=0.0, probs=probs)
    assert pick.tolist() == [[False, True, False, False]]  # the lowest entropy (0.69), not the surest (0.6)
    assert select_transfer(masked, conf, 1, "low_confidence_static").tolist() == [[True, False, False, False]]
    two = select_transfer(masked, conf, 2, "low_entropy_dynamic", threshold=0.0, probs=probs)
    assert two.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("threshold,expected", [
    (0.5, [False, True, False, False]),  # none is at or below 0.5: the lowest one only
    (0.7, [False, True, False, False]),  # 0.69
    (1.2, [False, True, True, False]),  # 1.09 joins
    (2.0, [True, True, True, False]),  # every masked position; the committed one stays out
])
def test_entropy_bound_commits_every_position_at_or_below_it(threshold, expected):
    masked, conf, probs = block()
    assert select_transfer(masked, conf, 1, "low_entropy_dynamic", threshold, probs).tolist() == [expected]


def test_entropy_rule_needs_the_distributions():
    masked, conf, _ = block()
    with pytest.raises(ValueError, match="needs the distributions"):
        select_transfer(masked, conf, 1, "low_entropy_dynamic", 0.5)
