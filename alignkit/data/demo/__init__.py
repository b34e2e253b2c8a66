"""Built-in demo data: a small preference task a 135M chat model can learn on a CPU.

Regenerate with ``python -m alignkit.data.demo.make_demo`` (deterministic).
"""

from __future__ import annotations

from pathlib import Path

from alignkit.errors import UserError

DEMO_DIR = Path(__file__).resolve().parent
DEMO_FILES = {
    "preference": "preference.jsonl",
    "sft": "sft.jsonl",
    "prompt": "prompts.jsonl",
}


def demo_path(kind: str = "preference") -> Path:
    """The packaged demo file for ``kind``: "preference", "sft" or "prompt"."""
    if kind not in DEMO_FILES:
        raise UserError(f"no demo data '{kind}'; expected one of {', '.join(DEMO_FILES)}")
    return DEMO_DIR / DEMO_FILES[kind]
