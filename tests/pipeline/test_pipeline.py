"""`alignkit pipeline` end to end on the tiny random model: every stage writes its folder,
a half-finished pipeline continues where it stopped, and the report holds the table and
the charts' data."""

import html
import json
import re
from dataclasses import replace

import pytest

from alignkit.pipeline import stages
from alignkit.pipeline.run import STAGES, Pipeline, PipelineConfig, config_for


def tiny_config(tmp_path, **overrides):
    values = dict(
        model="tiny-random-llama",
        output_dir=str(tmp_path / "pipe"),
        arithmetic=4,
        samples_per_prompt=3,
        max_new_tokens=8,
        stage_steps=2,
        batch_size=4,
    )
    values.update(overrides)
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole pipeline, cut once after the dpo stage and run again to its end."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    cut = tiny_config(tmp_path, stages=STAGES[: STAGES.index("dpo") + 1])
    first = Pipeline(cut).run()
    pipeline = Pipeline(tiny_config(tmp_path))
    return first, pipeline, pipeline.run()


def test_every_stage_ran_and_wrote_its_folder(finished):
    _, pipeline, results = finished
    assert list(results) == list(STAGES)
    for stage in ("sft", "rm", "dpo", "ppo", "grpo", "hack"):
        assert (pipeline.folder(stage) / "run" / "model" / "config.json").is_file(), stage
    feedback = results["feedback"]
    labels = (pipeline.folder("feedback") / "labels.jsonl").read_text().splitlines()
    assert feedback["labels"] == len(labels) > 0
    assert feedback["pairs"] > 0 and feedback["heldout_pairs"] > 0
    assert results["rm"]["heldout_accuracy"] is not None


def test_a_rerun_skips_the_finished_stages(finished, capsys):
    first, pipeline, results = finished
    for stage in first:  # the stages of the cut run were not run again
        assert results[stage]["seconds"] == first[stage]["seconds"]
    again = Pipeline(pipeline.cfg).run()
    assert again == results
    assert "done before, skipped" in capsys.readouterr().out


def test_the_summary_has_every_method_with_its_interval(finished):
    _, pipeline, _ = finished
    summary = json.loads((pipeline.root / "summary.json").read_text())
    assert set(summary["methods"]) == {"base", "sft", "dpo", "ppo", "grpo", "hack"}
    for name, m in summary["methods"].items():
        assert {
            "gold",
            "win_rate",
            "win_rate_low",
            "win_rate_high",
            "kl",
            "mean_length",
            "per_group",
        } <= set(m), name
        assert m["win_rate_low"] <= m["win_rate"] <= m["win_rate_high"]
    assert summary["methods"]["sft"]["win_rate"] == 0.5  # against itself: every prompt a tie
    assert summary["reward_model"]["heldout_accuracy"] is not None


def test_the_report_opens_offline_and_holds_the_table_and_the_charts_data(finished):
    _, pipeline, _ = finished
    page = (pipeline.root / "report.html").read_text()
    assert "cdn" not in page.lower().split("<script>", 1)[0]  # no external script
    assert not re.search(r"<script[^>]+src=", page)
    assert "Plotly.newPlot" in page and "plotly.js" in page.lower()
    charts = {
        m.group(1): json.loads(m.group(2).replace("<\\/", "</"))
        for m in re.finditer(
            r'<script type="application/json" data-chart="(\w+)">(.*?)</script>', page, re.S
        )
    }
    assert {"methods", "groups", "hacking", "overoptimisation"} <= set(charts)
    methods = charts["methods"]["data"][0]
    assert methods["x"] == ["base", "sft", "dpo", "ppo", "grpo", "hack"]
    assert "<th>policy</th>" in page and "Annotators" in page


def test_the_report_opens_with_what_each_stage_contributed(finished):
    """The opening lines are made from the run's numbers: a verdict a method against its
    baseline, the reward model's accuracy, the hacking episode, the time per stage."""
    from alignkit.pipeline.report import story

    _, pipeline, _ = finished
    summary = json.loads((pipeline.root / "summary.json").read_text())
    lines = story(summary)
    dpo = summary["methods"]["dpo"]["versus"]["sft"]
    verdict = (
        "beats"
        if dpo["win_rate_low"] > 0.5
        else "loses to"
        if dpo["win_rate_high"] < 0.5
        else "ties"
    )
    assert f"DPO {verdict} the SFT policy: win rate {dpo['win_rate']:.2f}" in " ".join(lines)
    assert any(line.startswith("SFT ") for line in lines)
    assert any("reward model orders" in line for line in lines)
    assert any(line.startswith("Time: ") for line in lines)
    page = (pipeline.root / "report.html").read_text()
    assert all(html.escape(line) in page for line in lines)


def test_model_text_is_escaped_in_the_report(finished, tmp_path):
    _, pipeline, _ = finished
    evaluation = json.loads((pipeline.folder("eval") / "eval.json").read_text())
    evaluation["answers"][0]["sft"] = "<script>alert(1)</script>"
    (pipeline.folder("eval") / "eval.json").write_text(json.dumps(evaluation))
    from alignkit.pipeline.report import build_summary, render_html

    page = render_html(pipeline, build_summary(pipeline))
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page


def test_presets_and_unknown_stages():
    trainers = {"sft", "rm", "dpo", "ppo", "grpo", "hack"}
    assert set(config_for("quick").stage_options) == set(config_for("full").stage_options)
    assert set(config_for("quick").stage_options) == trainers
    assert config_for("full", model="x").model == "x"
    from alignkit.errors import UserError

    with pytest.raises(UserError, match="preset"):
        config_for("slow")
    with pytest.raises(UserError, match="unknown stage"):
        Pipeline(PipelineConfig(stages=("task", "magic")))
    assert all(hasattr(stages, f"stage_{s}") for s in STAGES)


def test_every_pair_of_a_prompts_distinct_answers_is_labelled():
    row = {"answers": ["a", "b", " a ", "", "c"]}  # a repeat and an empty answer drop out
    assert stages._answer_pairs(row) == [(0, 1), (0, 4), (1, 4)]


def test_best_against_worst_by_the_labels_wins():
    # answer 2 wins both its pairs, answer 0 loses both: 2 over 0
    assert stages.best_against_worst({(0, 1): "b", (0, 2): "b", (1, 2): "b"}) == (2, 0)
    # a cycle: every answer wins once, so no answer is better than another
    assert stages.best_against_worst({(0, 1): "a", (1, 2): "a", (0, 2): "b"}) is None
    # equal wins: the earlier sampled ranks higher (1 and 3 each win once; 0 and 2 never)
    assert stages.best_against_worst({(0, 1): "b", (2, 3): "b"}) == (1, 2)
    assert stages.best_against_worst({}) is None


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_every_presets_stage_options_are_valid_trainer_options(preset, tmp_path):
    from alignkit.train.dpo import DPOConfig
    from alignkit.train.grpo import GRPOConfig
    from alignkit.train.ppo import PPOConfig
    from alignkit.train.reward import RewardConfig
    from alignkit.train.sft import SFTConfig

    classes = {"sft": SFTConfig, "rm": RewardConfig, "dpo": DPOConfig, "ppo": PPOConfig}
    classes |= {"grpo": GRPOConfig, "hack": GRPOConfig}
    pipeline = Pipeline(replace(config_for(preset), output_dir=str(tmp_path)))
    for stage, options in pipeline.cfg.stage_options.items():
        online = {"reward_model": "rm"} if stage in ("ppo", "grpo", "hack") else {}
        cfg = pipeline.trainer_config(classes[stage], stage, model="m", dataset="d", **online)
        assert all(getattr(cfg, key) == value for key, value in options.items()), stage


def test_a_wrong_key_in_a_preset_is_one_error_naming_the_stage(tmp_path):
    from alignkit.errors import UserError
    from alignkit.train.sft import SFTConfig

    cfg = replace(
        config_for("quick"), output_dir=str(tmp_path), stage_options={"sft": {"lerning_rate": 1}}
    )
    with pytest.raises(UserError, match=r"pipeline stage sft.*lerning_rate"):
        Pipeline(cfg).trainer_config(SFTConfig, "sft", model="m", dataset="d")


def test_finished_policies_keep_their_adapter_and_no_checkpoints(finished):
    _, pipeline, _ = finished
    from alignkit.models import load_causal_lm

    for stage in ("sft", "rm", "dpo", "ppo", "grpo", "hack"):
        assert not (pipeline.folder(stage) / "run" / "checkpoints").exists(), stage
    model, _ = load_causal_lm(str(pipeline.folder("dpo") / "run" / "model"))
    assert model is not None
