"""Readers for data files: each yields ``(row_number, row_dict)``.

``row_number`` is the 1-based line number for JSONL (blank lines count, so it matches an
editor) and the 1-based record index for JSON, Parquet, CSV and ``datasets`` folders.
Syntax problems in a whole-file format (JSON, CSV) that happen before records exist are
reported with the line number of the problem as the row and say "line" in the message.

A file may be compressed (``pairs.jsonl.gz``, ``.bz2``, ``.xz``; ``.zst`` with the
``zstandard`` package): it is decompressed as it is read, and row numbers count in the
decompressed text.

Text is UTF-8 (a UTF-8 byte-order mark is skipped); a file that starts with a UTF-16 or
UTF-32 byte-order mark (what Windows tools such as PowerShell's ``>`` write) is read in that
encoding, since the mark names it unambiguously. Before a file is parsed its first bytes are
checked against what its name says, so that a Parquet file named ``.jsonl``, a gzip file
without ``.gz``, a zip archive (an ``.xlsx`` workbook) named ``.csv`` or an empty file is one
line saying so, not a parser's complaint about byte 0x90.

Every problem is raised as a :class:`~alignkit.errors.DataError` naming the file.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import lzma
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from alignkit.errors import DataError

Row = tuple[int, dict[str, Any]]

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}


KIND_NAMES = {"jsonl": "JSON lines", "json": "JSON", "parquet": "Parquet", "csv": "CSV"}

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
COMPRESSION_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
# what a file's first bytes say it is, whatever its name
_MAGIC_BYTES = (
    (b"PAR1", "parquet"),
    (b"\x1f\x8b", ".gz"),
    (b"\xfd7zXZ\x00", ".xz"),
    (b"\x28\xb5\x2f\xfd", ".zst"),
    (b"PK\x03\x04", "zip"),
)
# byte-order marks of the encodings read besides UTF-8 (UTF-32 LE first: it starts like UTF-16 LE)
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_HEAD_BYTES = 8
# what a decompressor raises on data that is not what the suffix says
_BAD_STREAM = (OSError, EOFError, lzma.LZMAError)


def _compression(path: str | Path) -> str | None:
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def _open_binary(path: str | Path) -> IO[bytes]:
    """The file's bytes, decompressed by its suffix."""
    compression = _compression(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(
                "reading .zst needs the zstandard package: pip install zstandard", path=str(path)
            ) from None
        return zstandard.open(path, "rb")
    return open(path, "rb")


@contextlib.contextmanager
def _decompression_errors(path: str | Path) -> Iterator[None]:
    """A stream that does not decompress is one DataError naming the file."""
    try:
        yield
    except _BAD_STREAM as err:
        compression = _compression(path)
        if compression is None:
            raise DataError(
                f"cannot read file: {getattr(err, 'strerror', err)}", path=str(path)
            ) from None
        raise DataError(
            f"not a valid {compression} file: {_one_line(err)}", path=str(path)
        ) from None


def detect_file_type(path: str | Path) -> str:
    """'jsonl', 'json', 'parquet', 'csv' or 'datasets' (a save_to_disk folder)."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(path))
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "datasets"
        raise DataError(
            "is a folder but not a `datasets` save_to_disk folder "
            "(no dataset_dict.json or state.json in it)",
            path=str(path),
        )
    data_suffix = Path(p.stem).suffix if _compression(p) else p.suffix
    kind = EXTENSIONS.get(data_suffix.lower())
    if kind is None:
        raise DataError(
            f"unknown file type '{data_suffix or '(no extension)'}'; expected .jsonl, .json, "
            ".parquet, .csv (each may be compressed: .gz, .bz2, .xz, .zst) or a `datasets` "
            "save_to_disk folder",
            path=str(path),
        )
    return kind


def _magic_kind(head: bytes) -> str | None:
    """'parquet', a compression suffix or 'zip' from a file's first bytes; None for anything else."""
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return ".bz2"
    return next((kind for magic, kind in _MAGIC_BYTES if head.startswith(magic)), None)


def _raw_head(path: str | Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_HEAD_BYTES)


def _head(path: str | Path) -> bytes:
    """The first bytes of the file's (decompressed) contents."""
    with _decompression_errors(path), _open_binary(path) as handle:
        return handle.read(_HEAD_BYTES)


def _check_contents_match_name(path: str | Path, kind: str) -> None:
    """Raise a DataError when the file's first bytes contradict its name (or it is empty)."""
    p, spath = Path(path), str(path)
    raw = _raw_head(p)
    if not raw:
        raise DataError("no rows: the file is empty", path=spath)
    found = _magic_kind(raw)
    if _compression(p) is None and found in COMPRESSIONS:
        raise DataError(
            f"is {COMPRESSION_NAMES[found]}-compressed but its name does not say so: rename it to {p.name}{found}",
            path=spath,
        )
    if found == "zip":
        raise DataError(
            f"is a zip archive (an .xlsx workbook, or zipped files), not {KIND_NAMES[kind]}: "
            "export the sheet as CSV, or unzip it",
            path=spath,
        )
    head = _head(p) if _compression(p) else raw
    if not head:
        raise DataError("no rows: the file is empty", path=spath)
    if kind != "parquet" and _magic_kind(head) == "parquet":
        raise DataError(f"is a Parquet file, not {KIND_NAMES[kind]}: name it .parquet", path=spath)


def read_rows(path: str | Path, *, split: str = "train") -> Iterator[Row]:
    """Yield ``(row_number, dict)`` for every record of ``path``, whatever its type."""
    kind = detect_file_type(path)
    if kind != "datasets":
        _check_contents_match_name(path, kind)
    reader = {
        "jsonl": read_jsonl,
        "json": read_json,
        "parquet": read_parquet,
        "csv": read_csv,
    }.get(kind)
    if reader is not None:
        yield from reader(path)
    else:
        yield from read_saved_dataset(path, split=split)


def _wide_encoding(head: bytes) -> str | None:
    """'utf-16' or 'utf-32' when ``head`` starts with that encoding's byte-order mark."""
    return next((enc for bom, enc in _WIDE_BOMS if head.startswith(bom)), None)


def _decode(data: bytes, path: str, row: int | None = None) -> str:
    """Text from a whole file (``row`` None) or from one JSONL line (its 1-based ``row``)."""
    encoding = _wide_encoding(data) if row in (None, 1) else None
    if encoding is not None:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as err:
            raise DataError(
                f"not valid {encoding.upper()} text (it starts with a {encoding.upper()} "
                f"byte-order mark): {err.reason} at byte {err.start}",
                path=path,
            ) from None
    if b"\x00" in data:
        line = row if row is not None else data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise DataError(
            f"contains NUL bytes{'' if row is not None else f' at line {line}'}: UTF-16 text "
            "without a byte-order mark, or not a text file? (save the file as UTF-8)",
            path=path,
            row=line,
        )
    try:
        return data.decode("utf-8-sig" if row in (None, 1) else "utf-8")
    except UnicodeDecodeError as err:
        if row is None:
            line = data.count(b"\n", 0, err.start) + 1
            raise DataError(
                f"not UTF-8 text: invalid byte 0x{data[err.start]:02x} at line {line} "
                "(save the file as UTF-8)",
                path=path,
                row=line,
            ) from None
        raise DataError(
            f"not UTF-8 text: invalid byte 0x{data[err.start]:02x} (save the file as UTF-8)",
            path=path,
            row=row,
        ) from None


def _read_bytes(path: str | Path) -> bytes:
    with _decompression_errors(path), _open_binary(path) as handle:
        return handle.read()


def _jsonl_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for every line: streamed for UTF-8, whole for UTF-16/32."""
    spath = str(path)
    if _wide_encoding(_head(path)) is not None:
        yield from enumerate(_decode(_read_bytes(path), spath).split("\n"), start=1)
        return
    with _decompression_errors(path):
        handle = _open_binary(path)
    with handle, _decompression_errors(path):
        for line_no, raw in enumerate(handle, start=1):
            yield line_no, _decode(raw, spath, line_no)


JSON_LIST_HINT = " (is this a JSON file? name it .json)"


def _load_json(text: str, path: str, row: int | None) -> Any:
    """``json.loads``; nesting deeper than Python's recursion limit is a DataError too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(
            "nested too deeply to read (lists or objects more than ~1000 levels deep)",
            path=path,
            row=row,
        ) from None


def read_jsonl(path: str | Path) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped but counted."""
    spath = str(path)
    first = True
    for line_no, line in _jsonl_lines(path):
        text = line.strip()
        if not text:
            continue
        # a JSON list where the first object should be: the file is JSON, named .jsonl
        hint = JSON_LIST_HINT if first and text.startswith("[") else ""
        first = False
        try:
            obj = _load_json(text, spath, line_no)
        except json.JSONDecodeError as err:
            raise DataError(
                f"invalid JSON at column {err.colno}: {err.msg}{hint}", path=spath, row=line_no
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"expected a JSON object per line, got {_json_type(obj)}{hint}",
                path=spath,
                row=line_no,
            )
        yield line_no, obj


def read_json(path: str | Path) -> Iterator[Row]:
    """A JSON list of objects, or an object whose "data" key holds that list."""
    spath = str(path)
    text = _decode(_read_bytes(path), spath)
    try:
        obj = _load_json(text, spath, None)
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
            + (" (is this a JSONL file? name it .jsonl)" if err.msg == "Extra data" else ""),
            path=spath,
            row=err.lineno,
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(
            f'expected a JSON list of objects or {{"data": [...]}}, got {_json_type(obj)}',
            path=spath,
        )
    for i, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object, got {_json_type(item)}", path=spath, row=i)
        yield i, item


def read_csv(path: str | Path) -> Iterator[Row]:
    """A CSV file with a header line; every value is text, empty cells become None."""
    spath = str(path)
    text = _decode(_read_bytes(path), spath)
    # long responses exceed csv's default 128 KiB cell limit
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames:
            return
        repeated = next((c for c in reader.fieldnames if reader.fieldnames.count(c) > 1), None)
        if repeated is not None:
            raise DataError(f"column '{repeated}' appears twice in the header line", path=spath)
        for i, rec in enumerate(reader, start=1):
            if None in rec:
                raise DataError(
                    f"more cells than the {len(reader.fieldnames)} header columns",
                    path=spath,
                    row=i,
                )
            yield i, {k: (v if v != "" else None) for k, v in rec.items()}
    except csv.Error as err:
        raise DataError(
            f"invalid CSV at line {reader.line_num}: {err}", path=spath, row=reader.line_num
        ) from None


def read_parquet(path: str | Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spath = str(path)
    source = pa.BufferReader(_read_bytes(path)) if _compression(path) else path
    try:
        pfile = pq.ParquetFile(source)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise DataError(
            f"not a readable Parquet file: {_what_it_holds(path) or _one_line(err)}", path=spath
        ) from None
    i = 0
    for batch in pfile.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            i += 1
            yield i, _clean_nan(rec)


def read_saved_dataset(path: str | Path, *, split: str = "train") -> Iterator[Row]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    import datasets

    spath = str(path)
    try:
        ds = datasets.load_from_disk(spath)
    except Exception as err:
        raise DataError(
            f"cannot load the `datasets` folder: {_one_line(err)}", path=spath
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"no split '{split}'; the folder has {', '.join(sorted(ds)) or 'no splits'}",
                path=spath,
            )
        ds = ds[split]
    for i, rec in enumerate(ds, start=1):
        yield i, _clean_nan(dict(rec))


def _what_it_holds(path: str | Path) -> str | None:
    """For a file named .parquet that holds text: what it starts with, and what to do."""
    with _decompression_errors(path), _open_binary(path) as handle:
        head = handle.read(40)
    try:  # the incremental decoder accepts a character cut at the end of the 40 bytes
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    snippet = " ".join(text.split())[:24]
    if not snippet.isprintable():
        return None
    return (
        f"it holds text ({snippet!r}...), not Parquet's binary format; name it by what it "
        "holds (.jsonl, .json or .csv)"
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _clean_nan(rec: dict[str, Any]) -> dict[str, Any]:
    """Columnar formats write missing floats as NaN: treat those as missing."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def _json_type(obj: Any) -> str:
    if obj is None:
        return "null"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(obj), type(obj).__name__)
