import math

import pytest
import torch

from alignkit.ops import kl_estimate, kl_k1, kl_k2, kl_k3


def test_hand_computed():
    # π(y) = 1/2, π_ref(y) = 1/4: log r = ln(1/4) − ln(1/2) = −ln 2, r = 1/2.
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    ln2 = math.log(2)
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([ln2]))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([0.5 * ln2**2]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([0.5 + ln2 - 1]))
    for kind, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        torch.testing.assert_close(kl_estimate(logp, ref, kind), fn(logp, ref))


def test_identical_policies_give_zero():
    logp = torch.randn(3, 4)
    for kind in ("k1", "k2", "k3"):
        assert (kl_estimate(logp, logp, kind) == 0).all()


def test_k1_and_k3_are_unbiased_under_the_policy():
    # E_{y~π}[k] over a whole categorical distribution equals KL(π ‖ π_ref) exactly for k1, k3.
    logits, ref_logits = torch.randn(2, 10, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(ref_logits, -1)
    exact = (logp.exp() * (logp - ref)).sum()
    for kind in ("k1", "k3"):
        expected = (logp.exp() * kl_estimate(logp, ref, kind)).sum()
        torch.testing.assert_close(expected, exact)
    assert (kl_k2(logp, ref) >= 0).all()
    assert (kl_k3(logp, ref) >= 0).all()


def test_unknown_kind():
    with pytest.raises(ValueError):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")
