"""The pipeline's report: `summary.json` with every number, `report.html` that opens
offline (plotly's JavaScript inlined from the installed package, no CDN), and a table in
the terminal.

The page holds: the methods' table (gold, win rate against the SFT policy with its 95%
interval, KL, length, per group), the annotators' agreement, the reward-hacking episode
(proxy and gold over the iterations, the guard's actions marked), the over-optimisation
curve (gold and proxy against √KL, Gao et al. 2022), and before/after answers to the same
held-out prompts. Every chart's data sits in the page as JSON (`<script
type="application/json" data-chart=...>`), so what is drawn can be read back; model text is
escaped.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from alignkit.pipeline.run import read_jsonl

if TYPE_CHECKING:
    from alignkit.pipeline.run import Pipeline

METHOD_ORDER = ("base", "sft", "dpo", "ppo", "grpo", "hack")
INTERVAL_WORDS = {
    "bootstrap": "paired bootstrap over prompts (2000 resamples)",
    "wilson": "Wilson score interval",
}


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(path) if "objective/scores" in r] if path.is_file() else []


def build_summary(p: Pipeline) -> dict[str, Any]:
    """Every number of the pipeline in one JSON-ready dict."""
    evaluation = json.loads((p.folder("eval") / "eval.json").read_text(encoding="utf-8"))
    finished = {s: p.done(s) for s in p.cfg.stages if s != "report"}
    stages = {s: result for s, result in finished.items() if result is not None}
    hack_rows = _metrics(p.folder("hack") / "run" / "metrics.jsonl")
    return {
        "model": p.cfg.model,
        "seed": p.cfg.seed,
        "prompts_held_out": evaluation["prompts"],
        "interval": evaluation["interval"],
        "baselines": evaluation["baselines"],
        "methods": evaluation["methods"],
        "reward_model": {"heldout_accuracy": (stages.get("rm") or {}).get("heldout_accuracy")},
        "feedback": stages.get("feedback"),
        "hacking": stages.get("hack"),
        "hacking_curve": [
            {k: r.get(k) for k in ("iteration", "objective/scores", "gold/score")}
            for r in hack_rows
        ],
        "seconds": {s: v.get("seconds") for s, v in stages.items()},
    }


def _versus(m: dict[str, Any], baseline: str) -> str:
    v = m["versus"][baseline]
    return f"{v['win_rate']:.2f} ({v['win_rate_low']:.2f}–{v['win_rate_high']:.2f})"


def _verdict(m: dict[str, Any], baseline: str) -> str:
    v = m["versus"][baseline]
    if v["win_rate_low"] > 0.5:
        return "beats"
    if v["win_rate_high"] < 0.5:
        return "loses to"
    return "ties"


def story(summary: dict[str, Any]) -> list[str]:
    """What each stage contributed in this run, in sentences made from its numbers."""
    methods, lines = summary["methods"], []
    first = summary["baselines"][0]
    if "sft" in methods and "base" in methods["sft"].get("versus", {}):
        sft = methods["sft"]
        lines.append(
            f"SFT {_verdict(sft, 'base')} the base model on gold: win rate "
            f"{_versus(sft, 'base')}, gold {methods['base']['gold']:.3f} → {sft['gold']:.3f}."
        )
    accuracy = summary["reward_model"]["heldout_accuracy"]
    if accuracy is not None:
        lines.append(
            f"The reward model orders {accuracy:.0%} of held-out answer pairs as the gold "
            "judge does."
        )
    for name, label in (("dpo", "DPO"), ("ppo", "PPO"), ("grpo", "GRPO")):
        if name in methods and first in methods[name].get("versus", {}):
            m = methods[name]
            lines.append(
                f"{label} {_verdict(m, first)} the {first.upper()} policy: win rate "
                f"{_versus(m, first)}, gold {m['gold']:.3f}, KL {m.get('kl') or 0:.1f} nats."
            )
    curve = [r for r in summary.get("hacking_curve", []) if r.get("gold/score") is not None]
    if len(curve) >= 2:
        top = max(curve, key=lambda r: r["objective/scores"])
        start, end = curve[0], curve[-1]
        actions = [e for e in (summary.get("hacking") or {}).get("guard_events", [])]
        acted = [e for e in actions if e["event"] in ("rollback", "stop")]
        guard = (
            "the guard " + ", then ".join(f"{e['event']} at step {e['step']}" for e in acted)
            if acted
            else "the guard took no action"
        )
        held_out = ""
        if "hack" in methods and first in methods["hack"].get("versus", {}):
            held_out = (
                f" On held-out prompts its policy scores gold {methods['hack']['gold']:.3f} "
                f"against the {first.upper()} policy's {methods[first]['gold']:.3f} (win rate "
                f"{_versus(methods['hack'], first)})."
            )
        lines.append(
            f"Against the flawed proxy the proxy score went {start['objective/scores']:.2f} → "
            f"{top['objective/scores']:.2f} while gold went {start['gold/score']:.3f} → "
            f"{end['gold/score']:.3f} on the training samples; {guard}.{held_out}"
        )
    seconds = {k: v for k, v in summary.get("seconds", {}).items() if v is not None}
    if seconds:
        total = sum(seconds.values())
        parts = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        lines.append(f"Time: {total / 60:.1f} minutes ({parts} seconds).")
    return lines


def _titled(layout: dict) -> dict:
    """plotly.js 3 wants every title as {text: ...}."""
    out = dict(layout)
    for key, value in layout.items():
        if key == "title" and isinstance(value, str):
            out[key] = {"text": value}
        elif key.startswith(("xaxis", "yaxis")) and isinstance(value, dict):
            out[key] = _titled(value)
    return out


def _chart(chart_id: str, data: list[dict], layout: dict) -> str:
    spec = json.dumps({"data": data, "layout": _titled(layout)}).replace("</", "<\\/")
    return (
        f'<div class="chart" id="{chart_id}"></div>'
        f'<script type="application/json" data-chart="{chart_id}">{spec}</script>'
    )


def _methods_chart(summary: dict[str, Any]) -> str:
    names = [n for n in METHOD_ORDER if n in summary["methods"]]
    ms = [summary["methods"][n] for n in names]
    win = {
        "type": "bar",
        "name": f"win rate vs {summary['baselines'][0]}",
        "x": names,
        "y": [m["win_rate"] for m in ms],
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": [m["win_rate_high"] - m["win_rate"] for m in ms],
            "arrayminus": [m["win_rate"] - m["win_rate_low"] for m in ms],
        },
    }
    gold = {"type": "bar", "name": "gold", "x": names, "y": [m["gold"] for m in ms]}
    layout = {
        "title": "Gold score and win rate (95% interval) on held-out prompts",
        "barmode": "group",
        "yaxis": {"range": [0, 1]},
        "shapes": [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": 0.5,
                "y1": 0.5,
                "line": {"dash": "dot", "color": "#888"},
            }
        ],
    }
    return _chart("methods", [gold, win], layout)


def _groups_chart(summary: dict[str, Any]) -> str:
    names = [n for n in METHOD_ORDER if n in summary["methods"]]
    groups = sorted({g for n in names for g in summary["methods"][n]["per_group"]})
    data = [
        {
            "type": "bar",
            "name": g,
            "x": names,
            "y": [summary["methods"][n]["per_group"].get(g, {}).get("gold") for n in names],
        }
        for g in groups
    ]
    return _chart("groups", data, {"title": "Gold score per user group", "barmode": "group"})


def _hacking_chart(rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    x = [r["iteration"] for r in rows]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "proxy (reward model + pays for length)",
            "x": x,
            "y": [r["objective/scores"] for r in rows],
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "gold",
            "x": x,
            "y": [r.get("gold/score") for r in rows],
            "yaxis": "y2",
        },
    ]
    step_to_iteration = {r["step"]: r["iteration"] for r in rows}
    marks = [
        {
            "type": "line",
            "x0": step_to_iteration.get(e["step"], e["step"]),
            "x1": step_to_iteration.get(e["step"], e["step"]),
            "yref": "paper",
            "y0": 0,
            "y1": 1,
            "line": {"color": "#c0392b" if e["event"] == "rollback" else "#e67e22", "dash": "dash"},
        }
        for e in events
        if e["event"] in ("rollback", "stop")
    ]
    layout = {
        "title": "Reward hacking: GRPO against a length-loving proxy",
        "xaxis": {"title": "iteration"},
        "yaxis": {"title": "proxy"},
        "yaxis2": {"title": "gold", "overlaying": "y", "side": "right"},
        "shapes": marks,
    }
    return _chart("hacking", data, layout)


def _overoptimisation_chart(runs: dict[str, list[dict[str, Any]]]) -> str:
    data = []
    for name, rows in runs.items():
        points = [r for r in rows if "gold/score" in r and r.get("objective/kl") is not None]
        x = [math.sqrt(max(r["objective/kl"], 0.0)) for r in points]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"{name}: gold",
                "x": x,
                "y": [r["gold/score"] for r in points],
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"{name}: proxy",
                "x": x,
                "y": [r["objective/scores"] for r in points],
                "yaxis": "y2",
                "marker": {"symbol": "x"},
            }
        )
    layout = {
        "title": "Over-optimisation: gold and proxy against √KL (Gao et al. 2022)",
        "xaxis": {"title": "√KL to the SFT policy"},
        "yaxis": {"title": "gold"},
        "yaxis2": {"title": "proxy", "overlaying": "y", "side": "right"},
    }
    return _chart("overoptimisation", data, layout)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_html(p: Pipeline, summary: dict[str, Any]) -> str:
    import plotly.offline

    evaluation = json.loads((p.folder("eval") / "eval.json").read_text(encoding="utf-8"))
    names = [n for n in METHOD_ORDER if n in summary["methods"]]
    method_rows = [
        [
            n,
            _fmt(m["gold"]),
            _fmt(m["win_rate"], 2),
            f"{m['win_rate_low']:.2f}–{m['win_rate_high']:.2f}",
            _fmt(m.get("kl"), 2),
            _fmt(m["mean_length"], 1),
            "; ".join(f"{g}: {f['gold']:.3f}" for g, f in sorted(m["per_group"].items())),
        ]
        for n in names
        for m in [summary["methods"][n]]
    ]
    sections = [
        "<h2>Methods</h2>",
        _table(
            [
                "policy",
                "gold",
                f"win rate vs {summary['baselines'][0]}",
                "95% interval",
                "KL to SFT",
                "words",
                "gold per group",
            ],
            method_rows,
        ),
        _methods_chart(summary),
        _groups_chart(summary),
    ]
    agreement_path = p.folder("feedback") / "agreement.json"
    if agreement_path.is_file():
        agreement = json.loads(agreement_path.read_text(encoding="utf-8"))
        rows = [
            [
                name,
                r["labels"],
                _fmt(r["agreement"], 2),
                _fmt(r["left_rate"], 2),
                "; ".join(r["flags"]) or "—",
            ]
            for name, r in agreement["annotators"].items()
        ]
        sections += [
            "<h2>Annotators</h2>",
            f"<p>Fleiss' κ {_fmt(agreement['fleiss_kappa'])}, Krippendorff's α "
            f"{_fmt(agreement['krippendorff_alpha'])}; flagged: "
            f"{html.escape(', '.join(agreement['flagged']) or 'none')}.</p>",
            _table(["annotator", "labels", "agrees with majority", "picks left", "flags"], rows),
        ]
    hack_rows = _metrics(p.folder("hack") / "run" / "metrics.jsonl")
    if hack_rows:
        events = read_jsonl(p.folder("hack") / "run" / "events.jsonl")
        sections += ["<h2>A reward-hacking episode</h2>", _hacking_chart(hack_rows, events)]
        acted = [e for e in events if e["event"] in ("rollback", "stop")]
        if acted:
            rows = [[e["step"], e["event"], e["message"]] for e in acted]
            sections.append(_table(["step", "event", "what"], rows))
        else:
            sections.append("<p>The guard took no action in this run.</p>")
    runs = {s: _metrics(p.folder(s) / "run" / "metrics.jsonl") for s in ("ppo", "grpo", "hack")}
    if any(runs.values()):
        sections.append(_overoptimisation_chart({k: v for k, v in runs.items() if v}))
    answer_rows = [
        [a["group"], a["prompt"][-1]["content"] if isinstance(a["prompt"], list) else a["prompt"]]
        + [a.get(n, "") for n in names]
        for a in evaluation["answers"][:12]
    ]
    sections += [
        "<h2>Answers to the same held-out prompts</h2>",
        _table(["group", "prompt", *names], answer_rows),
    ]
    script = plotly.offline.get_plotlyjs()
    interval = INTERVAL_WORDS.get(summary["interval"], summary["interval"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alignkit pipeline report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
.chart {{ height: 420px; margin: 1rem 0; }}
</style>
<script>{script}</script></head><body>
<h1>alignkit pipeline: {html.escape(summary["model"])}</h1>
<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in story(summary))}</ul>
<p>{summary["prompts_held_out"]} held-out prompts; win rates paired by prompt, ties count
half, 95% interval: {html.escape(interval)}. Reward model held-out accuracy
against the gold judge: {_fmt(summary["reward_model"]["heldout_accuracy"])}.</p>
{"".join(sections)}
<script>
for (const node of document.querySelectorAll('script[data-chart]')) {{
  const spec = JSON.parse(node.textContent);
  Plotly.newPlot(node.dataset.chart, spec.data, spec.layout, {{responsive: true}});
}}
</script></body></html>
"""


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"alignkit pipeline: win rate against {summary['baselines'][0]}")
    for column in ("policy", "gold", "win rate", "95% interval", "KL", "words"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name in [n for n in METHOD_ORDER if n in summary["methods"]]:
        m = summary["methods"][name]
        table.add_row(
            name,
            _fmt(m["gold"]),
            _fmt(m["win_rate"], 2),
            f"{m['win_rate_low']:.2f}–{m['win_rate_high']:.2f}",
            _fmt(m.get("kl"), 2),
            _fmt(m["mean_length"], 1),
        )
    console.print(table)
    for line in story(summary):
        console.print(f"- {line}", highlight=False)


def write_report(p: Pipeline) -> dict[str, Any]:
    summary = build_summary(p)
    (p.root / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (p.root / "report.html").write_text(render_html(p, summary), encoding="utf-8")
    print_summary(summary, p.console)
    p.console.print(f"report: {p.root / 'report.html'}   summary: {p.root / 'summary.json'}")
    return {"report": str(p.root / "report.html"), "summary": str(p.root / "summary.json")}
