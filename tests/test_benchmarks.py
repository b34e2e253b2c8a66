"""The benchmark harness (benchmarks/): its pure parts, and one tiny quick run of each system.

Nothing here asserts a timing: only the record schema, the arithmetic, and that alignkit and
TRL, given the same batches, start from the same loss.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import core  # noqa: E402


def _record(system="alignkit", **overrides):
    base = dict(
        workload="dpo",
        system=system,
        model="tiny-random-llama",
        step_ends=[10.0, 10.5, 11.5, 12.0],
        step_tokens=[100, 200, 300, 100],
        losses=[0.6931, 0.69],
        peak_rss_mib=500.0,
        n_params=1000,
        warmup_steps=1,
    )
    base.update(overrides)
    return core.make_record(**base)


def test_step_statistics_skip_warmup():
    times = core.step_times([10.0, 10.5, 11.5, 12.0], warmup_steps=1)
    assert times == pytest.approx([0.5, 1.0, 0.5])
    summary = core.summarize_steps([10.0, 10.5, 11.5, 12.0], [100, 200, 300, 100], 1)
    assert summary["timed_tokens"] == 600
    assert summary["tokens_per_s"] == pytest.approx(600 / 2.0)
    assert summary["step_s_median"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        core.step_times([1.0, 2.0], warmup_steps=0)
    with pytest.raises(ValueError):
        core.step_times([1.0, 2.0], warmup_steps=2)


def test_mfu_arithmetic():
    assert core.matmul_flops(1000) == 2e9
    assert core.model_flops_per_token(100) == 600
    assert core.model_flops_per_token(100, ref_forwards=1) == 800
    # 1000 tokens/s through a 1e6-parameter model = 6e9 FLOP/s; against a 12e9 peak: 50 %
    assert core.mfu(1000, 10**6, 12e9) == pytest.approx(0.5)
    record = _record()
    core.add_mfu(record, peak_flops=6000 * 300 / 0.25)
    assert record["mfu"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        core.mfu(1.0, 1, 0.0)


def test_mfu_counts_shared_prompts_once():
    record = _record()
    assert core.unique_fraction(record, warmup_steps=1) == 1.0  # nothing counted: no sharing
    steps = record["timed_steps"]
    record["step_unique_tokens"] = [t // 2 for t in record["step_tokens"]]
    share = core.unique_fraction(record, warmup_steps=1)
    timed = record["step_tokens"][1 : 1 + steps]
    assert share == pytest.approx(sum(t // 2 for t in timed) / sum(timed))
    full, halved = dict(record), dict(record)
    core.add_mfu(full, peak_flops=1e6)
    core.add_mfu(halved, peak_flops=1e6, unique_share=share)
    assert halved["mfu"] == pytest.approx(full["mfu"])  # the definition: all tokens
    assert halved["mfu_unique"] == pytest.approx(full["mfu"] * share)
    assert halved["unique_tokens_per_s"] == pytest.approx(record["tokens_per_s"] * share)


def test_matmul_params_counts_the_tied_head_once():
    from alignkit.models.tiny import tiny_random_llama

    model, _ = tiny_random_llama()
    total = sum(p.numel() for p in model.parameters())  # tied: the table is listed once
    table = model.get_input_embeddings().weight.numel()
    assert core.count_matmul_params(model, lm_head=True) == total
    assert core.count_matmul_params(model, lm_head=False) == total - table


def test_record_schema_and_json():
    record = _record()
    core.add_mfu(record, 1e9)
    core.validate_record(record)
    for key in core.RECORD_KEYS:
        assert key in record
    assert json.loads(json.dumps(record)) == record
    assert record["first_loss"] == pytest.approx(0.6931)
    with pytest.raises(ValueError):
        core.validate_record({k: v for k, v in record.items() if k != "peak_rss_mib"})
    with pytest.raises(ValueError):
        _record(system="other")


def test_comparison_ratios_and_targets():
    a = _record(step_ends=[0.0, 1.0, 2.0, 3.0], peak_rss_mib=400.0)
    t = _record("trl", step_ends=[0.0, 2.0, 4.0, 6.0], peak_rss_mib=500.0, losses=[0.6931, 0.7])
    c = core.compare(a, t)
    assert c.speed_ratio == pytest.approx(2.0)
    assert c.memory_ratio == pytest.approx(0.8)
    assert c.speed_target == 1.75 and c.speed_met and c.memory_met
    assert c.first_loss_diff == 0 and c.second_loss_diff == pytest.approx(0.01)
    assert c.same_batches


def test_settings_roundtrip():
    s = core.quick_settings(timed_steps=2)
    assert core.Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.num_examples == (s.warmup_steps + 2) * s.batch_size


def _run_both_systems(workload: str, settings, tmp_path) -> dict:
    """One run of `workload` per system in this process, records validated."""
    pytest.importorskip("trl")
    from benchmarks import run, systems

    settings.model_path = run.prepare_model(settings, tmp_path)
    data = run.prepare_data(workload, settings, tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(settings.threads)
        records = {s: systems.RUNNERS[s](workload, settings, data) for s in core.SYSTEMS}
    finally:
        torch.set_num_threads(threads)
        systems.uninstall_alignkit_probe()
    for r in records.values():
        core.add_mfu(r, 1e11)
        core.validate_record(r)
    return records


def test_quick_dpo_run_agrees_with_trl(tmp_path):
    """Both systems, one tiny DPO run each, in this process: records exist, batches and
    tokens are identical, and the first losses (and first-batch log-probs) agree."""
    settings = core.quick_settings(warmup_steps=1, timed_steps=1, batch_size=2)
    records = _run_both_systems("dpo", settings, tmp_path)
    a, t = records["alignkit"], records["trl"]
    assert a["step_tokens"] == t["step_tokens"]
    assert t["tokens_match_alignkit"] == 1.0
    # each pair's prompt counted once: fewer unique tokens than tokens, more than half
    for unique, tokens in zip(a["step_unique_tokens"], a["step_tokens"], strict=True):
        assert tokens / 2 < unique < tokens
    assert math.isclose(a["first_loss"], math.log(2), abs_tol=1e-5)
    assert abs(a["first_loss"] - t["first_loss"]) < 1e-4
    for key in ("logps/chosen", "logps/rejected"):
        assert abs(a["first_metrics"][key] - t["first_metrics"][key]) < 1e-3


def test_grpo_flops_count_generation_and_the_reference():
    # 8·N per trained token (6·N + one reference forward) and 2·N per generated token
    assert core.generation_flops_per_token(100) == 200
    assert core.model_flops_per_s(10, 100, ref_forwards=1, generated_tokens_per_s=5) == 9000
    assert core.mfu(10, 100, 9000.0, ref_forwards=1, generated_tokens_per_s=5) == pytest.approx(1)
    record = _record(
        workload="grpo",
        step_ends=[0.0, 1.0, 2.0],
        step_tokens=[100, 300, 500],
        step_generated_tokens=[40, 40, 40],
        losses=[0.0, 0.0, 0.0],
        ref_forwards_per_step=1,
    )
    assert record["generated_tokens_per_s"] == pytest.approx(40)
    assert record["tokens_per_s"] == pytest.approx(400)
    core.add_mfu(record, peak_flops=1e6)
    expected = (400 * 8 * 1000 + 40 * 2 * 1000) / 1e6
    assert record["mfu"] == pytest.approx(expected)
    core.validate_record(record)
    other = dict(record, system="trl", step_generated_tokens=[40, 40, 39])
    assert not core.compare(record, other).same_batches
    assert core.compare(record, dict(record, system="trl")).same_batches


def test_grpo_settings_count_prompts():
    s = core.quick_settings(timed_steps=2, grpo_prompts=3)
    assert s.examples_for("grpo") == (s.warmup_steps + 2) * 3
    assert s.examples_for("dpo") == s.num_examples


def test_grpo_reward_reads_both_calling_conventions():
    from benchmarks.rewards import REWARD_SPEC, letter_share

    assert letter_share(["q", "q"], ["ab12", ""]) == [0.5, 0.0]
    trl_style = letter_share(
        prompts=[[{"role": "user", "content": "q"}]],
        completions=[[{"role": "assistant", "content": "a b"}]],
        completion_ids=[[1, 2]],
        trainer_state=None,
    )
    assert trl_style == [pytest.approx(2 / 3)]
    from alignkit.rewards.python import load_function

    assert load_function(REWARD_SPEC) is letter_share


def test_quick_grpo_run_matches_trl_work(tmp_path):
    """Both systems, one tiny GRPO run each, in this process: the same prompts per step, every
    completion exactly max_new_tokens long, the same token counts, and a first loss of ~0 on
    both sides (ratio 1, KL 0, group-normalised advantages)."""
    settings = core.quick_settings(warmup_steps=1, timed_steps=1, max_new_tokens=8)
    records = _run_both_systems("grpo", settings, tmp_path)
    assert all(r["ref_forwards_per_step"] == 1 for r in records.values())
    a, t = records["alignkit"], records["trl"]
    completions = settings.grpo_prompts * settings.num_generations
    assert a["step_generated_tokens"] == [completions * 8] * settings.total_steps
    assert t["step_generated_tokens"] == a["step_generated_tokens"]
    assert a["step_tokens"] == t["step_tokens"]
    assert a["step_prompt_digests"] == t["step_prompt_digests"]
    assert t["tokens_match_alignkit"] == 1.0
    assert core.compare(a, t).same_batches
    assert abs(a["first_loss"]) < 1e-5 and abs(t["first_loss"]) < 1e-5


def _trl_runs():
    """alignkit at 300 tokens/s and three TRL runs at 150, 100 and 200 (the fastest)."""
    a = _record(step_ends=[0.0, 1.0, 2.0, 3.0])
    default = _record("trl", step_ends=[0.0, 2.0, 4.0, 6.0])
    foreach = dict(_record("trl", step_ends=[0.0, 3.0, 6.0, 9.0]), variant="trl-foreach-adamw")
    kept = dict(_record("trl", step_ends=[0.0, 1.5, 3.0, 4.5]), variant="trl-kept-host-memory")
    return a, [default, foreach, kept]


def test_the_headline_is_against_the_fastest_trl_run_of_the_same_run():
    a, trl_runs = _trl_runs()
    comparisons = [core.compare(a, t) for t in trl_runs]
    assert [round(c.speed_ratio, 2) for c in comparisons] == [2.0, 3.0, 1.5]
    (headline,) = core.headline_comparisons(comparisons)
    assert headline.versus == "trl-kept-host-memory"
    assert headline.speed_ratio == pytest.approx(1.5)
    assert headline.speed_target == 1.75 and not headline.speed_met  # judged on the fastest


def test_make_bench_runs_every_trl_variant_unless_told_not_to():
    from benchmarks import run

    assert run.selected_variants(run.parse_args([])) == tuple(run.TRL_VARIANTS)
    assert run.selected_variants(run.parse_args(["--trl-default-only"])) == ()


def test_the_report_leads_with_the_fastest_trl_and_keeps_the_others(capsys):
    from benchmarks import run

    a, trl_runs = _trl_runs()
    records = [a, *trl_runs]
    for r in records:
        core.add_mfu(r, 1e9)
    comparisons = [core.compare(a, t) for t in trl_runs]
    run.print_report(records, comparisons, {"flops": 1e9, "size": 64, "threads": 1})
    out = capsys.readouterr().out
    headline, each = out[out.index("alignkit / the fastest TRL") :].split("alignkit / each TRL")
    (row,) = [line for line in headline.splitlines() if line.startswith("│ dpo")]
    assert "trl-kept-host-memory" in row and "1.50" in row and "1.75" in row
    for versus in ("trl ", "trl-foreach-adamw", "trl-kept-host-memory"):
        assert any(line.startswith("│ dpo") and versus in line for line in each.splitlines())


def test_a_stored_run_reprints_with_its_headline(capsys):
    """`benchmarks/run.py --report FILE` reprints a stored run: the README's headline
    figures come from the last full run's records."""
    from benchmarks import run

    stored = ROOT / "benchmarks" / "results" / "2026-11-27.json"
    headlines = {c.workload: c for c in core.headline_comparisons(run.stored_comparisons(stored))}
    assert {w: c.versus for w, c in headlines.items()} == {
        "sft": "trl-kept-host-memory",
        "rm": "trl-kept-host-memory",
        "dpo": "trl-kept-host-memory",
        "grpo": "trl-foreach-adamw",
    }
    assert {w: round(c.speed_ratio, 2) for w, c in headlines.items()} == {
        "sft": 1.27,
        "rm": 1.56,
        "dpo": 2.96,
        "grpo": 2.05,
    }
    assert run.main(["--report", str(stored)]) == 0
    assert "alignkit / the fastest TRL" in capsys.readouterr().out


def test_sampling_workload_on_the_tiny_model(tmp_path):
    """The sampling benchmark's record: every row count, both systems, the limits and the
    ratios to the binding one (no timing asserted)."""
    from benchmarks import sampling

    out = tmp_path / "sampling.json"
    assert sampling.main(["--quick", "--threads", "1", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["rows"] for r in result["rows"]] == list(sampling.ROWS)
    for row in result["rows"]:
        limits = {"float32": max(row["limit_stream_ms"], row["limit_compute_ms"])}
        limits["bfloat16"] = row["limit_bfloat16_ms"]
        for system in ("alignkit_float32", "alignkit_bfloat16", "generate_float32"):
            limit = limits[system.rsplit("_", 1)[1]]
            assert row[f"{system}_vs_limit"] == pytest.approx(row[f"{system}_ms"] / limit)
        assert row["binding_limit"] in ("read bandwidth", "matmul peak")
