"""Evaluation: likelihoods, win rates, KL to the reference, per-group figures."""
