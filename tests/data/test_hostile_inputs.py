"""Files a user may really hand the readers: odd encodings, a file that is not what its name
says, mixed row types, rows that are not objects, NaN and numbers where text belongs.

Each bad case is one DataError naming the file (and the row and field where there is one);
a file whose encoding its byte-order mark names unambiguously is simply read.
"""

from __future__ import annotations

import codecs
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data.readers import read_rows
from alignkit.data.records import load_records
from alignkit.errors import DataError

PAIR = {"prompt": "Café au lait?", "chosen": "Oui.", "rejected": "Non."}
SFT = {"prompt": "Capital of France?", "completion": "Paris."}


def error_of(path, *, format=None) -> DataError:
    """The DataError that loading ``path`` raises (it must raise one)."""
    with pytest.raises(DataError) as err:
        load_records(path, format)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return err.value


def parquet_bytes(rows) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue().to_pybytes()


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_text_with_a_utf16_or_utf32_byte_order_mark_is_read(tmp_path, encoding):
    bom = {"utf-16": b"", "utf-16-be": codecs.BOM_UTF16_BE, "utf-32": b""}[encoding]
    jsonl = tmp_path / "pairs.jsonl"
    text = json.dumps(PAIR, ensure_ascii=False) + "\n\n" + json.dumps(SFT | PAIR) + "\n"
    jsonl.write_bytes(bom + text.encode(encoding))
    assert [n for n, _ in read_rows(jsonl)] == [1, 3]
    assert next(read_rows(jsonl))[1] == PAIR
    as_json = tmp_path / "pairs.json"
    as_json.write_bytes(bom + json.dumps([PAIR], ensure_ascii=False).encode(encoding))
    assert list(read_rows(as_json)) == [(1, PAIR)]
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(bom + "prompt,chosen,rejected\nCafé au lait?,Oui.,Non.\n".encode(encoding))
    assert list(read_rows(csv)) == [(1, PAIR)]


def test_utf8_byte_order_mark_is_read_in_every_text_format(tmp_path):
    bom = codecs.BOM_UTF8
    (tmp_path / "a.json").write_bytes(bom + json.dumps([PAIR]).encode())
    (tmp_path / "a.csv").write_bytes(
        bom + "prompt,chosen,rejected\nCafé au lait?,Oui.,Non.\n".encode()
    )
    assert list(read_rows(tmp_path / "a.json")) == [(1, PAIR)]
    assert list(read_rows(tmp_path / "a.csv")) == [(1, PAIR)]


def test_utf16_without_a_byte_order_mark_says_so(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps({"prompt": "p", "completion": "c"}).encode("utf-16-le"))
    err = error_of(path)
    assert err.row == 1
    assert "NUL bytes" in err.reason and "UTF-16" in err.reason


def test_latin1_bytes_name_the_line_and_the_byte(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("prompt,completion\nok,fine\ncafé,x\n".encode("latin-1"))
    err = error_of(path)
    assert (err.row, err.field) == (3, None)
    assert "not UTF-8 text: invalid byte 0xe9 at line 3" in err.reason


# ----------------------------------------------------------------------------- mistaken identity


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.json", "pairs.csv"])
def test_a_parquet_file_under_a_text_name_says_it_is_parquet(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(parquet_bytes([PAIR]))
    err = error_of(path)
    assert "is a Parquet file" in err.reason and ".parquet" in err.reason


def test_a_text_file_named_parquet_says_what_it_starts_with(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_text(json.dumps(PAIR) + "\n")
    err = error_of(path)
    assert err.reason.startswith("not a readable Parquet file")
    assert "text" in err.reason and '{"prompt"' in err.reason


@pytest.mark.parametrize(
    ("magic", "suffix"),
    [(gzip.compress(b"{}"), ".gz"), (b"BZh91AY&SY", ".bz2"), (b"\xfd7zXZ\x00\x00", ".xz")],
    ids=["gz", "bz2", "xz"],
)
def test_a_compressed_file_without_its_suffix_says_which_suffix(tmp_path, magic, suffix):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(magic)
    err = error_of(path)
    assert f"pairs.jsonl{suffix}" in err.reason


def test_a_zip_archive_under_a_csv_name_says_it_is_one(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(40))  # what an .xlsx workbook starts with
    assert "zip archive" in error_of(path).reason


@pytest.mark.parametrize(
    "text", [json.dumps([PAIR, PAIR], indent=2), json.dumps([PAIR])], ids=["indented", "one-line"]
)
def test_a_json_list_under_a_jsonl_name_suggests_json(tmp_path, text):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    err = error_of(path)
    assert err.row == 1 and "name it .json" in err.reason


@pytest.mark.parametrize("name", ["e.jsonl", "e.json", "e.csv", "e.parquet"])
def test_an_empty_file_says_it_is_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert error_of(path).reason == "no rows: the file is empty"


def test_a_folder_that_is_not_a_datasets_folder(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(PAIR) + "\n")
    assert "not a `datasets` save_to_disk folder" in error_of(folder).reason


# ----------------------------------------------------------------------------- rows and fields


def write_jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_preference_row_among_sft_rows_names_both_formats(tmp_path):
    path = write_jsonl(tmp_path, [SFT, SFT, PAIR])
    err = error_of(path)
    assert err.row == 3
    assert "a preference row" in err.reason and "sft rows" in err.reason
    assert "detected from row 1" in err.reason


def test_a_file_in_another_format_than_the_trainer_needs_names_both(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": "Q?"}])
    err = error_of(path, format="preference")
    assert err.row == 1
    assert "a prompt row (columns: prompt)" in err.reason
    assert "expected preference rows" in err.reason


def test_a_row_nested_too_deeply_is_one_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(SFT) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    err = error_of(path)
    assert err.row == 2 and "nested too deeply" in err.reason
    as_json = tmp_path / "deep.json"
    as_json.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in error_of(as_json).reason


def test_csv_with_a_repeated_header_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,prompt\na,b,c\n")
    err = error_of(path)
    assert "column 'prompt' appears twice in the header" in err.reason


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (dict(SFT, messages="hi", completion=None), "messages", "got text"),
        (dict(PAIR, chosen=["a", "b"]), "chosen[0]", "got text"),
        (dict(PAIR, prompt=float("nan")), "prompt", "got a number (nan)"),
        (dict(PAIR, prompt=7), "prompt", "got a number (7)"),
        (dict(PAIR, group=3), "group", "expected text, got a number (3)"),
        (dict(PAIR, annotator=True), "annotator", "expected text, got a boolean"),
    ],
)
def test_a_non_text_field_names_row_field_and_type(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path, [PAIR if "chosen" in row else SFT, row])
    err = error_of(path)
    assert (err.row, err.field) == (2, field)
    assert reason in err.reason


def test_nan_prompt_in_parquet_is_a_missing_prompt(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": float("nan"), "completion": "x"}]), path)
    err = error_of(path, format="sft")
    assert (err.row, err.field) == (1, "prompt") and err.reason.startswith("is null")


def test_a_huge_row_is_read_whole(tmp_path):
    huge = dict(SFT, completion="x" * (20 * 1024 * 1024))
    path = write_jsonl(tmp_path, [SFT, huge])
    assert load_records(path).records[1].completion == huge["completion"]


# ----------------------------------------------------------------------------- the CLI

HOSTILE_FILES = {
    "parquet named jsonl": ("pairs.jsonl", lambda: parquet_bytes([PAIR])),
    "gzip without .gz": ("pairs.jsonl", lambda: gzip.compress(json.dumps(PAIR).encode())),
    "empty json": ("pairs.json", lambda: b""),
    "utf-16 without a mark": ("pairs.jsonl", lambda: json.dumps(SFT).encode("utf-16-le")),
    "mixed rows": ("pairs.jsonl", lambda: f"{json.dumps(SFT)}\n{json.dumps(PAIR)}\n".encode()),
    "deep nesting": ("pairs.jsonl", lambda: b"[" * 50_000 + b"]" * 50_000),
    "a string row": ("pairs.jsonl", lambda: f'{json.dumps(SFT)}\n"hello"\n'.encode()),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_data_check_on_a_hostile_file_is_one_line_and_exit_2(tmp_path, capsys, case):
    from alignkit.cli import main

    name, contents = HOSTILE_FILES[case]
    path = tmp_path / name
    path.write_bytes(contents())
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignkit: error: {path}") and err.count("\n") == 1


def sft_argv(data, out, *extra):
    return [
        "sft",
        *("--model", "tiny-random-llama", "--dataset", str(data), "--output-dir", str(out)),
        *("--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1"),
        *("--max-length", "64", "--eval-fraction", "0", "--no-report-to-tensorboard"),
        *extra,
    ]


def folder_contents(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_trainer_on_a_bad_file_exits_2_and_leaves_the_run_folder_as_it_was(tmp_path, capsys):
    from alignkit.cli import main

    data, out = tmp_path / "sft.jsonl", tmp_path / "run"
    data.write_text("".join(json.dumps(dict(SFT, prompt=f"Q{i}?")) + "\n" for i in range(6)))
    assert main(sft_argv(data, out)) == 0
    before = folder_contents(out)
    with data.open("a") as f:
        f.write(json.dumps(PAIR) + "\n")  # a preference row among the SFT rows: line 7
    capsys.readouterr()
    assert main(sft_argv(data, out, "--resume", "--max-steps", "4")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignkit: error: {data}:7: field 'completion'") and err.count("\n") == 1
    assert "this is a preference row" in err
    assert folder_contents(out) == before


def test_an_eval_dataset_in_another_format_names_the_expected_and_the_found(tmp_path, capsys):
    from alignkit.cli import main

    data, prompts = tmp_path / "sft.jsonl", tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(dict(SFT, prompt=f"Q{i}?")) + "\n" for i in range(6)))
    prompts.write_text(json.dumps({"prompt": "Q?"}) + "\n")
    out = tmp_path / "run"
    assert main(sft_argv(data, out, "--eval-dataset", str(prompts))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignkit: error: {prompts}:1: field 'completion': missing field")
    assert "this is a prompt row (columns: prompt), expected sft rows" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- chat templates

NO_SYSTEM_TEMPLATE = (  # what Gemma's and some Mistral templates do with a system message
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def conversation(system: bool) -> dict:
    prompt = [{"role": "user", "content": "Hi?"}]
    if system:
        prompt.insert(0, {"role": "system", "content": "Be brief."})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": "Hello."}]}


def test_a_conversation_the_chat_template_refuses_names_file_and_row(tmp_path):
    from alignkit.data import check_dataset, tokenize_records
    from alignkit.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    path = write_jsonl(tmp_path, [conversation(False), conversation(False), conversation(True)])
    with pytest.raises(DataError) as err:
        check_dataset(path, tokenizer=tokenizer)
    expected = (
        f"{path}:3: the model's chat template refuses this conversation: System role not supported"
    )
    assert str(err.value) == expected
    records = load_records(path).records
    with pytest.raises(DataError) as err:
        tokenize_records(records, tokenizer, 64, 32)
    assert str(err.value) == expected


def test_a_trainer_on_a_conversation_its_template_refuses_exits_2_before_writing(tmp_path, capsys):
    from alignkit.cli import main
    from alignkit.models.tiny import tiny_random_llama

    model, tokenizer = tiny_random_llama()
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = write_jsonl(tmp_path, [conversation(False), conversation(True)])
    out = tmp_path / "run"
    argv = sft_argv(data, out)
    argv[argv.index("tiny-random-llama")] = str(tmp_path / "model")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"alignkit: error: {data}:2: the model's chat template refuses this conversation: "
        "System role not supported\n"
    )
    assert not out.exists()
