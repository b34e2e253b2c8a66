"""Per-user-segment figures and their combination across processes."""

import pytest
import torch

from alignkit.eval.segments import combine_process_metrics, segment_figures


def test_process_metrics_combine_segments_by_count_and_recompute_the_gap():
    """Two processes: per-group scores are count-weighted, the gap is taken between the
    combined group means (even when no single process saw two groups), other metrics are
    plain means, and the counts do not leak into the result."""
    one = {"objective/kl": 0.2} | segment_figures(
        torch.tensor([1.0, 1.0, 1.0]), ["a", "a", "a"], prefix="objective/scores", with_counts=True
    )
    two = {"objective/kl": 0.4} | segment_figures(
        torch.tensor([0.0, 0.5]), ["a", "b"], prefix="objective/scores", with_counts=True
    )
    assert two["objective/scores/group_gap"] == 0.5  # this process alone: a 0.0, b 0.5
    combined = combine_process_metrics([one, two])
    assert combined["objective/kl"] == pytest.approx(0.3)
    assert combined["objective/scores/a"] == pytest.approx(0.75)  # (3·1 + 1·0) / 4
    assert combined["objective/scores/b"] == pytest.approx(0.5)
    assert combined["objective/scores/group_gap"] == pytest.approx(0.25)
    assert not any("#" in key for key in combined)
    only_a = combine_process_metrics(
        [
            one,
            {"objective/kl": 0.0}
            | segment_figures(
                torch.tensor([0.0]), ["b"], prefix="objective/scores", with_counts=True
            ),
        ]
    )
    assert only_a["objective/scores/group_gap"] == pytest.approx(1.0)  # no process had two
