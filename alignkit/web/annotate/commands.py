"""`alignkit annotate ...` and the annotate options of `alignkit serve`.

- ``annotate new``: a labelling project from prompts (the policy samples two answers per
  prompt now, with a progress bar, or later in ``serve``'s worker with ``--later``) or
  from a file of ready pairs; with ``--reward-model``, every pair is scored for active
  learning.
- ``annotate add-annotator NAME [--admin]``: prints the new token, once.
- ``annotate stats``: the agreement tables; ``annotate export``: pairs JSONL + sidecar.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alignkit.errors import UserError
from alignkit.web.annotate.export import ExportRule, export_to_files, sidecar_path
from alignkit.web.annotate.sampling import PairSampling
from alignkit.web.store import Store


def _store(path: str, *, must_exist: bool = True) -> Store:
    if must_exist and not Path(path).is_file():
        raise UserError(f"no labels database at {path} (make one with: alignkit annotate new)")
    return Store(path)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise UserError(f"{flag} must be at least 1, got {value}")
    return value


def _sampling(args: argparse.Namespace) -> PairSampling:
    _positive(args.max_new_tokens, "--max-new-tokens")
    if args.temperature <= 0:
        raise UserError(
            f"--temperature must be above 0 (two samples must differ), got {args.temperature}"
        )
    return PairSampling(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )


# ---------------------------------------------------------------------- annotate new


def cmd_new(args: argparse.Namespace) -> int:
    from alignkit.web.annotate import projects

    if (args.prompts is None) == (args.pairs is None):
        raise UserError("give one of --prompts FILE (the model answers) or --pairs FILE")
    projects.check_overlap(args.overlap)
    if args.limit is not None:
        _positive(args.limit, "--limit")
    sampling = _sampling(args)
    if args.pairs is not None:
        pairs = projects.read_pairs(args.pairs, limit=args.limit)
        store = _store(args.db, must_exist=False)
        name = args.name or Path(args.pairs).stem
        project_id = projects.new_pairs_project(store, pairs, overlap=args.overlap, name=name)
        print(
            f"project {project_id} '{name}': {len(pairs)} pairs, each for {args.overlap} annotators"
        )
    else:
        prompts = projects.read_prompts(args.prompts, limit=args.limit)
        store = _store(args.db, must_exist=False)
        name = args.name or Path(args.prompts).stem
        settings = {"sampling": vars(sampling)}
        project_id = projects.new_prompts_project(
            store, prompts, model=args.model, overlap=args.overlap, name=name, settings=settings
        )
        print(f"project {project_id} '{name}': {len(prompts)} prompts for {args.model}")
        if args.later:
            print("the pairs will be sampled by `alignkit serve` (progress on the page)")
        else:
            _sample_now(store, args.model, sampling)
    if args.reward_model:
        _score_now(store, args.reward_model)
    print(f"database: {args.db}")
    return 0


def _sample_now(store: Store, model_name: str, sampling: PairSampling) -> None:
    from tqdm.auto import tqdm

    from alignkit.models import load_causal_lm
    from alignkit.web.annotate.sampling import sample_all_pending

    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_name)
    loaded = time.perf_counter()
    before = store.sampling_progress()["sampled"]
    total = store.sampling_progress()["pending"]
    with tqdm(total=total, desc="sampling pairs", unit="prompt") as bar:

        def on_progress(sampled: int, pending: int) -> None:
            bar.n = total - pending
            bar.refresh()

        sample_all_pending(
            store, model, tokenizer, sampling, model_name=model_name, on_progress=on_progress
        )
    made = store.sampling_progress()["sampled"] - before
    end = time.perf_counter()
    print(
        f"sampled {made} pairs in {end - loaded:.1f} s (model loaded in {loaded - start:.1f} s)"
        + (
            f"; {total - made} prompts gave two identical answers three times"
            if made < total
            else ""
        )
    )


def _score_now(store: Store, reward_model: str) -> None:
    from alignkit.web.annotate.active import load_reward_scorer, score_unscored_items

    scorer = load_reward_scorer(reward_model)
    scored = 0
    while (count := score_unscored_items(store, scorer)) > 0:
        scored += count
    print(f"scored {scored} pairs with {reward_model}: the least certain come first")


# ---------------------------------------------------------------------- accounts


def cmd_add_annotator(args: argparse.Namespace) -> int:
    from alignkit.web.auth import create_annotator

    store = _store(args.db, must_exist=False)
    try:
        token = create_annotator(store, args.name, is_admin=args.admin)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(token)
    return 0


# ---------------------------------------------------------------------- stats and export


def cmd_stats(args: argparse.Namespace) -> int:
    from alignkit.web.annotate.stats import label_stats

    stats = label_stats(_store(args.db), min_agreement=args.min_agreement)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats)
    return 0


def _figure(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def print_stats(stats: dict) -> None:
    """The agreement figures as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{stats['labels']} labels on {stats['items']} items "
        f"({stats['items_complete']} of {stats['items_total']} complete); "
        f"Fleiss' κ {_figure(stats['fleiss_kappa'])}, "
        f"Krippendorff's α {_figure(stats['krippendorff_alpha'])}"
    )
    table = Table(title="annotators")
    for column in ("annotator", "labels", "agreement", "left picks", "z", "median s", "flags"):
        table.add_column(column)
    for name, report in stats["annotators"].items():
        z = report["left_z"]
        table.add_row(
            name,
            str(report["labels"]),
            _share(report["agreement"]),
            _share(report["left_rate"]),
            "—" if z is None else f"{z:+.1f}",
            _figure(report["median_seconds"], 1),
            "; ".join(report["flags"]) or "ok",
        )
    console.print(table)
    if stats["cohen_kappa"]:
        pairs = Table(title="Cohen's kappa per pair")
        pairs.add_column("annotators")
        pairs.add_column("κ")
        for pair, kappa in stats["cohen_kappa"].items():
            pairs.add_row(pair.replace("|", " · "), _figure(kappa))
        console.print(pairs)


def cmd_export(args: argparse.Namespace) -> int:
    _positive(args.min_labels, "--min-labels")
    rule = ExportRule(args.rule, args.ties, args.keep_flagged, args.min_labels, args.min_agreement)
    out = Path(args.out)
    sidecar = export_to_files(_store(args.db), out, rule)
    dropped = ", ".join(sidecar["dropped_annotators"]) or "none"
    left_out = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sidecar["left_out"].items() if v)
    print(
        f"wrote {sidecar['rows']} pairs to {out} and the agreement figures to "
        f"{sidecar_path(out)} (flagged annotators dropped: {dropped}"
        + (f"; left out: {left_out}" if left_out else "")
        + ")"
    )
    return 0


# ---------------------------------------------------------------------- parsers


def _add_sampling_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """How pairs are sampled; on `serve` the flags carry a ``--pair-`` prefix, so they
    cannot clash with another area's options."""
    parser.add_argument(
        f"--{prefix}max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=128,
        help="answer length cap",
    )
    parser.add_argument(
        f"--{prefix}temperature",
        dest="temperature",
        type=float,
        default=0.9,
        help="sampling temperature",
    )
    parser.add_argument(f"--{prefix}seed", dest="seed", type=int, default=0)


def add_annotate_parser(sub, default_model: str) -> None:
    """The `annotate` command group."""
    annotate = sub.add_parser(
        "annotate", help="human feedback: labelling projects, annotators, stats, export"
    )
    actions = annotate.add_subparsers(dest="annotate_command", required=True, metavar="ACTION")

    new = actions.add_parser("new", help="a labelling project from prompts or ready pairs")
    new.add_argument("--db", default="labels.db", help="SQLite file of the labels")
    new.add_argument("--prompts", default=None, help="prompt file (or `demo`): the model answers")
    new.add_argument(
        "--pairs", default=None, help="file of ready pairs: prompt, answer_a, answer_b"
    )
    new.add_argument("--model", default=default_model, help="the policy that samples the pairs")
    new.add_argument("--overlap", type=int, default=2, help="annotators per item")
    new.add_argument("--name", default=None, help="project name (default: the file's name)")
    new.add_argument("--limit", type=int, default=None, help="use the first N rows")
    new.add_argument("--reward-model", default=None, help="order the queue by its uncertainty")
    new.add_argument("--later", action="store_true", help="leave the sampling to `alignkit serve`")
    _add_sampling_options(new)
    new.set_defaults(handler=cmd_new)

    add = actions.add_parser("add-annotator", help="add an annotator; prints their token once")
    add.add_argument("name")
    add.add_argument("--db", default="labels.db")
    add.add_argument("--admin", action="store_true", help="may see statistics and export")
    add.set_defaults(handler=cmd_add_annotator)

    stats = actions.add_parser("stats", help="agreement, biases and flags of the labels")
    stats.add_argument("--db", default="labels.db")
    stats.add_argument("--min-agreement", type=float, default=0.7, help="flag below this")
    stats.add_argument("--json", action="store_true", help="print every figure as JSON")
    stats.set_defaults(handler=cmd_stats)

    export = actions.add_parser("export", help="preference pairs JSONL + agreement sidecar")
    export.add_argument("--db", default="labels.db")
    export.add_argument("--out", required=True, help="the JSONL file to write")
    export.add_argument("--rule", choices=["majority", "each"], default="majority")
    export.add_argument(
        "--ties",
        choices=["vote", "drop"],
        default="vote",
        help="tie / both-bad labels count as votes (vote) or are left out of the vote (drop)",
    )
    export.add_argument("--keep-flagged", action="store_true", help="keep flagged annotators")
    export.add_argument("--min-labels", type=int, default=1, help="labels an item needs")
    export.add_argument("--min-agreement", type=float, default=0.7, help="flag below this")
    export.set_defaults(handler=cmd_export)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """`alignkit serve` options of the annotate worker."""
    parser.add_argument(
        "--model", default=None, help="policy that samples pairs (default: each project's model)"
    )
    parser.add_argument(
        "--reward-model", default=None, help="show the pairs it is least sure of first"
    )
    parser.add_argument(
        "--online-dpo", action="store_true", help="learn from consensus labels as they come (LoRA)"
    )
    parser.add_argument("--dpo-every", type=int, default=8, help="consensus pairs per DPO update")
    parser.add_argument("--dpo-steps", type=int, default=2, help="passes over them per update")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--dpo-learning-rate", type=float, default=5e-5)
    _add_sampling_options(parser, prefix="pair-")


def worker_settings(args: argparse.Namespace, runs_dir: Path):
    """The annotate worker's settings from `alignkit serve`'s options."""
    from alignkit.web.annotate.online import OnlineDPOSettings
    from alignkit.web.annotate.worker import WorkerSettings

    online = None
    if args.online_dpo:
        _positive(args.dpo_every, "--dpo-every")
        _positive(args.dpo_steps, "--dpo-steps")
        if args.dpo_beta <= 0 or args.dpo_learning_rate <= 0:
            raise UserError("--dpo-beta and --dpo-learning-rate must be above 0")
        online = OnlineDPOSettings(
            every=args.dpo_every,
            steps=args.dpo_steps,
            beta=args.dpo_beta,
            learning_rate=args.dpo_learning_rate,
        )
    return WorkerSettings(
        model=args.model,
        reward_model=args.reward_model,
        online_dpo=online,
        sampling=_sampling(args),
        runs_dir=runs_dir,
    )
