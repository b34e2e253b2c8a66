"""Labelling projects: prompts for the policy to answer twice, or ready candidate pairs.

A prompts file is any file ``alignkit data check`` reads as prompt-only data (``prompt``,
optional ``group``; ``demo`` names the packaged demo prompts). A pairs file holds
``prompt`` with ``answer_a``/``answer_b`` (or ``chosen``/``rejected``, read as a and b:
nothing about which is better is assumed); each row is validated by the library's own
preference validation, so a pair that could never be exported is refused here.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.data import demo_path, load_dataset_records
from alignkit.data.readers import read_rows
from alignkit.data.records import Text, validate_row
from alignkit.errors import DataError, UserError
from alignkit.web.store import Store

DEMO = "demo"


def _existing(path: str) -> str:
    if path == DEMO:
        return str(demo_path("prompt"))
    if not Path(path).expanduser().exists():
        raise UserError(f"file not found: {path}")
    return str(Path(path).expanduser())


def read_prompts(path: str, *, limit: int | None = None) -> list[tuple[Text, str | None]]:
    """(prompt, group) of each row of a prompt-only file, validated as the trainers do."""
    records = load_dataset_records(_existing(path), "prompt")
    if limit is not None:
        records = records[:limit]
    return [(record.prompt, record.group) for record in records]


def read_pairs(path: str, *, limit: int | None = None) -> list[tuple[Text, str, str, str | None]]:
    """(prompt, answer a, answer b, group) of each row of a pairs file."""
    source = _existing(path)
    pairs = []
    for row_number, row in read_rows(source):
        if "answer_a" in row or "answer_b" in row:
            as_preference = {
                key: value for key, value in row.items() if key not in ("answer_a", "answer_b")
            }
            as_preference["chosen"] = row.get("answer_a")
            as_preference["rejected"] = row.get("answer_b")
        else:
            as_preference = row
        try:
            record = validate_row(as_preference, "preference", path=source, row_number=row_number)
        except DataError as error:
            # name the columns the user wrote, not the ones they were read as
            message = (
                str(error).replace("'chosen'", "'answer_a'").replace("'rejected'", "'answer_b'")
            )
            raise UserError(message) from None
        if not isinstance(record.chosen, str) and len(record.chosen) != 1:
            raise UserError(f"{source}:{row_number}: an answer must be one assistant message")
        pairs.append(
            (
                record.prompt,
                _answer_text(record.chosen),
                _answer_text(record.rejected),
                record.group,
            )
        )
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{source}: no pairs in the file")
    return pairs


def _answer_text(answer: Text) -> str:
    return answer if isinstance(answer, str) else answer[0]["content"]


def check_overlap(overlap: int) -> None:
    if overlap < 1:
        raise UserError(f"--overlap must be at least 1, got {overlap}")


def new_prompts_project(
    store: Store,
    prompts: list[tuple[Text, str | None]],
    *,
    model: str,
    overlap: int,
    name: str,
    settings: dict | None = None,
) -> int:
    """A project whose pairs the policy samples: each prompt owes one pair."""
    check_overlap(overlap)
    project_id = store.add_project(name, "prompts", overlap=overlap, model=model, settings=settings)
    store.add_prompts(project_id, prompts)
    return project_id


def new_pairs_project(
    store: Store, pairs: list[tuple[Text, str, str, str | None]], *, overlap: int, name: str
) -> int:
    """A project of ready candidate pairs, one item each."""
    check_overlap(overlap)
    project_id = store.add_project(name, "pairs", overlap=overlap)
    store.add_items(project_id, pairs)
    return project_id
