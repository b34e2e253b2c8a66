"""The `alignkit` command line.

A user mistake (a bad file, an unknown option, a model that cannot be found) is printed as
one line on stderr with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from alignkit.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a process stopped by SIGINT

# command -> (module, config class, trainer class, one-line help)
TRAINERS = {
    "sft": (
        "alignkit.train.sft",
        "SFTConfig",
        "SFTTrainer",
        "supervised fine-tuning on prompt/completion data",
    ),
    "rm": (
        "alignkit.train.reward",
        "RewardConfig",
        "RewardTrainer",
        "train a Bradley-Terry reward model on preference pairs",
    ),
    "dpo": (
        "alignkit.train.dpo",
        "DPOConfig",
        "DPOTrainer",
        "direct preference optimisation (and IPO, hinge, robust, SimPO)",
    ),
    "ppo": (
        "alignkit.train.ppo",
        "PPOConfig",
        "PPOTrainer",
        "PPO with its four models: policy, critic, reference, reward",
    ),
    "grpo": (
        "alignkit.train.grpo",
        "GRPOConfig",
        "GRPOTrainer",
        "GRPO: group-relative advantages, no critic (RLOO with --advantage-estimator rloo)",
    ),
}


def run_trainer(command: str, argv: Sequence[str]) -> int:
    """`alignkit <command> [--config FILE.yaml] [--key value ...]`: train and summarise."""
    import importlib

    from alignkit.options import parse_config
    from alignkit.train.summary import print_run_summary

    module_name, config_name, trainer_name, description = TRAINERS[command]
    module = importlib.import_module(module_name)
    config = parse_config(
        getattr(module, config_name), argv, prog=f"alignkit {command}", description=description
    )
    from accelerate import PartialState

    try:
        result = getattr(module, trainer_name)(config).train()
    except KeyboardInterrupt as stop:
        if PartialState().is_main_process:
            report_interrupt(command, argv, config.output_dir, stop)
        return EXIT_INTERRUPTED
    if PartialState().is_main_process:  # one summary under `accelerate launch`
        print_run_summary(command, config, result)
    return 0


def resume_command(command: str, argv: Sequence[str]) -> str:
    """The command line that continues this run: the same options, with --resume."""
    import shlex

    kept = [
        a for a in argv if a not in ("--resume", "--no-resume") and not a.startswith("--resume=")
    ]
    return shlex.join(["alignkit", command, *kept, "--resume"])


def report_interrupt(
    command: str, argv: Sequence[str], output_dir: str, stop: KeyboardInterrupt
) -> None:
    """Ctrl-C: say whether a checkpoint was written (or which one is the last), and how to
    go on."""
    from pathlib import Path

    from alignkit.train.checkpoint import CheckpointManager
    from alignkit.train.engine import TrainingInterrupted

    if isinstance(stop, TrainingInterrupted):
        said = f"interrupted at step {stop.step}: checkpoint written to {stop.checkpoint}"
    else:
        latest = CheckpointManager(Path(output_dir) / "checkpoints", is_main=False).latest()
        said = "interrupted at once: no checkpoint written now; " + (
            f"the last complete one is {latest}"
            if latest
            else "there is none, so --resume starts over"
        )
    print(f"alignkit: {said}", file=sys.stderr)
    print(f"alignkit: resume with: {resume_command(command, argv)}", file=sys.stderr)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from alignkit.data import check_dataset, render_summary
    from alignkit.models import load_tokenizer

    tokenizer = load_tokenizer(args.model) if args.model else None
    summary = check_dataset(
        args.path, args.format, tokenizer, drop_invalid=args.drop_invalid, split=args.split
    )
    render_summary(summary)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from alignkit.models import load_causal_lm
    from alignkit.rollout.sampling import SamplingConfig, sample

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    model, tokenizer = load_causal_lm(args.model)
    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        do_sample=args.temperature > 0,
    )
    rollout = sample(
        model, tokenizer, [[{"role": "user", "content": args.prompt}]], config, seed=args.seed
    )
    print(rollout.texts[0].strip())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from alignkit.eval.command import run_eval

    run_eval(
        policies=args.policy,
        baselines=args.baseline,
        prompts=args.prompts,
        judge=args.judge,
        reward_model=args.reward_model,
        reference=args.reference,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        interval=args.interval,
        seed=args.seed,
        output=args.output,
    )
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from alignkit.pipeline.run import STAGES, Pipeline, config_for

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
    cfg = config_for(
        args.preset,
        model=args.model,
        output_dir=args.output_dir,
        stage_steps=args.max_steps,
        seed=args.seed,
        stages=stages,
        keep_checkpoints=args.keep_checkpoints or None,
    )
    Pipeline(cfg).run()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignkit.web.annotate.commands import worker_settings
    from alignkit.web.app import ServeSettings
    from alignkit.web.serve import serve

    settings = ServeSettings(db=Path(args.db), runs_dir=Path(args.runs))
    settings.extra["annotate"] = worker_settings(args, settings.runs_dir)
    settings.extra["playground_model"] = args.playground_model
    serve(settings, host=args.host, port=args.port, allow_hosts=args.allow_host)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from alignkit.demo import run_demo

    run_demo(model_name=args.model, output_dir=args.output_dir, steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alignkit.models import DEFAULT_MODEL
    from alignkit.web.annotate.commands import add_annotate_parser, add_serve_options

    parser = argparse.ArgumentParser(
        prog="alignkit", description="Align language models with human preferences."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, (_, _, _, description) in TRAINERS.items():
        # Parsed by run_trainer (options come from the config dataclass); listed here for --help.
        sub.add_parser(
            command, help=f"{description} (see alignkit {command} --help)", add_help=False
        )

    data = sub.add_parser("data", help="inspect and validate data files")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check", help="validate a data file with the trainers' own code and summarise it"
    )
    check.add_argument("path", help="JSONL, JSON, Parquet, CSV file or a datasets folder")
    check.add_argument(
        "--format",
        choices=["preference", "sft", "prompt"],
        default=None,
        help="expected format (default: detect from the first row)",
    )
    check.add_argument(
        "--model", default=None, help="tokenizer to measure token lengths with (a model name)"
    )
    check.add_argument("--split", default="train", help="split of a datasets folder")
    check.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop invalid rows and report how many instead of stopping",
    )
    check.set_defaults(handler=_cmd_data_check)

    chat = sub.add_parser("chat", help="answer one prompt with a model")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or .gguf")
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    chat.add_argument("--seed", type=int, default=0)
    chat.set_defaults(handler=_cmd_chat)

    evaluate = sub.add_parser(
        "eval", help="compare policies on held-out prompts: gold, win rate, KL, per group"
    )
    evaluate.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="NAME=MODEL",
        help="a policy to evaluate (model name or folder); repeat for each",
    )
    evaluate.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME",
        help="a --policy name to win against (repeatable; default: the first policy)",
    )
    evaluate.add_argument("--prompts", default="demo", help="prompt file, or `demo`")
    evaluate.add_argument(
        "--judge",
        default="demo",
        help="the gold judge: `demo` (the demo task's rules), `gold:PROMPTS.jsonl` (the "
        "pipeline task's judge), or module:function / file.py:function",
    )
    evaluate.add_argument("--reward-model", default=None, help="also score with this reward model")
    evaluate.add_argument(
        "--reference",
        default=None,
        help="KL is measured to this (a --policy name or a model; default the first baseline; "
        "`none` to skip)",
    )
    evaluate.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    evaluate.add_argument("--max-new-tokens", type=int, default=64)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--interval", choices=["bootstrap", "wilson"], default="bootstrap")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--output", default=None, help="write every figure to this JSON file")
    evaluate.set_defaults(handler=_cmd_eval)

    pipeline = sub.add_parser(
        "pipeline", help="the whole RLHF story: feedback, SFT, RM, PPO/GRPO/DPO, hacking, eval"
    )
    pipeline.add_argument("--preset", choices=["quick", "full"], default="quick")
    pipeline.add_argument("--model", default=None, help="starting model (default: the default)")
    pipeline.add_argument(
        "--output-dir", default=None, help="pipeline folder (default: runs/pipeline-<time>)"
    )
    pipeline.add_argument("--stages", default=None, help="comma-separated subset of the stages")
    pipeline.add_argument(
        "--max-steps", type=int, default=None, help="cap every trainer at N steps (to try it out)"
    )
    pipeline.add_argument("--seed", type=int, default=None)
    pipeline.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every stage's resumable checkpoints (optimizer state included) and "
        "LoRA policies' merged weights; by default a finished stage keeps its final model "
        "(an adapter for LoRA policies), metrics, events and rollouts",
    )
    pipeline.set_defaults(handler=_cmd_pipeline)

    server = sub.add_parser(
        "serve", help="the web app: annotate pairs, the playground, the runs dashboard"
    )
    server.add_argument("--db", default="labels.db", help="SQLite file of the labels")
    server.add_argument("--runs", default="runs", help="folder of run folders for the dashboard")
    server.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers to besides this machine's own (repeatable; "
        "any other Host header is refused)",
    )
    server.add_argument(
        "--playground-model",
        default=DEFAULT_MODEL,
        help="model of the playground's real-model mode (loaded at its first request)",
    )
    add_serve_options(server)
    server.set_defaults(handler=_cmd_serve)
    add_annotate_parser(sub, DEFAULT_MODEL)

    demo = sub.add_parser("demo", help="the main job on the default model, end to end")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or .gguf")
    demo.add_argument("--output-dir", default=None, help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--steps", type=int, default=40, help="training steps")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TRAINERS:
            return run_trainer(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UserError as error:
        print(f"alignkit: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("alignkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
