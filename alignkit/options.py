"""Configuration: dataclasses with a help string per field, loaded from YAML then the command line.

A config class is a plain dataclass whose fields carry metadata::

    @dataclass
    class MyConfig:
        lr: float = option(1e-5, "Peak learning rate.", gt=0)
        scheduler: Literal["cosine", "linear"] = option("cosine", "Learning-rate schedule.")
        targets: list[str] = option(["q_proj"], "Modules to adapt.")

``option(default, help, min=, max=, gt=, lt=)`` is ``dataclasses.field`` with that metadata
(a plain ``field(metadata={"help": ..., "min": 0})`` works the same). Supported field types:
``int``, ``float``, ``str``, ``bool``, ``Optional[...]`` / ``X | None``, ``Literal[...]``,
``list[...]`` of those, and ``dict[str, Any]`` for a nested section that its own builder
validates (on the command line in YAML flow style: ``--guard '{policy: rollback}'``).

Precedence: field default < YAML file < command line. Every mistake (unknown key, wrong type,
out-of-range value) is one :class:`~alignkit.errors.UserError` naming the key and where it came
from. Cross-field checks go in a ``validate(self)`` method on the config class, which raises
``ConfigValueError(key, message)`` (the loader adds the source) or a ``UserError``.

Command line: ``--key value``, ``--key=value``, dashes or underscores (``--max-steps``), booleans
as ``--flag`` / ``--no-flag`` / ``--flag false``, ``Optional`` fields accept ``none``, lists as
``a,b,c`` or ``[a, b]``. ``--config PATH`` names the YAML file.

Entry points: :func:`parse_config` (argv -> config, printing ``--help``), :func:`load_config`,
:func:`build_arg_parser`, :func:`config_to_dict`, :func:`save_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from alignkit.errors import UserError

C = TypeVar("C")

__all__ = [
    "ConfigValueError",
    "build_arg_parser",
    "config_to_dict",
    "load_config",
    "option",
    "parse_config",
    "parse_overrides",
    "save_config",
]

_MISSING = dataclasses.MISSING
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
_NONE = {"none", "null", "~"}
CLI = "command line"


class ConfigValueError(ValueError):
    """Raised by a config's ``validate()`` hook: ``key`` is the offending field."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a help string and optional bounds (min/max inclusive, gt/lt strict).

    Mutable defaults (lists) are copied per instance.
    """
    metadata: dict[str, Any] = {"help": help}
    for name, bound in (("min", min), ("max", max), ("gt", gt), ("lt", lt)):
        if bound is not None:
            metadata[name] = bound
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------- types and coercion


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (field, resolved type annotation)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return True, inner
    return False, tp


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or none"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, Sequence, tuple):
        (arg, *_) = typing.get_args(tp) or (str,)
        return f"a list of {_type_name(arg)}"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _DoesNotFit(Exception):
    """Internal: a value does not fit the type."""


def _coerce(value: Any, tp: Any, from_text: bool) -> Any:
    """Convert ``value`` (a YAML value, or a string when ``from_text``) to the type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return _coerce(value, inner, from_text)
    if value is None:
        raise _DoesNotFit
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise _DoesNotFit
    if origin in (list, Sequence, tuple):
        (arg, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    raise _DoesNotFit from e
                from_text = False
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise _DoesNotFit
        return [_coerce(v, arg, from_text) for v in value]
    if origin in (dict, Mapping) or tp is dict:
        # A nested section (e.g. `reward:` or `guard:`), checked by its own builder; on the
        # command line it is written in YAML/JSON flow style: --guard '{policy: rollback}'.
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise _DoesNotFit from e
        if not isinstance(value, Mapping):
            raise _DoesNotFit
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _DoesNotFit
    if tp is int:
        if isinstance(value, bool):
            raise _DoesNotFit
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError as e:
                    raise _DoesNotFit from e
                if as_float.is_integer():
                    return int(as_float)
        raise _DoesNotFit
    if tp is float:
        if isinstance(value, bool):
            raise _DoesNotFit
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError as e:
                raise _DoesNotFit from e
        raise _DoesNotFit
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _DoesNotFit
    raise TypeError(f"unsupported config field type {tp!r}")


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    """The reason ``value`` is out of the field's declared range, or None."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if "min" in meta and v < meta["min"]:
            return f"must be >= {meta['min']}, got {v}"
        if "max" in meta and v > meta["max"]:
            return f"must be <= {meta['max']}, got {v}"
        if "gt" in meta and v <= meta["gt"]:
            return f"must be > {meta['gt']}, got {v}"
        if "lt" in meta and v >= meta["lt"]:
            return f"must be < {meta['lt']}, got {v}"
    return None


def _key_label(key: str, source: str) -> str:
    return f"--{key}" if source == CLI else f"'{key}'"


def _unknown(key: str, names: Sequence[str], source: str) -> UserError:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    hint = f" (did you mean {_key_label(close[0], source)}?)" if close else ""
    return UserError(f"{source}: unknown option {_key_label(key, source)}{hint}")


# ---------------------------------------------------------------- loading


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def parse_overrides(cls: type, argv: Sequence[str]) -> tuple[str | None, dict[str, str | bool]]:
    """Split command-line tokens into (``--config`` path or None, {field name: raw value}).

    Raw values are strings (or ``True``/``False`` for bare ``--flag`` / ``--no-flag``); they are
    coerced by :func:`load_config`. Unknown options raise a UserError with a suggestion.
    """
    fields = _fields(cls)
    config_path: str | None = None
    raw: dict[str, str | bool] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise UserError(f"{CLI}: unexpected argument {token!r} (options look like --key value)")
        name, eq, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        value: str | bool | None = inline if eq else None
        if key == "config":
            if value is None:
                if i + 1 >= len(tokens):
                    raise UserError(f"{CLI}: --config needs a path")
                i += 1
                value = tokens[i]
            config_path = str(value)
            i += 1
            continue
        negated = False
        if key not in fields and key.startswith("no_") and key[3:] in fields:
            key, negated = key[3:], True
        if key not in fields:
            raise _unknown(key, [*fields, "config"], CLI)
        _, tp = fields[key]
        is_bool = _is_optional(tp)[1] is bool
        if negated:
            if not is_bool or eq:
                raise UserError(
                    f"{CLI}: --no-{key.replace('_', '-')} only works for on/off options"
                )
            value = False
        elif value is None:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if is_bool and (following is None or following.lower() not in _TRUE | _FALSE):
                value = True
            elif following is None or (following.startswith("--") and len(following) > 2):
                raise UserError(f"{CLI}: --{key} needs a value ({_type_name(tp)})")
            else:
                i += 1
                value = following
        raw[key] = value
        i += 1
    return config_path, raw


def load_config(
    cls: type[C],
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    source: str = CLI,
) -> C:
    """Build a validated ``cls`` from defaults, then the YAML file, then the overrides.

    ``overrides`` is either command-line tokens (``["--lr", "1e-4"]``) or a mapping
    ({key: raw string or value}) that came from `source` (the command line unless said).
    Raises one UserError for the first problem.
    """
    fields = _fields(cls)
    values: dict[str, Any] = {}
    source_of: dict[str, str] = {}

    def put(key: str, value: Any, source: str, from_text: bool) -> None:
        norm = key.replace("-", "_") if isinstance(key, str) else key
        if norm not in fields:
            raise _unknown(str(key), list(fields), source)
        field, tp = fields[norm]
        try:
            coerced = _coerce(value, tp, from_text)
        except _DoesNotFit:
            shown = value if not isinstance(value, str) else repr(value)
            raise UserError(
                f"{source}: {_key_label(norm, source)}: expected {_type_name(tp)}, got {shown}"
            ) from None
        reason = _check_range(norm, coerced, field.metadata)
        if reason:
            raise UserError(f"{source}: {_key_label(norm, source)} {reason}")
        values[norm] = coerced
        source_of[norm] = source

    if yaml_path is not None:
        for key, value in _read_yaml(yaml_path).items():
            put(str(key), value, str(yaml_path), from_text=False)
    if overrides:
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        else:
            path, raw = parse_overrides(cls, overrides)
            if path is not None:
                raise UserError(f"{CLI}: --config must be given to parse_config, not as override")
            items = list(raw.items())
        for key, value in items:
            put(key, value, source, from_text=isinstance(value, str))

    try:
        config = cls(**values)
    except (TypeError, ValueError) as e:  # a required field without default, or __post_init__
        raise UserError(f"invalid configuration: {e}") from None
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigValueError as e:
            source = source_of.get(e.key, "defaults")
            raise UserError(f"{source}: {_key_label(e.key, source)}: {e.message}") from None
    return config


def parse_config(
    cls: type[C], argv: Sequence[str] | None = None, prog: str | None = None, description: str = ""
) -> C:
    """The CLI entry: ``[--config FILE] [--key value ...]`` -> a validated config.

    ``-h``/``--help`` prints :func:`build_arg_parser`'s help and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_arg_parser(cls, prog, description).parse_args(["--help"])
    config_path, raw = parse_overrides(cls, argv)
    return load_config(cls, config_path, raw)


# ---------------------------------------------------------------- help and saving


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not _MISSING:
        value = field.default
    elif field.default_factory is not _MISSING:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    return str(value)


def build_arg_parser(
    cls: type, prog: str | None = None, description: str = ""
) -> argparse.ArgumentParser:
    """An argparse parser listing every option with its help text, type and default.

    It is for ``--help``; :func:`parse_config` does the parsing (it accepts more spellings and
    reports mistakes as UserError). Parsing with it gives raw strings for the given options only.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file of options (the command line wins)"
    )
    for name, (field, tp) in _fields(cls).items():
        help_text = field.metadata.get("help", "")
        bounds = [
            f"{sym} {field.metadata[k]}"
            for k, sym in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
            if k in field.metadata
        ]
        inner = _is_optional(tp)[1]
        if typing.get_origin(inner) is Literal:
            metavar = "{" + ",".join(str(a) for a in typing.get_args(inner)) + "}"
        elif inner is bool:
            metavar = "[BOOL]"
        else:
            metavar = {int: "INT", float: "FLOAT", str: "TEXT"}.get(inner, "LIST")
        extra = f" ({', '.join(bounds)})" if bounds else ""
        flags = [f"--{name}"]
        if inner is bool:
            flags.append(f"--no-{name.replace('_', '-')}")
        parser.add_argument(
            *flags,
            dest=name,
            metavar=metavar,
            nargs="?" if inner is bool else None,
            help=f"{help_text}{extra} (default: {_default_text(field)})".replace("%", "%%"),
        )
    # ArgumentDefaultsHelpFormatter would add "(default: ==SUPPRESS==)"; we write our own.
    parser.formatter_class = argparse.HelpFormatter
    return parser


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of the config's fields (lists copied), ready for YAML or JSON."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path, *, header: str | None = None) -> None:
    """Write the resolved config as YAML (field order kept), after ``# header`` if given
    (a comment, so the file still loads as ``--config``)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
    Path(path).write_text((f"# {header}\n" if header else "") + text, encoding="utf-8")
