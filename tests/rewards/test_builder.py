import pytest
import torch

from alignkit.errors import UserError
from alignkit.models.heads import ScalarHeadModel
from alignkit.models.tiny import tiny_random_llama, tiny_tokenizer
from alignkit.rewards import RewardNormalizer, RewardOutput, build_reward, build_reward_normalizer


class FakeScorer:
    def __init__(self, value, name):
        self.value, self.name, self.tokenizer = value, name, tiny_tokenizer()

    def __call__(self, prompts, responses):
        return RewardOutput([self.value] * len(responses))


def fake_loader(path, *, batch_size, max_length, name="reward_model"):
    return FakeScorer(float(path.rsplit("_", 1)[-1]), name)


def test_reward_model_plus_shaping_parts_and_weights():
    reward = build_reward(
        {
            "reward_model": "rm_2",
            "shaping": {
                "length": {"weight": 1.0, "target_tokens": 4},
                "repetition": {"weight": 1.0},
                "evasion": {"weight": 0.5},
            },
        },
        load_scorer=fake_loader,
    )
    out = reward(["q", "q"], ["abcdef", "I can't answer"])  # 6 bytes vs target 4 → −0.5
    assert set(out.parts) == {"reward_model", "length", "repetition", "evasion"}
    assert out.parts["reward_model"].tolist() == [2.0, 2.0]
    assert out.parts["length"].tolist() == pytest.approx([-0.5, -2.5])
    assert out.parts["evasion"].tolist() == [0.0, -0.5]
    assert torch.allclose(out.scores, sum(out.parts.values()))


def test_ensemble_functions_and_judge(tmp_path):
    path = tmp_path / "fmt.py"
    path.write_text(
        "def ends_with_dot(prompts, responses):\n    return [float(r.endswith('.')) for r in responses]\n"
    )
    reward = build_reward(
        {
            "ensemble": ["rm_1", "rm_3"],
            "ensemble_combine": "mean_minus_std",
            "ensemble_k": 0.5,
            "reward_functions": [
                {"spec": f"{path}:ends_with_dot", "weight": 2.0, "name": "format"}
            ],
            "demo_judge": True,
        },
        load_scorer=fake_loader,
    )
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    out = reward([prompt], ["Paris."])
    assert out.parts["ensemble"].tolist() == pytest.approx([2.0 - 0.5])
    assert out.parts["format"].tolist() == [2.0]
    assert out.parts["gold"].tolist() == [1.0]


def test_real_reward_model_folder(tmp_path):
    lm, tokenizer = tiny_random_llama(seed=1)
    ScalarHeadModel.from_causal_lm(lm).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = build_reward({"reward_model": str(tmp_path / "rm"), "batch_size": 2, "max_length": 64})
    assert reward(["q"] * 3, ["a", "bb", "ccc"]).scores.shape == (3,)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "no reward"),
        ({"reward_modle": "x"}, "unknown key"),
        ({"shaping": {"brevity": {}}}, "unknown key.*brevity"),
        ({"shaping": ["length"]}, "shaping config must be a mapping"),
        ({"shaping": {"repetition": {"weigth": 1}}}, "shaping.repetition"),
        ({"shaping": {"length": {"weight": 1}}}, "target_tokens or target_words"),
        ({"shaping": {"length": {"target_tokens": 5}}}, "needs a tokenizer"),
        ({"ensemble": "rm_1"}, "must be a list"),
        ({"ensemble": ["rm_1"], "ensemble_combine": "median"}, "ensemble_combine"),
        ({"reward_functions": [3]}, "reward_functions entries"),
        ({"reward_functions": ["no_such_mod_qq:f"]}, "no_such_mod_qq:f"),
    ],
)
def test_config_mistakes_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        build_reward(config, load_scorer=fake_loader)


def test_a_single_function_spec_without_a_list(tmp_path):
    path = tmp_path / "one.py"
    path.write_text("def one(prompts, responses):\n    return [1.0] * len(responses)\n")
    assert build_reward({"reward_functions": f"{path}:one"})(["p"], ["r"]).scores.tolist() == [1.0]


def test_words_target_needs_no_tokenizer():
    reward = build_reward(
        {"shaping": {"length": {"target_words": 2, "mode": "capped", "cap": 0.5}}}
    )
    assert reward(["q"], ["a b c d e f"]).scores.tolist() == [-0.5]


def test_normalizer_from_config():
    assert build_reward_normalizer({}) is None
    norm = build_reward_normalizer({"normalize": {"clip": 5.0, "momentum": 0.1}})
    assert isinstance(norm, RewardNormalizer) and norm.clip == 5.0 and norm.momentum == 0.1
    with pytest.raises(UserError, match="unknown key"):
        build_reward_normalizer({"normalize": {"clipping": 5.0}})
    with pytest.raises(UserError, match="clip"):
        build_reward_normalizer({"normalize": {"clip": -1.0}})
