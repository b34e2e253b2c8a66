import pytest
import torch

from alignkit.models.heads import ScalarHeadModel
from alignkit.rewards import RewardModelScorer

PROMPTS = [
    "What is 2 + 2?",
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a colour."}],
    "Hi",
]
RESPONSES = ["4.", "Paris. Paris is the capital of France.", "Blue", "Hello there, how are you?"]


@pytest.fixture
def scorer(tiny_model_and_tokenizer):
    lm, tokenizer = tiny_model_and_tokenizer
    return RewardModelScorer(ScalarHeadModel.from_causal_lm(lm), tokenizer, batch_size=4)


def test_scores_one_float_per_response(scorer):
    out = scorer(PROMPTS, RESPONSES)
    assert out.scores.shape == (4,)
    assert out.scores.dtype == torch.float32
    assert torch.equal(out.parts["reward_model"], out.scores)
    assert not out.scores.requires_grad


def test_padding_does_not_change_a_score(scorer):
    together = scorer(PROMPTS, RESPONSES).scores  # padded to the longest row
    alone = torch.cat([scorer([p], [r]).scores for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_does_not_change_scores(scorer, batch_size):
    reference = scorer(PROMPTS, RESPONSES).scores
    scorer.batch_size = batch_size
    torch.testing.assert_close(scorer(PROMPTS, RESPONSES).scores, reference, atol=1e-5, rtol=1e-5)


def test_score_matches_a_direct_forward_pass(scorer):
    ids = scorer.encode(PROMPTS[1], RESPONSES[1])
    direct = scorer.model.score(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    torch.testing.assert_close(scorer([PROMPTS[1]], [RESPONSES[1]]).scores, direct)


def test_max_length_truncates_the_response_tail(scorer):
    scorer.max_length = 16
    ids = scorer.encode("a long prompt " * 5, "a long response " * 5)
    assert len(ids) == 16


def test_from_path_loads_a_saved_reward_model(tiny_model_and_tokenizer, tmp_path, scorer):
    scorer.model.save_pretrained(tmp_path / "rm")
    scorer.tokenizer.save_pretrained(tmp_path / "rm")
    loaded = RewardModelScorer.from_path(tmp_path / "rm", batch_size=2)
    torch.testing.assert_close(loaded(PROMPTS, RESPONSES).scores, scorer(PROMPTS, RESPONSES).scores)


def test_answers_to_one_prompt_read_it_once_and_score_as_alone():
    from alignkit.models.heads import ScalarHeadModel
    from alignkit.models.tiny import tiny_random_llama
    from alignkit.rewards.model import RewardModelScorer

    lm, tok = tiny_random_llama(seed=2)
    scorer = RewardModelScorer(ScalarHeadModel.from_causal_lm(lm, seed=1), tok, batch_size=8)
    prompts = [[{"role": "user", "content": "hi"}]] * 3 + [
        "other",
        [{"role": "user", "content": "hi"}],
    ]
    answers = ["a b", "longer answer here", "c", "d", "a b"]
    together = scorer(prompts, answers).scores
    alone = torch.cat([scorer([p], [a]).scores for p, a in zip(prompts, answers, strict=True)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
