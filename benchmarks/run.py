"""alignkit vs TRL on the same work, on this machine, in one invocation: `make bench`.

    python benchmarks/run.py            # SmolLM2-135M-Instruct (full mode)
    python benchmarks/run.py --quick    # the tiny random model, seconds per system

For each workload (SFT, reward model, DPO, GRPO) it runs alignkit, then TRL three ways (as
it ships, with the foreach AdamW, with alignkit's glibc setting; --trl-default-only: as it
ships only), each in its own child process (so peak RSS is per system), sequentially, with
the same model folder, data rows and order, batch size, lengths, optimiser, learning rate,
clipping and steps (GRPO: the same prompts per step, group size, completion length,
sampling, β, loss and reward); it measures this machine's float32 matmul peak in the same
run, prints the alignkit/TRL ratios — the headline against the fastest TRL run of the
workload, every TRL run beside it — and writes benchmarks/results/<date>.json.

    python benchmarks/run.py --report benchmarks/results/2026-11-27.json   # reprint a run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alignkit.host_memory import MMAP_THRESHOLD_MAX, TRIM_THRESHOLD_NEVER  # noqa: E402
from benchmarks.core import (  # noqa: E402
    DPO_MFU_TARGET,
    SYSTEMS,
    Comparison,
    Settings,
    add_mfu,
    compare,
    headline_comparisons,
    matmul_flops,
    quick_settings,
    unique_fraction,
    validate_record,
)

WORKLOADS = ("sft", "rm", "dpo", "grpo")


@dataclasses.dataclass(frozen=True)
class TrlVariant:
    """TRL run once more with one thing changed, to show what that thing is worth."""

    label: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)


# all run by default; with --trl-default-only, each runs only if its switch is given
# (--trl-foreach-adamw, --trl-kept-host-memory)
TRL_VARIANTS = {
    "trl-foreach-adamw": TrlVariant("foreach AdamW", settings={"trl_optim": "adamw_torch"}),
    # alignkit's `keep_host_memory` (alignkit/train/host_memory.py), set through glibc's
    # environment variables: how much of the lead is the allocator setting
    "trl-kept-host-memory": TrlVariant(
        "glibc keeps freed memory, as alignkit does",
        env={
            "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_MAX),
            "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_NEVER),
        },
    ),
}
RESULTS = ROOT / "benchmarks" / "results"


def _pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TQDM_DISABLE="1",
        TRANSFORMERS_VERBOSITY="error",
        DATASETS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra or {})
    return env


def measure_matmul_peak(size: int, threads: int, repeats: int = 5) -> dict[str, float]:
    """Best float32 n×n matmul throughput (FLOP/s) with the benchmark's thread count."""
    import torch

    _pin_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return {"size": size, "threads": threads, "seconds": best, "flops": matmul_flops(size) / best}


def prepare_model(settings: Settings, workdir: Path) -> str:
    """The local folder both systems load: the cached default model, or the tiny model saved."""
    from alignkit.models.loading import resolve_model
    from alignkit.models.tiny import TINY_MODEL_NAME, tiny_random_llama

    if settings.model == TINY_MODEL_NAME:
        folder = workdir / "tiny-random-llama"
        model, tokenizer = tiny_random_llama(seed=settings.seed)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return str(folder)
    return resolve_model(settings.model).location


def prepare_data(workload: str, settings: Settings, workdir: Path) -> Path:
    """The first `settings.examples_for(workload)` rows of the packaged demo file of the
    workload's format (GRPO: prompts)."""
    from alignkit.data import demo_path
    from benchmarks.systems import DATA_FORMAT

    fmt = DATA_FORMAT[workload]
    rows = demo_path(fmt).read_text(encoding="utf-8").splitlines()
    rows = [r for r in rows if r.strip()]
    needed = settings.examples_for(workload)
    if len(rows) < needed:
        raise SystemExit(
            f"{workload}: the demo {fmt} data has {len(rows)} rows, the run needs "
            f"{needed}; lower --steps, --batch-size or --grpo-prompts"
        )
    path = workdir / f"{fmt}-{needed}.jsonl"
    path.write_text("\n".join(rows[:needed]) + "\n", encoding="utf-8")
    return path


def run_child(
    workload: str,
    system: str,
    settings: Settings,
    data: Path,
    workdir: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    settings_file = workdir / "settings.json"
    settings_file.write_text(json.dumps(settings.to_dict()), encoding="utf-8")
    record_file = workdir / f"{workload}-{system}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--workload",
        workload,
        "--system",
        system,
        "--settings",
        str(settings_file),
        "--data",
        str(data),
        "--record-out",
        str(record_file),
    ]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=child_env(settings.threads, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not record_file.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"workload": workload, "system": system, "error": tail, "process_s": wall}
    record = json.loads(record_file.read_text(encoding="utf-8"))
    record["process_s"] = wall
    # Other work on the machine skews timings (and oversubscribed OpenMP threads stall):
    # keep the 1-minute load average around the run, and warn when it was high.
    record["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    # (the previous child and this one add up to ~threads to the 1-minute average themselves)
    if max(record["loadavg_1m"]) > settings.threads + 0.75:
        print(
            f"[bench] warning: load average {load_before:.1f} -> {record['loadavg_1m'][1]:.1f} "
            f"around {workload}/{system}: other processes share the CPU, timings are noisy",
            file=sys.stderr,
        )
    return record


def child_main(args: argparse.Namespace) -> int:
    settings = Settings.from_dict(json.loads(Path(args.settings).read_text(encoding="utf-8")))
    _pin_threads(settings.threads)
    from benchmarks.systems import RUNNERS

    record = RUNNERS[args.system](args.workload, settings, Path(args.data))
    Path(args.record_out).write_text(json.dumps(record), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _system(record: dict[str, Any]) -> str:
    return record.get("variant") or record["system"]


def _comparison_row(c: Comparison) -> list[str]:
    return [
        c.workload,
        c.versus,
        f"{c.speed_ratio:.2f}",
        _fmt(c.speed_target, ".2f"),
        "-" if c.speed_met is None else ("yes" if c.speed_met else "no"),
        f"{c.memory_ratio:.2f}",
        "yes" if c.memory_met else "no",
    ]


def print_report(records: list[dict[str, Any]], comparisons: list, peak: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=132)
    table = Table(title="alignkit vs TRL (same data, batches, optimiser, steps; float32, CPU)")
    columns = ("workload", "system", "tokens/s", "generated tok/s", "step s (median)")
    for name in (*columns, "peak RSS MiB", "MFU", "MFU unique"):
        table.add_column(name, justify="left" if name in ("workload", "system") else "right")
    table.add_column("first loss", justify="right")
    for r in records:
        if "error" in r:
            table.add_row(r["workload"], _system(r), "[red]failed[/red]", *[""] * 6)
            continue
        table.add_row(
            r["workload"],
            _system(r),
            f"{r['tokens_per_s']:.0f}",
            _fmt(r.get("generated_tokens_per_s"), ".1f"),
            f"{r['step_s_median']:.3f}",
            f"{r['peak_rss_mib']:.0f}",
            _fmt(r["mfu"] and 100 * r["mfu"], ".1f") + "%",
            _fmt(r.get("mfu_unique") and 100 * r["mfu_unique"], ".1f") + "%",
            f"{r['first_loss']:.6f}",
        )
    console.print(table)

    headline = Table(title="alignkit / the fastest TRL of this run (the headline)")
    for name in ("workload", "fastest TRL", "speed ×", "target", "met", "memory ×", "≤ 1"):
        headline.add_column(
            name, justify="left" if name in ("workload", "fastest TRL") else "right"
        )
    for c in headline_comparisons(comparisons):
        headline.add_row(*_comparison_row(c))
    console.print(headline)

    ratios = Table(title="alignkit / each TRL run (the targets are judged on the headline)")
    ratios.add_column("workload")
    ratios.add_column("vs", no_wrap=True)
    for name in ("speed ×", "memory ×", "|Δ loss| step 1"):
        ratios.add_column(name, justify="right")
    ratios.add_column("|Δ loss| step 2", justify="right")
    ratios.add_column("same batches", justify="right")
    ratios.add_column("same tokens", justify="right")
    ratios.add_column("|Δ logps| batch 1", justify="right")
    for c in comparisons:
        ratios.add_row(
            c.workload,
            c.versus,
            f"{c.speed_ratio:.2f}",
            f"{c.memory_ratio:.2f}",
            f"{c.first_loss_diff:.1e}",
            _fmt(c.second_loss_diff, ".1e"),
            "yes" if c.same_batches else "no",
            _fmt(c.tokens_match and 100 * c.tokens_match, ".0f") + "%",
            _fmt(c.first_logps_diff, ".1e"),
        )
    console.print(ratios)
    console.print(
        f"matmul peak: {peak['flops'] / 1e9:.1f} GFLOP/s "
        f"(float32 {peak['size']}² × {peak['size']}², {peak['threads']} threads); "
        f"DPO MFU target ≥ {DPO_MFU_TARGET:.0%}"
    )
    if any(r.get("workload") == "grpo" and "error" not in r for r in records):
        console.print(
            "GRPO: samples differ between the systems (own RNG streams); same batches = the same "
            "prompt token ids and the same prompt + completion token counts in every step; the "
            "first loss is −mean(advantage) + β·KL with KL = 0 and ratio 1, i.e. ~0 on both sides "
            "(group-normalised advantages sum to 0 per group)"
        )


# ----------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model, few steps")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--steps", type=int, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps first (>= 1)")
    p.add_argument("--batch-size", type=int, help="examples (SFT) or pairs (RM, DPO) per step")
    p.add_argument("--grpo-prompts", type=int, help="GRPO: prompts per step (× generations)")
    p.add_argument("--num-generations", type=int, help="GRPO: completions per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, help="GRPO: the length of every completion")
    p.add_argument("--threads", type=int)
    p.add_argument("--model", help="model name (default: per mode)")
    p.add_argument("--out", default=str(RESULTS), help="results folder ('' = do not write)")
    p.add_argument(
        "--trl-default-only",
        action="store_true",
        help="run TRL as it ships only, not its variants (faster; the headline is then "
        "against TRL's default alone)",
    )
    p.add_argument(
        "--trl-foreach-adamw",
        action="store_true",
        help="with --trl-default-only: still run TRL with the unfused (foreach) AdamW",
    )
    p.add_argument(
        "--trl-kept-host-memory",
        action="store_true",
        help="with --trl-default-only: still run TRL with glibc keeping freed memory "
        "(alignkit's keep_host_memory)",
    )
    p.add_argument(
        "--report",
        metavar="RESULTS.json",
        help="reprint the tables of a stored run (benchmarks/results/...) and run nothing",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    # internal: one (workload, system) run in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--record-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    settings = quick_settings() if args.quick else Settings()
    overrides = {
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": args.batch_size,
        "grpo_prompts": args.grpo_prompts,
        "num_generations": args.num_generations,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    if args.model:
        settings.model = args.model
    if settings.warmup_steps < 1:
        raise SystemExit("--warmup must be >= 1")
    return settings


def selected_variants(args: argparse.Namespace) -> tuple[str, ...]:
    """The TRL variants to run: all of them, unless --trl-default-only (then those named)."""
    if not args.trl_default_only:
        return tuple(TRL_VARIANTS)
    return tuple(name for name in TRL_VARIANTS if getattr(args, name.replace("-", "_")))


def stored_comparisons(path: str | Path) -> list[Comparison]:
    """The alignkit/TRL comparisons of a stored run's records, recomputed from them."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    comparisons = []
    for a in (r for r in records if r["system"] == "alignkit" and "error" not in r):
        trl_runs = [r for r in records if r["system"] == "trl" and r["workload"] == a["workload"]]
        comparisons += [compare(a, t) for t in trl_runs if "error" not in t]
    return comparisons


def report_stored(path: str | Path) -> int:
    """`--report FILE`: the tables of a stored run, as the run printed them."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    peak = next((r["matmul_peak"] for r in records if "matmul_peak" in r), None)
    if peak is None:
        raise SystemExit(f"{path}: no benchmark records in it")
    print_report(records, stored_comparisons(path), peak)
    return 0


def run_benchmarks(
    settings: Settings,
    workloads: list[str],
    timeout: float = 1800,
    trl_variants: tuple[str, ...] = (),
) -> dict:
    """Run every (workload, system) pair; return records, comparisons and the matmul peak."""
    from benchmarks.systems import grpo_available

    started = time.perf_counter()
    # measured before the runs and again after them: the best of the two is the peak (a busy
    # moment lowers a measurement, never raises it), so MFU is not flattered by a bad sample
    peak = measure_matmul_peak(settings.matmul_size, settings.threads)
    peaks_seen = [peak["flops"]]
    records: list[dict[str, Any]] = []
    comparisons = []
    skipped: dict[str, str] = {}
    groups: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-") as tmp:
        workdir = Path(tmp)
        settings.model_path = prepare_model(settings, workdir)
        for workload in workloads:
            if workload == "grpo":
                ready, why = grpo_available()
                if not ready:
                    skipped[workload] = why
                    continue
            data = prepare_data(workload, settings, workdir)
            pair = {}
            for system in SYSTEMS:
                print(f"[bench] {workload} / {system} ...", file=sys.stderr, flush=True)
                record = run_child(workload, system, settings, data, workdir, timeout)
                pair[system] = record
                records.append(record)
            if any("error" in r for r in pair.values()):
                for r in pair.values():
                    if "error" in r:
                        print(
                            f"[bench] {workload}/{r['system']} failed:\n{r['error']}",
                            file=sys.stderr,
                        )
                continue
            others = []
            for name in trl_variants:
                variant = TRL_VARIANTS[name]
                print(
                    f"[bench] {workload} / trl ({variant.label}) ...", file=sys.stderr, flush=True
                )
                changed = dataclasses.replace(settings, **variant.settings)
                other = run_child(workload, "trl", changed, data, workdir, timeout, variant.env)
                other["variant"] = name
                other["variant_changes"] = {**variant.settings, "env": variant.env}
                other["trl_optim"] = changed.trl_optim
                records.append(other)
                if "error" not in other:
                    others.append(other)
            groups.append((pair, others))
    after = measure_matmul_peak(settings.matmul_size, settings.threads)
    peaks_seen.append(after["flops"])
    if after["flops"] > peak["flops"]:
        peak = after
    peak["flops_seen"] = peaks_seen
    for pair, others in groups:
        n_params = pair["alignkit"]["n_params"]  # one N for both systems (they agree)
        # the same unique work for both: the batches are the same (checked by compare)
        share = unique_fraction(pair["alignkit"], settings.warmup_steps)
        for r in [*pair.values(), *others]:
            add_mfu(r, peak["flops"], n_params, share)
            validate_record(r)
        workload_comparisons = [compare(pair["alignkit"], t) for t in [pair["trl"], *others]]
        pair["alignkit"]["vs_trl"] = [c.to_dict() for c in workload_comparisons]
        (fastest,) = headline_comparisons(workload_comparisons)
        pair["alignkit"]["vs_fastest_trl"] = fastest.to_dict()
        comparisons += workload_comparisons
    settings_dict = settings.to_dict()
    settings_dict["model_path"] = None  # a temporary folder in quick mode: not worth keeping
    for r in records:
        r["settings"] = settings_dict
        r["matmul_peak"] = peak
    return {
        "records": records,
        "comparisons": comparisons,
        "peak": peak,
        "skipped": skipped,
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.report:
        return report_stored(args.report)
    settings = build_settings(args)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_benchmarks(settings, workloads, args.timeout, selected_variants(args))
    print_report(result["records"], result["comparisons"], result["peak"])
    for workload, why in result["skipped"].items():
        print(f"{workload}: skipped ({why})")
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for r in result["records"]:
        r["machine"] = machine
        r["bench_wall_s"] = result["wall_s"]
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if settings.quick else ""
        path = out / f"{dt.date.today().isoformat()}{suffix}.json"
        path.write_text(json.dumps(result["records"], indent=1) + "\n", encoding="utf-8")
        print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"bench wall time: {result['wall_s']:.0f} s")
    failed = [r for r in result["records"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
