"""Sampling speed: alignkit's sampler beside transformers' `generate`, and this machine's limits.

    python benchmarks/sampling.py            # the default model (part of `make bench`)
    python benchmarks/sampling.py --quick    # the tiny random model, to try it

One process, one run: it measures the two limits a decoding step can meet here — streaming
every weight once (the read bandwidth of a large float32 sum) and the batch's products (the
float32 matmul peak) — then, at 1, 8 and 32 rows, the milliseconds of one decoding step of
alignkit's sampler (float32, and its bfloat16 option) and of `generate` with the same
settings: prompts of the pipeline's task, 64 new tokens forced (EOS held back), temperature
1, no top-k or top-p, no processors besides. A step's time is (T(64 tokens) − T(1 token)) /
63, so the prefill, which both do once, drops out; each is the median of `--repeats` runs.
Every figure is also given as a ratio to the limit that binds it (the larger of the two).
Results go to benchmarks/results/<date>-sampling.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NEW_TOKENS = 64
ROWS = (1, 8, 32)


def read_bandwidth(threads: int, megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second of the best of `repeats` float32 sums over `megabytes` of memory
    (much larger than any cache, so it streams from RAM as a decoding step's weights do)."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    best = min(_timed(data.sum) for _ in range(repeats))
    return data.numel() * 4 / best


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """The best n×n matmul rate (FLOP/s) in `dtype`."""
    import torch

    torch.set_num_threads(threads)
    kind = getattr(torch, dtype)
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    out = a @ b
    best = min(_timed(lambda: torch.matmul(a, b, out=out)) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pipeline_prompts(rows: int) -> list[Any]:
    """The first `rows` prompts of the pipeline's task (system + user message)."""
    from alignkit.pipeline.task import build_task

    task = build_task(arithmetic=8)
    return [task[i % len(task)].record()["prompt"] for i in range(rows)]


def weight_bytes(model) -> int:
    """Bytes a decoding step streams: every distinct parameter once (a tied embedding and
    vocabulary projection counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def matmul_params(model) -> int:
    """Parameters a decoding step multiplies each row by: the decoder's linear maps and the
    vocabulary projection (the embedding is a lookup)."""
    from torch import nn

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def time_alignkit(model, tokenizer, prompts, dtype: str, repeats: int) -> float:
    from alignkit.rollout.llama_step import frozen_weights
    from alignkit.rollout.sampling import SamplingConfig, sample

    def run(tokens: int) -> float:
        cfg = SamplingConfig(max_new_tokens=tokens, min_new_tokens=tokens, dtype=dtype)
        return _timed(lambda: sample(model, tokenizer, prompts, cfg, seed=0))

    with frozen_weights(model):  # as in an evaluation: the weights prepared once
        return _step_ms(run, repeats)


def time_generate(model, tokenizer, prompts, repeats: int) -> float:
    import torch

    from alignkit.data.tokenization import encode_prompt
    from alignkit.rollout.sampling import left_pad

    ids, mask = left_pad([encode_prompt(p, tokenizer) for p in prompts], tokenizer.pad_token_id)

    def run(tokens: int) -> float:
        torch.manual_seed(0)
        return _timed(
            lambda: model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
        )

    with torch.no_grad():
        return _step_ms(run, repeats)


def _step_ms(run, repeats: int) -> float:
    run(2)  # warm-up
    steps = [(run(NEW_TOKENS) - run(1)) / (NEW_TOKENS - 1) for _ in range(repeats)]
    return 1000 * statistics.median(steps)


def measure(model_name: str, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    from alignkit.data.tokenization import encode_prompt
    from alignkit.host_memory import keep_freed_host_memory
    from alignkit.models import load_causal_lm

    torch.set_num_threads(threads)
    keep_freed_host_memory()  # as the trainers and the sampler run
    bandwidth, peak = read_bandwidth(threads), matmul_peak(threads)
    peak_bf16 = matmul_peak(threads, dtype="bfloat16")
    model, tokenizer = load_causal_lm(model_name)
    model.eval()
    stream_ms = 1000 * weight_bytes(model) / bandwidth
    n_matmul = matmul_params(model)
    rows_out = []
    for rows in ROWS:
        prompts = pipeline_prompts(rows)
        compute_ms = 1000 * 2 * n_matmul * rows / peak
        limit = max(stream_ms, compute_ms)
        # bfloat16 streams half the bytes and multiplies at its own peak
        limit_bf16 = max(stream_ms / 2, 1000 * 2 * n_matmul * rows / peak_bf16)
        figures = {
            "alignkit_float32": time_alignkit(model, tokenizer, prompts, "float32", repeats),
            "alignkit_bfloat16": time_alignkit(model, tokenizer, prompts, "bfloat16", repeats),
            "generate_float32": time_generate(model, tokenizer, prompts, repeats),
        }
        rows_out.append(
            {
                "rows": rows,
                "prompt_tokens": max(len(encode_prompt(p, tokenizer)) for p in prompts),
                "limit_stream_ms": stream_ms,
                "limit_compute_ms": compute_ms,
                "binding_limit": "read bandwidth" if stream_ms >= compute_ms else "matmul peak",
                **{f"{k}_ms": v for k, v in figures.items()},
                **{f"{k}_tokens_per_s": 1000 * rows / v for k, v in figures.items()},
                "limit_bfloat16_ms": limit_bf16,
                **{
                    f"{k}_vs_limit": v / (limit_bf16 if "bfloat16" in k else limit)
                    for k, v in figures.items()
                },
                "alignkit_float32_vs_generate": figures["generate_float32"]
                / figures["alignkit_float32"],
            }
        )
    return {
        "model": model_name,
        "threads": threads,
        "new_tokens": NEW_TOKENS,
        "repeats": repeats,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "matmul_peak_gflop_s": peak / 1e9,
        "matmul_peak_bfloat16_gflop_s": peak_bf16 / 1e9,
        "weight_mb": weight_bytes(model) / 1e6,
        "matmul_params": n_matmul,
        "rows": rows_out,
    }


def print_report(result: dict[str, Any]) -> None:
    print(
        f"sampling, {result['model']}, {result['threads']} threads: read bandwidth "
        f"{result['read_bandwidth_gb_s']:.1f} GB/s, float32 matmul peak "
        f"{result['matmul_peak_gflop_s']:.0f} GFLOP/s (bfloat16 "
        f"{result['matmul_peak_bfloat16_gflop_s']:.0f}), {result['weight_mb']:.0f} MB of weights"
    )
    print(
        f"{'rows':>4} {'limit ms':>9} {'(bound by)':>15} {'alignkit fp32':>15} "
        f"{'alignkit bf16':>15} {'generate':>15} {'fp32 vs generate':>17}"
    )
    for r in result["rows"]:
        limit = max(r["limit_stream_ms"], r["limit_compute_ms"])

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key + '_ms']:.1f} ({r[key + '_vs_limit']:.2f}x)"

        print(
            f"{r['rows']:>4} {limit:>9.1f} {r['binding_limit']:>15} "
            f"{cell('alignkit_float32'):>15} {cell('alignkit_bfloat16'):>15} "
            f"{cell('generate_float32'):>15} {r['alignkit_float32_vs_generate']:>16.2f}x"
        )
    print(
        "ms per decoding step (its ratio to the binding limit: float32's, and for bfloat16 "
        "half the bytes at bfloat16's matmul peak); 64 new tokens forced"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny random model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="results file (default: by date)")
    args = parser.parse_args(argv)
    from alignkit.models.loading import DEFAULT_MODEL
    from alignkit.models.tiny import TINY_MODEL_NAME

    model = TINY_MODEL_NAME if args.quick else DEFAULT_MODEL
    result = measure(model, args.threads, args.repeats)
    result["date"] = dt.date.today().isoformat()
    print_report(result)
    suffix = "-sampling-quick" if args.quick else "-sampling"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{result['date']}{suffix}.json")
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
