"""Sampling from the policy: left-padded prompts, a KV cache, G samples per prompt that
share one prefill, stop at EOS or a stop string; the token loop and the written-out
decoding step it drives; the sampled rows re-packed for scoring."""
