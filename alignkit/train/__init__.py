"""The training engine and a thin trainer per algorithm."""
