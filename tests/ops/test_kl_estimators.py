import math

import pytest
import torch

from alignkit.ops import kl_estimate, kl_from_logits, kl_k1, kl_k2, kl_k3


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


def test_kl_from_logits_hand_computed_and_chunked():
    # π = (1/2, 1/2), π_ref = (1/4, 3/4): KL = ½ ln 2 + ½ ln(2/3)
    logits = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    torch.testing.assert_close(kl_from_logits(logits, ref), torch.tensor([expected]))
    a, b = torch.randn(2, 3, 7, 11)
    torch.testing.assert_close(kl_from_logits(a, b, chunk_size=2), kl_from_logits(a, b))
    assert (kl_from_logits(a, a).abs() < 1e-6).all()


def test_kl_from_logits_summed_over_positions_gives_the_exact_sequence_kl():
    """Chain rule on an enumerable case: two-token responses over 4 tokens, π and π_ref
    autoregressive tables. E_{y~π}[Σ_t KL_t(y_<t)] equals KL over all 16 sequences."""
    torch.manual_seed(0)
    V = 4
    p1, q1 = torch.randn(2, V, dtype=torch.float64)  # first-token logits
    p2, q2 = torch.randn(2, V, V, dtype=torch.float64)  # second-token logits given the first
    lp1, lq1 = p1.log_softmax(-1), q1.log_softmax(-1)
    lp2, lq2 = p2.log_softmax(-1), q2.log_softmax(-1)
    exact = sum(
        (lp1[a] + lp2[a, b]).exp() * (lp1[a] + lp2[a, b] - lq1[a] - lq2[a, b])
        for a in range(V)
        for b in range(V)
    )
    # each sequence's logits at its two positions, and its probability under π
    seqs = [(a, b) for a in range(V) for b in range(V)]
    logits = torch.stack([torch.stack([p1, p2[a]]) for a, _ in seqs])  # [16, 2, V]
    ref_logits = torch.stack([torch.stack([q1, q2[a]]) for a, _ in seqs])
    prob = torch.tensor([(lp1[a] + lp2[a, b]).exp().item() for a, b in seqs], dtype=torch.float64)
    per_sequence = kl_from_logits(logits, ref_logits).sum(-1)
    torch.testing.assert_close((prob * per_sequence).sum(), exact)
