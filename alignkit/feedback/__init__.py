"""Human feedback: labels on pairs of answers, the annotators' agreement and biases, the
consensus that becomes training pairs, and simulated annotators with known flaws."""
