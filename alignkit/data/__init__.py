"""Reading, validating and tokenizing preference, SFT and prompt-only data."""

from alignkit.data.check import DataSummary, check_dataset, render_summary
from alignkit.data.demo import demo_path
from alignkit.data.readers import detect_file_type, read_rows
from alignkit.data.records import (
    FORMATS,
    Example,
    LoadResult,
    PreferenceExample,
    PromptExample,
    SFTExample,
    detect_format,
    load_dataset_records,
    load_records,
    train_eval_split,
    validate_row,
)
from alignkit.data.tokenization import (
    IGNORE_INDEX,
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    encode_pair,
    pack_sequences,
    render_prompt,
    tokenize_preference,
    tokenize_prompt,
    tokenize_records,
    tokenize_sft,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DataSummary",
    "Example",
    "LoadResult",
    "PreferenceCollator",
    "PreferenceExample",
    "PromptCollator",
    "PromptExample",
    "SFTCollator",
    "SFTExample",
    "check_dataset",
    "demo_path",
    "detect_file_type",
    "detect_format",
    "encode_pair",
    "load_dataset_records",
    "load_records",
    "pack_sequences",
    "read_rows",
    "render_prompt",
    "render_summary",
    "tokenize_preference",
    "tokenize_prompt",
    "tokenize_records",
    "tokenize_sft",
    "train_eval_split",
    "validate_row",
]
