import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data.readers import detect_file_type, read_rows
from alignkit.errors import DataError

ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "I can't say."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
]


def test_jsonl_row_numbers_are_line_numbers_counting_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n\n")
    assert list(read_rows(path)) == [(1, ROWS[0]), (4, ROWS[1])]


def test_jsonl_accepts_utf8_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode())
    assert list(read_rows(path)) == [(1, ROWS[0])]


def test_json_list_and_data_key(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(ROWS))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"data": ROWS}))
    assert list(read_rows(a)) == [(1, ROWS[0]), (2, ROWS[1])]
    assert list(read_rows(b)) == [(1, ROWS[0]), (2, ROWS[1])]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    rows = [dict(r, margin=m) for r, m in zip(ROWS, [1.5, None], strict=True)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    got = list(read_rows(path))
    assert got == [(1, rows[0]), (2, rows[1])]


def test_csv_empty_cells_are_none(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected,group\n"Hi, you",Hello.,Go away.,\nQ,A,B,g1\n')
    got = list(read_rows(path))
    assert got == [
        (1, {"prompt": "Hi, you", "chosen": "Hello.", "rejected": "Go away.", "group": None}),
        (2, {"prompt": "Q", "chosen": "A", "rejected": "B", "group": "g1"}),
    ]


def test_saved_dataset_and_dataset_dict_split(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    assert detect_file_type(single) == "datasets"
    assert list(read_rows(single)) == [(1, ROWS[0]), (2, ROWS[1])]

    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[1:])}
    ).save_to_disk(str(dd))
    assert [r for _, r in read_rows(dd)] == ROWS
    assert list(read_rows(dd, split="test")) == [(1, ROWS[1])]
    with pytest.raises(DataError, match=r"no split 'validation'; the folder has test, train"):
        list(read_rows(dd, split="validation"))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(err.value) == f"{path}: file not found"


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"d\.txt: unknown file type '\.txt'"):
        list(read_rows(path))


def test_plain_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a `datasets` save_to_disk folder"):
        list(read_rows(tmp_path))


def test_jsonl_not_utf8_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(err.value).startswith(f"{path}:2: not UTF-8 text: invalid byte 0xe9")
    assert err.value.row == 2


def test_json_and_csv_not_utf8_name_line(tmp_path):
    j = tmp_path / "d.json"
    j.write_bytes(b'[\n{"prompt": "a"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError, match=r"d\.json:3: not UTF-8 text: invalid byte 0xff at line 3"):
        list(read_rows(j))
    c = tmp_path / "d.csv"
    c.write_bytes(b"prompt\nok\n\xff\n")
    with pytest.raises(DataError, match=r"d\.csv:3: not UTF-8 text"):
        list(read_rows(c))


def test_jsonl_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "x",\n')
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(err.value).startswith(f"{path}:2: invalid JSON at column")


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('["a", "b"]\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object per line, got a list"):
        list(read_rows(path))


def test_json_bad_syntax_and_shape(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON at line 3"):
        list(read_rows(bad))
    shape = tmp_path / "shape.json"
    shape.write_text('{"rows": []}')
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        list(read_rows(shape))
    item = tmp_path / "item.json"
    item.write_text('[{"prompt": "a"}, 3]')
    with pytest.raises(DataError, match=r"item\.json:2: expected a JSON object, got a number"):
        list(read_rows(item))


def test_csv_too_many_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,group\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"d\.csv:2: more cells than the 2 header columns"):
        list(read_rows(path))


def test_csv_long_cell(tmp_path):
    path = tmp_path / "d.csv"
    long = "x" * 300_000
    path.write_text(f"prompt,completion\nq,{long}\n")
    assert list(read_rows(path)) == [(1, {"prompt": "q", "completion": long})]


def test_corrupt_parquet_is_a_one_line_data_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all\n\nreally")
    with pytest.raises(DataError) as err:
        list(read_rows(path))
    assert str(err.value).startswith(f"{path}: not a readable Parquet file")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_files_are_read_transparently_with_their_row_numbers(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    path = tmp_path / f"pairs.jsonl{suffix}"
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(ROWS[0]) + "\n\n\n" + json.dumps(ROWS[1]) + "\n")
    assert detect_file_type(path) == "jsonl"
    assert list(read_rows(path)) == [(1, ROWS[0]), (4, ROWS[1])]
    bad = tmp_path / f"bad.jsonl{suffix}"
    with opener(bad, "wt", encoding="utf-8") as f:
        f.write(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r":2: invalid JSON"):
        list(read_rows(bad))


def test_compressed_json_csv_and_parquet(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    assert list(read_rows(tmp_path / "a.json.gz")) == [(1, ROWS[0]), (2, ROWS[1])]
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"prompt,chosen\nQ,A\n"))
    assert list(read_rows(tmp_path / "a.csv.gz")) == [(1, {"prompt": "Q", "chosen": "A"})]
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), buffer)
    (tmp_path / "a.parquet.gz").write_bytes(gzip.compress(buffer.getvalue().to_pybytes()))
    assert [r for _, r in read_rows(tmp_path / "a.parquet.gz")] == ROWS


def test_a_file_that_is_not_what_its_compression_suffix_says_is_one_error(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_text(json.dumps(ROWS[0]) + "\n")  # plain text under a .gz name
    with pytest.raises(DataError, match=r"not a valid \.gz file"):
        list(read_rows(path))
    assert detect_file_type(tmp_path / "pairs.jsonl.gz") == "jsonl"
