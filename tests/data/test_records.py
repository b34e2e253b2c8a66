import json
import logging

import pytest

from alignkit.data import (
    PreferenceExample,
    PromptExample,
    SFTExample,
    load_dataset_records,
    load_records,
    train_eval_split,
)
from alignkit.errors import DataError, UserError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load_error(tmp_path, rows, fmt=None) -> str:
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_records(path, fmt)
    return str(err.value).replace(str(path), "FILE")


# ----------------------------------------------------------------------------- formats


def test_preference_text_with_optional_columns(tmp_path):
    path = write_jsonl(
        tmp_path,
        [
            {
                "prompt": "Q?",
                "chosen": "A.",
                "rejected": "No.",
                "group": "concise",
                "annotator": "ann1",
                "margin": 2,
                "note": "ignored",
            }
        ],
    )
    result = load_records(path)
    assert result.format == "preference"
    assert result.records == [
        PreferenceExample("Q?", "A.", "No.", group="concise", annotator="ann1", margin=2.0)
    ]
    assert result.columns == [
        "prompt",
        "chosen",
        "rejected",
        "group",
        "annotator",
        "margin",
        "note",
    ]


def test_preference_conversational(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Q?")],
        "chosen": [assistant("A.")],
        "rejected": [assistant("Hmm.")],
    }
    (rec,) = load_dataset_records(write_jsonl(tmp_path, [row]))
    assert rec.prompt == row["prompt"] and rec.chosen == row["chosen"]
    assert rec.conversational and rec.group is None and rec.margin is None


def test_preference_implicit_prompt(tmp_path):
    row = {
        "chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4.")],
        "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5.")],
    }
    result = load_records(write_jsonl(tmp_path, [row]))
    (rec,) = result.records
    assert result.format == "preference" and result.num_implicit_prompt == 1
    assert rec.prompt == [user("Hi"), assistant("Hello!"), user("2+2?")]
    assert rec.chosen == [assistant("4.")] and rec.rejected == [assistant("5.")]


def test_implicit_prompt_never_ends_with_shared_assistant_turn(tmp_path):
    row = {
        "chosen": [user("Hi"), assistant("Hello!"), user("A")],
        "rejected": [user("Hi"), assistant("Hello!"), user("B")],
    }
    # diverging at a user turn: the shared assistant turn goes into both responses
    (rec,) = load_dataset_records(write_jsonl(tmp_path, [row]), "preference")
    assert rec.prompt == [user("Hi")]
    assert rec.chosen == [assistant("Hello!"), user("A")]


def test_sft_prompt_completion_text_and_conversational(tmp_path):
    path = write_jsonl(
        tmp_path,
        [
            {"prompt": "Q?", "completion": "A.", "group": "g"},
            {"prompt": [user("Q?")], "completion": [assistant("A.")]},
        ],
    )
    result = load_records(path)
    assert result.format == "sft"
    assert result.records == [
        SFTExample("Q?", "A.", group="g"),
        SFTExample([user("Q?")], [assistant("A.")]),
    ]


def test_sft_messages_final_assistant_is_completion(tmp_path):
    msgs = [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4.")]
    (rec,) = load_dataset_records(write_jsonl(tmp_path, [{"messages": msgs, "group": "x"}]))
    assert rec == SFTExample(msgs[:3], msgs[3:], group="x")


def test_prompt_only_keeps_extra_columns(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": [user("2+2?")], "group": "g", "answer": "4"}])
    result = load_records(path)
    assert result.format == "prompt"
    assert result.records == [PromptExample([user("2+2?")], group="g", extra={"answer": "4"})]


def test_explicit_prompt_format_reads_prompts_of_preference_rows(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": "Q?", "chosen": "A", "rejected": "B"}])
    (rec,) = load_dataset_records(path, "prompt")
    assert isinstance(rec, PromptExample) and rec.prompt == "Q?"


def test_csv_margin_is_parsed_and_other_readers_validate_the_same(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,rejected,margin,group\nQ,A,B,0.5,\n")
    (rec,) = load_dataset_records(path)
    assert rec == PreferenceExample("Q", "A", "B", margin=0.5)


def test_unknown_format_name_is_a_user_error(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": "Q"}])
    with pytest.raises(UserError, match="unknown data format 'dpo'"):
        load_records(path, "dpo")


# ----------------------------------------------------------------------------- errors


def test_error_unknown_format(tmp_path):
    msg = load_error(tmp_path, [{"question": "Q", "answer": "A"}])
    assert msg.startswith("FILE:1: unknown format: columns (answer, question) match no format")


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        ("preference", {"prompt": "Q", "chosen": "A"}, "FILE:2: field 'rejected': missing field"),
        (
            "preference",
            {"chosen": "A", "rejected": "B"},
            "FILE:2: field 'prompt': missing field (without a prompt",
        ),
        ("sft", {"prompt": "Q"}, "FILE:2: field 'completion': missing field"),
        ("prompt", {"text": "Q"}, "FILE:2: field 'prompt': missing field"),
    ],
)
def test_error_missing_field(tmp_path, fmt, row, expected):
    good = {
        "preference": {"prompt": "Q", "chosen": "A", "rejected": "B"},
        "sft": {"prompt": "Q", "completion": "A"},
        "prompt": {"prompt": "Q"},
    }[fmt]
    assert load_error(tmp_path, [good, row], fmt).startswith(expected)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"prompt": "Q", "chosen": 42, "rejected": "B"},
            "FILE:1: field 'chosen': expected text or a list of messages, got a number (42)",
        ),
        (
            {"prompt": [user("Q")], "chosen": [{"content": "A"}], "rejected": [assistant("B")]},
            "FILE:1: field 'chosen[0]': message has no 'role'",
        ),
        (
            {
                "prompt": [{"role": "user"}],
                "chosen": [assistant("A")],
                "rejected": [assistant("B")],
            },
            "FILE:1: field 'prompt[0]': message has no 'content'",
        ),
        (
            {"prompt": [user("Q")], "chosen": ["A"], "rejected": [assistant("B")]},
            "FILE:1: field 'chosen[0]': expected a message",
        ),
        (
            {"prompt": [user("Q")], "chosen": [assistant(3)], "rejected": [assistant("B")]},
            "FILE:1: field 'chosen[0]': 'content' must be a string, got a number (3)",
        ),
        (
            {"prompt": "Q", "chosen": [assistant("A")], "rejected": "B"},
            "FILE:1: field 'chosen': is a message list but the prompt is text",
        ),
        (
            {"prompt": [user("Q")], "chosen": [user("A")], "rejected": [assistant("B")]},
            "FILE:1: field 'chosen': a response must start with an assistant message, not 'user'",
        ),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "group": 3},
            "FILE:1: field 'group': expected text, got a number (3)",
        ),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "margin": "big"},
            "FILE:1: field 'margin': expected a number, got text 'big'",
        ),
        (
            {"prompt": "Q", "chosen": "A", "rejected": "B", "margin": True},
            "FILE:1: field 'margin': expected a number, got a boolean",
        ),
    ],
)
def test_error_wrong_type(tmp_path, row, expected):
    assert load_error(tmp_path, [row], "preference").startswith(expected)


def test_error_empty_response_and_prompt(tmp_path):
    assert (
        load_error(tmp_path, [{"prompt": "Q", "chosen": "  ", "rejected": "B"}])
        == "FILE:1: field 'chosen': empty response"
    )
    assert (
        load_error(tmp_path, [{"prompt": [user("Q")], "completion": [assistant("")]}])
        == "FILE:1: field 'completion': empty response"
    )
    assert (
        load_error(tmp_path, [{"messages": [user("Q"), assistant(" ")]}])
        == "FILE:1: field 'messages': empty response (the final assistant message is empty)"
    )
    assert (
        load_error(tmp_path, [{"prompt": ""}], "prompt") == "FILE:1: field 'prompt': empty prompt"
    )


def test_error_chosen_identical_to_rejected(tmp_path):
    expected = "FILE:1: field 'rejected': chosen and rejected are identical"
    assert load_error(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": "A"}]) == expected
    conv = [user("Q"), assistant("A")]
    assert load_error(tmp_path, [{"chosen": conv, "rejected": conv}]) == expected


def test_error_messages_must_end_with_assistant(tmp_path):
    msg = load_error(tmp_path, [{"messages": [user("Q"), assistant("A"), user("more")]}])
    assert msg == (
        "FILE:1: field 'messages': the last message must be from the assistant (it is 'user')"
    )


def test_error_prompt_ending_with_assistant(tmp_path):
    row = {"prompt": [user("Q"), assistant("A")], "completion": [assistant("B")]}
    assert load_error(tmp_path, [row]).startswith(
        "FILE:1: field 'prompt': the prompt's last message is from the assistant"
    )


def test_error_row_number_is_the_jsonl_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"})
    path.write_text(f"{good}\n\n{good}\n" + json.dumps({"prompt": "Q", "chosen": "A"}) + "\n")
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == f"{path}:4: field 'rejected': missing field"
    assert (err.value.row, err.value.field) == (4, "rejected")


def test_error_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="no rows: the file is empty"):
        load_records(path)


# ----------------------------------------------------------------------------- drop_invalid


def test_drop_invalid_counts_and_reasons(tmp_path, caplog):
    rows = [
        {"prompt": "Q1", "chosen": "A", "rejected": "B"},
        {"prompt": "Q2", "chosen": "A", "rejected": "A"},
        {"prompt": "Q3", "chosen": "", "rejected": "B"},
        {"prompt": "Q4", "chosen": "A", "rejected": "B", "margin": "x"},
        {"prompt": "Q5", "chosen": "A", "rejected": "B"},
    ]
    path = write_jsonl(tmp_path, rows)
    result = load_records(path, drop_invalid=True)
    assert [r.prompt for r in result.records] == ["Q1", "Q5"]
    assert result.row_numbers == [1, 5]
    assert result.num_rows == 5 and result.num_dropped == 3
    assert result.drop_reasons == [
        f"{path}:2: field 'rejected': chosen and rejected are identical",
        f"{path}:3: field 'chosen': empty response",
        f"{path}:4: field 'margin': expected a number, got text 'x'",
    ]
    with caplog.at_level(logging.WARNING):
        records = load_dataset_records(path, drop_invalid=True)
    assert len(records) == 2
    assert "dropped 3 of 5 rows" in caplog.text


def test_drop_invalid_keeps_only_first_reasons(tmp_path):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B"}]
    rows += [{"prompt": f"Q{i}", "chosen": "A", "rejected": "A"} for i in range(9)]
    result = load_records(write_jsonl(tmp_path, rows), drop_invalid=True)
    assert result.num_dropped == 9 and len(result.drop_reasons) == 5


def test_drop_invalid_with_no_valid_row_raises(tmp_path):
    msg = load_error_drop(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": "A"}])
    assert msg.startswith(
        "FILE: no valid rows: all 1 were dropped; first: FILE:1: field 'rejected'"
    )


def load_error_drop(tmp_path, rows):
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_records(path, drop_invalid=True)
    return str(err.value).replace(str(path), "FILE")


def test_duplicates_counted(tmp_path):
    row = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    result = load_records(write_jsonl(tmp_path, [row, row, dict(row, prompt="R"), row]))
    assert result.num_duplicates == 2


# ----------------------------------------------------------------------------- split


def test_train_eval_split_is_deterministic_and_disjoint():
    records = [PromptExample(f"p{i}") for i in range(50)]
    train, evals = train_eval_split(records, 0.2, seed=3)
    assert len(evals) == 10 and len(train) == 40
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in evals})
    again = train_eval_split(records, 0.2, seed=3)
    assert again == (train, evals)
    assert train_eval_split(records, 0.2, seed=4)[1] != evals
    # original order is kept inside each part
    assert [r.prompt for r in train] == sorted((r.prompt for r in train), key=lambda p: int(p[1:]))


def test_train_eval_split_edges():
    records = [PromptExample(f"p{i}") for i in range(3)]
    assert train_eval_split(records, 0.0) == (records, [])
    train, evals = train_eval_split(records, 0.01)
    assert len(evals) == 1 and len(train) == 2
    with pytest.raises(UserError):
        train_eval_split(records, 1.0)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "Q", "chosen": "A"}, "FILE:1: field 'rejected': missing field"),
        ({"rejected": "B"}, "FILE:1: field 'chosen': missing field"),
        ({"completion": "A"}, "FILE:1: field 'prompt': missing field"),
    ],
)
def test_auto_detection_reports_the_missing_field(tmp_path, row, expected):
    assert load_error(tmp_path, [row]) == expected


def test_parquet_and_saved_dataset_conversational_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "prompt": [user("Q?")],
            "chosen": [assistant("A.")],
            "rejected": [assistant("No.")],
            "group": "g",
            "margin": None,
        },
        {
            "prompt": [user("R?")],
            "chosen": [assistant("B.")],
            "rejected": [assistant("Nope.")],
            "group": None,
            "margin": 0.5,
        },
    ]
    expected = [
        PreferenceExample([user("Q?")], [assistant("A.")], [assistant("No.")], group="g"),
        PreferenceExample([user("R?")], [assistant("B.")], [assistant("Nope.")], margin=0.5),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert load_dataset_records(tmp_path / "d.parquet") == expected
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "ds")
    )
    assert load_dataset_records(tmp_path / "ds", split="test") == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "chosen": None, "rejected": "B"}, "field 'chosen': is null"),
        ({"prompt": None, "chosen": "A", "rejected": "B"}, "field 'prompt': is null"),
        ({"prompt": [{"role": "user", "content": None}], "chosen": "A", "rejected": "B"},
         "is null"),
    ],
)  # fmt: skip
def test_a_null_field_is_called_null_not_missing(row, message):
    from alignkit.data.records import validate_row

    with pytest.raises(DataError, match=message):
        validate_row(row, "preference", path="FILE", row_number=1)


def test_a_role_no_chat_template_knows_is_one_clear_error():
    from alignkit.data.records import validate_row

    row = {"prompt": [{"role": "wizard", "content": "Q"}], "chosen": "A", "rejected": "B"}
    with pytest.raises(DataError, match=r"FILE:3: field 'prompt\[0\]': unknown role 'wizard'"):
        validate_row(row, "preference", path="FILE", row_number=3)
    for role in ("system", "user", "assistant", "tool"):
        messages = [{"role": role, "content": "x"}, {"role": "user", "content": "Q"}]
        completion = [{"role": "assistant", "content": "A"}]
        validate_row({"prompt": messages, "completion": completion}, "sft", path="F", row_number=1)
