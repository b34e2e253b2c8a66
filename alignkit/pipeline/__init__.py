"""The seeds' whole story as stages: the demo task and its gold judge, simulated human
feedback, SFT, the reward model, PPO / GRPO / DPO, a reward-hacking episode, evaluation
and the report."""
