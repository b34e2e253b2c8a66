"""Typed records, format detection, validation and loading.

Formats (TRL's conventions):

* ``preference``: ``prompt``/``chosen``/``rejected``, each plain text or a list of
  ``{"role", "content"}`` messages; or "implicit prompt" rows with only ``chosen`` and
  ``rejected`` as full conversations, whose common leading messages are the prompt.
* ``sft``: ``prompt``/``completion`` (text or conversational), or ``messages`` (a
  conversation ending with an assistant message: that final message is the completion).
* ``prompt``: ``prompt`` alone (for PPO/GRPO).

Optional columns on every format: ``group`` (str) and ``annotator`` (str); preference rows
may also have ``margin`` (a finite number). Prompt-only rows keep any other columns in
``extra`` (e.g. a reference ``answer`` for a reward function).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from alignkit.data.readers import read_rows
from alignkit.errors import DataError, UserError

logger = logging.getLogger(__name__)

Message = dict[str, str]
Text = Union[str, list[Message]]  # noqa: UP007 - readable alias on 3.10

FORMATS = ("preference", "sft", "prompt")
MAX_REASONS = 5


@dataclass
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    group: str | None = None
    annotator: str | None = None
    margin: float | None = None
    # (file, row) the record was read from, for errors found after validation
    origin: tuple[str, int] | None = field(default=None, compare=False, repr=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class SFTExample:
    prompt: Text
    completion: Text
    group: str | None = None
    annotator: str | None = None
    # (file, row) the record was read from, for errors found after validation
    origin: tuple[str, int] | None = field(default=None, compare=False, repr=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class PromptExample:
    prompt: Text
    group: str | None = None
    annotator: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # (file, row) the record was read from, for errors found after validation
    origin: tuple[str, int] | None = field(default=None, compare=False, repr=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


Example = Union[PreferenceExample, SFTExample, PromptExample]  # noqa: UP007


# ----------------------------------------------------------------------------- detection


def detect_format(row: dict[str, Any], *, path: str = "<data>", row_number: int = 1) -> str:
    """'preference', 'sft' or 'prompt' from one row's keys (those whose value is not None).

    A row with ``chosen`` or ``rejected`` is preference data, one with ``completion`` or
    ``messages`` SFT data, one with only ``prompt`` prompt-only data; validation then names
    any field still missing.
    """
    keys = {k for k, v in row.items() if v is not None}
    if keys & {"chosen", "rejected"}:
        return "preference"
    if keys & {"messages", "completion"}:
        return "sft"
    if "prompt" in keys:
        return "prompt"
    cols = ", ".join(sorted(row)) or "none"
    raise DataError(
        f"unknown format: columns ({cols}) match no format; expected prompt/chosen/rejected "
        "or chosen/rejected (preference), prompt/completion or messages (sft), "
        "or prompt (prompt)",
        path=path,
        row=row_number,
    )


# ----------------------------------------------------------------------------- validation


class _RowLocation:
    def __init__(self, path: str, row: int):
        self.path = path
        self.row = row

    def error(self, field_name: str | None, message: str) -> DataError:
        return DataError(message, path=self.path, row=self.row, field=field_name)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def _messages(value: Any, ctx: _RowLocation, name: str) -> list[Message]:
    out: list[Message] = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise ctx.error(
                where, f'expected a message {{"role", "content"}}, got {_type_name(msg)}'
            )
        for key in ("role", "content"):
            if msg.get(key) is None:
                raise ctx.error(
                    where, f"'{key}' is null" if key in msg else f"message has no '{key}'"
                )
        role, content = msg["role"], msg["content"]
        if not isinstance(role, str) or not role.strip():
            raise ctx.error(where, f"'role' must be a non-empty string, got {_type_name(role)}")
        if role not in ROLES:
            raise ctx.error(where, f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ctx.error(
                where,
                f"'content' must be a string, got {_type_name(content)} "
                "(multimodal content is not supported)",
            )
        out.append({"role": role, "content": content})
    return out


ROLES = ("system", "user", "assistant", "tool")  # what the common chat templates render


def _absent(row: dict, name: str) -> str:
    """How a required field that has no value is described: missing, or present but null."""
    return "is null" if name in row else "missing field"


def _text_or_messages(
    row: dict, name: str, ctx: _RowLocation, *, required: bool = True
) -> Text | None:
    value = row.get(name)
    if value is None:
        if required:
            raise ctx.error(name, _absent(row, name))
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ctx.error(name, "empty message list")
        return _messages(value, ctx, name)
    raise ctx.error(name, f"expected text or a list of messages, got {_type_name(value)}")


def _is_empty(value: Text) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return all(not m["content"].strip() for m in value)


def _check_prompt(prompt: Text, ctx: _RowLocation, name: str = "prompt") -> None:
    if _is_empty(prompt):
        raise ctx.error(name, "empty prompt")
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise ctx.error(
            name,
            "the prompt's last message is from the assistant; a prompt must end with a "
            "user (or system/tool) message",
        )


def _check_response(prompt: Text, response: Text, ctx: _RowLocation, name: str) -> None:
    if isinstance(prompt, str) != isinstance(response, str):
        kinds = ("text", "a message list")
        raise ctx.error(
            name,
            f"is {kinds[isinstance(response, list)]} but the prompt is "
            f"{kinds[isinstance(prompt, list)]}; use the same kind for both",
        )
    if _is_empty(response):
        raise ctx.error(name, "empty response")
    if isinstance(response, list) and response[0]["role"] != "assistant":
        raise ctx.error(
            name, f"a response must start with an assistant message, not '{response[0]['role']}'"
        )


def _optional_str(row: dict, name: str, ctx: _RowLocation) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.error(name, f"expected text, got {_type_name(value)}")
    return value


def _margin(row: dict, ctx: _RowLocation) -> float | None:
    value = row.get("margin")
    if value is None:
        return None
    if isinstance(value, str):  # CSV cells are text
        try:
            value = float(value)
        except ValueError:
            raise ctx.error("margin", f"expected a number, got text {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error("margin", f"expected a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise ctx.error("margin", f"must be a finite number, got {value}")
    return float(value)


def _split_implicit(chosen: list[Message], rejected: list[Message], ctx: _RowLocation):
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # the prompt must end before an assistant turn: shared assistant turns go to both responses
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1
    if n == 0:
        raise ctx.error(
            "prompt",
            "missing field (chosen and rejected share no leading non-assistant messages, "
            "so there is no implicit prompt)",
        )
    return chosen[:n], chosen[n:], rejected[n:]


def validate_preference(row: dict, ctx: _RowLocation) -> PreferenceExample:
    prompt = _text_or_messages(row, "prompt", ctx, required=False)
    chosen = _text_or_messages(row, "chosen", ctx)
    rejected = _text_or_messages(row, "rejected", ctx)
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise ctx.error(
                "prompt",
                f"{_absent(row, 'prompt')} (without a prompt, chosen and rejected must both be "
                "full conversations sharing the prompt messages)",
            )
        if chosen == rejected:
            raise ctx.error("rejected", "chosen and rejected are identical")
        prompt, chosen, rejected = _split_implicit(chosen, rejected, ctx)
    _check_prompt(prompt, ctx)
    _check_response(prompt, chosen, ctx, "chosen")
    _check_response(prompt, rejected, ctx, "rejected")
    if chosen == rejected:
        raise ctx.error("rejected", "chosen and rejected are identical")
    return PreferenceExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        group=_optional_str(row, "group", ctx),
        annotator=_optional_str(row, "annotator", ctx),
        margin=_margin(row, ctx),
    )


def validate_sft(row: dict, ctx: _RowLocation) -> SFTExample:
    if row.get("messages") is not None and row.get("completion") is None:
        messages = row["messages"]
        if not isinstance(messages, (list, tuple)):
            raise ctx.error("messages", f"expected a list of messages, got {_type_name(messages)}")
        if not messages:
            raise ctx.error("messages", "empty message list")
        messages = _messages(messages, ctx, "messages")
        if messages[-1]["role"] != "assistant":
            raise ctx.error(
                "messages",
                f"the last message must be from the assistant (it is '{messages[-1]['role']}')",
            )
        if len(messages) < 2:
            raise ctx.error("messages", "needs at least one message before the assistant's")
        prompt, completion = messages[:-1], messages[-1:]
        _check_prompt(prompt, ctx, "messages")
        if _is_empty(completion):
            raise ctx.error("messages", "empty response (the final assistant message is empty)")
    else:
        prompt = _text_or_messages(row, "prompt", ctx)
        completion = _text_or_messages(row, "completion", ctx)
        _check_prompt(prompt, ctx)
        _check_response(prompt, completion, ctx, "completion")
    return SFTExample(
        prompt=prompt,
        completion=completion,
        group=_optional_str(row, "group", ctx),
        annotator=_optional_str(row, "annotator", ctx),
    )


_PROMPT_KNOWN = {"prompt", "group", "annotator"}


def validate_prompt(row: dict, ctx: _RowLocation) -> PromptExample:
    prompt = _text_or_messages(row, "prompt", ctx)
    _check_prompt(prompt, ctx)
    return PromptExample(
        prompt=prompt,
        group=_optional_str(row, "group", ctx),
        annotator=_optional_str(row, "annotator", ctx),
        extra={k: v for k, v in row.items() if k not in _PROMPT_KNOWN},
    )


_VALIDATORS = {
    "preference": validate_preference,
    "sft": validate_sft,
    "prompt": validate_prompt,
}


def validate_row(
    row: dict[str, Any], format: str, *, path: str = "<data>", row_number: int = 1
) -> Example:
    """Check one raw row against ``format`` and return its typed record (or raise DataError)."""
    if format not in _VALIDATORS:
        raise UserError(f"unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    return _VALIDATORS[format](row, _RowLocation(path, row_number))


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadResult:
    """What :func:`load_records` found: the records plus everything a report needs."""

    path: str
    format: str
    records: list[Example]
    row_numbers: list[int]
    raw_rows: list[dict[str, Any]]
    num_rows: int
    columns: list[str]
    num_dropped: int = 0
    drop_reasons: list[str] = field(default_factory=list)
    num_duplicates: int = 0
    num_implicit_prompt: int = 0


def _format_mismatch(
    row: dict[str, Any], format: str, detected_at: int | None, path: str, row_number: int
) -> str:
    """Why a row that failed validation may have: it is another format's row.

    '' when the row's own columns say the same format (or none). ``detected_at`` is the row
    the file's format was detected from, None when the caller named the format.
    """
    try:
        found = detect_format(row, path=path, row_number=row_number)
    except DataError:
        return ""
    if found == format:
        return ""
    columns = ", ".join(k for k, v in row.items() if v is not None)
    expected = (
        f", expected {format} rows"
        if detected_at is None
        else f" in a file of {format} rows (the format detected from row {detected_at})"
    )
    article = "an" if found == "sft" else "a"
    return f"; this is {article} {found} row (columns: {columns}){expected}"


def _row_key(row: dict[str, Any]) -> str:
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def load_records(
    path: str | Path,
    format: str | None = None,
    *,
    split: str = "train",
    drop_invalid: bool = False,
) -> LoadResult:
    """Read and validate every row of ``path``.

    ``format`` is "preference", "sft", "prompt", or None/"auto" to detect it from the first
    row's keys. With ``drop_invalid`` bad rows are dropped (counted, with the first few
    reasons kept) instead of raising; a file with no valid row still raises.
    """
    spath = str(path)
    if format in (None, "auto"):
        format = None
    elif format not in FORMATS:
        raise UserError(f"unknown data format '{format}'; expected one of {', '.join(FORMATS)}")
    records: list[Example] = []
    row_numbers: list[int] = []
    raw_rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    seen: set[str] = set()
    detected_at: int | None = None  # the row the format was detected from
    result = LoadResult(spath, format or "", records, row_numbers, raw_rows, 0, [])
    for row_number, row in read_rows(path, split=split):
        result.num_rows += 1
        for key in row:
            columns.setdefault(key, None)
        key = _row_key(row)
        if key in seen:
            result.num_duplicates += 1
        seen.add(key)
        if format is None:
            format = detect_format(row, path=spath, row_number=row_number)
            result.format, detected_at = format, row_number
        try:
            record = validate_row(row, format, path=spath, row_number=row_number)
        except DataError as err:
            mismatch = _format_mismatch(row, format, detected_at, spath, row_number)
            if mismatch:
                err = DataError(err.reason + mismatch, path=spath, row=row_number, field=err.field)
            if not drop_invalid:
                raise err from None
            result.num_dropped += 1
            if len(result.drop_reasons) < MAX_REASONS:
                result.drop_reasons.append(str(err))
            continue
        if isinstance(record, PreferenceExample) and row.get("prompt") is None:
            result.num_implicit_prompt += 1
        record.origin = (spath, row_number)
        records.append(record)
        row_numbers.append(row_number)
        raw_rows.append(row)
    result.columns = list(columns)
    if result.num_rows == 0:
        raise DataError("no rows: the file is empty", path=spath)
    if not records:
        raise DataError(
            f"no valid rows: all {result.num_dropped} were dropped; first: "
            f"{result.drop_reasons[0]}",
            path=spath,
        )
    return result


def load_dataset_records(
    path: str | Path,
    format: str | None = None,
    *,
    split: str = "train",
    drop_invalid: bool = False,
) -> list[Example]:
    """The validated records of ``path``; dropped rows (with ``drop_invalid``) are logged."""
    result = load_records(path, format, split=split, drop_invalid=drop_invalid)
    if result.num_dropped:
        logger.warning(
            "%s: dropped %d of %d rows; first reasons:\n  %s",
            path,
            result.num_dropped,
            result.num_rows,
            "\n  ".join(result.drop_reasons),
        )
    return result.records


def train_eval_split(
    records: Sequence[Example], eval_fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """A deterministic split: the same records, fraction and seed give the same split.

    The eval part has ``round(len * eval_fraction)`` records (at least 1 when the fraction is
    positive and there are 2+ records); both parts keep the records' original order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(records)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in eval_idx]
    evals = [r for i, r in enumerate(records) if i in eval_idx]
    return train, evals
