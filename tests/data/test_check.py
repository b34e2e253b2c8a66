import json

import pytest
from rich.console import Console

from alignkit.data import check_dataset, render_summary
from alignkit.data.check import percentile
from alignkit.errors import DataError
from alignkit.models.tiny import tiny_tokenizer


def write_jsonl(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    # byte-level tokenizer: text length == token count; responses get one eos
    {"prompt": "ab", "chosen": "x", "rejected": "yy", "group": "concise", "margin": 1.0},
    {"prompt": "abcd", "chosen": "xxx", "rejected": "y", "group": "concise"},
    {"prompt": "abcdef", "chosen": "xxxxx", "rejected": "yyy", "group": "detailed"},
    {"prompt": "abcd", "chosen": "xxx", "rejected": "y", "group": "concise"},  # duplicate
    {"prompt": "a", "chosen": "same", "rejected": "same"},  # invalid
    {"prompt": "abcdefgh", "chosen": "xxxxxxx", "rejected": "yyyyyyyyy"},
]


def test_check_dataset_summary_numbers(tmp_path):
    path = write_jsonl(tmp_path, ROWS)
    s = check_dataset(path, tokenizer=tiny_tokenizer(), drop_invalid=True)
    assert s.format == "preference"
    assert (s.num_rows, s.num_valid, s.num_dropped) == (6, 5, 1)
    assert s.drop_reasons == [f"{path}:5: field 'rejected': chosen and rejected are identical"]
    assert s.columns == ["prompt", "chosen", "rejected", "group", "margin"]
    assert s.groups == {"concise": 3, "(none)": 1, "detailed": 1}
    assert s.num_duplicates == 1
    assert s.num_with_margin == 1 and s.num_conversational == 0
    # prompts 2,4,6,4,8 ; chosen 2,4,6,4,8 ; rejected 3,2,4,2,10 (with eos)
    assert s.token_lengths["prompt"] == {"p50": 4, "p90": 8, "p99": 8, "max": 8}
    assert s.token_lengths["chosen"] == {"p50": 4, "p90": 8, "p99": 8, "max": 8}
    assert s.token_lengths["rejected"] == {"p50": 3, "p90": 10, "p99": 10, "max": 10}


def test_check_dataset_uses_the_same_validation(tmp_path):
    path = write_jsonl(tmp_path, ROWS)
    with pytest.raises(DataError, match=r"d\.jsonl:5: field 'rejected': chosen and rejected"):
        check_dataset(path)


def test_check_dataset_sft_and_prompt_without_tokenizer(tmp_path):
    path = write_jsonl(
        tmp_path,
        [
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"prompt": "q", "completion": "a", "group": "g"},
        ],
    )
    s = check_dataset(path)
    assert s.format == "sft" and s.num_valid == 2 and s.num_conversational == 1
    assert s.token_lengths == {}
    s2 = check_dataset(path, format="sft", tokenizer=tiny_tokenizer())
    assert set(s2.token_lengths) == {"prompt", "completion"}


def test_render_summary_prints_the_numbers(tmp_path):
    path = write_jsonl(tmp_path, ROWS)
    s = check_dataset(path, tokenizer=tiny_tokenizer(), drop_invalid=True)
    console = Console(record=True, width=120)
    render_summary(s, console=console)
    text = console.export_text()
    for needle in ("preference", "concise", "detailed", "p90", "exact duplicates", "dropped"):
        assert needle in text
    assert "chosen and rejected are identical" in text


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 99) == 7
