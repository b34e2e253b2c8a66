"""A user's own Python function as a reward: ``"module:function"`` or ``"path/file.py:function"``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from alignkit.errors import UserError
from alignkit.rewards.base import Prompt, RewardOutput, check_batch, single_part


class PythonReward:
    """Calls ``f(prompts, responses) -> list[float]`` (one finite number per response).

    Every mistake the user can make — a spec without ``:``, a module or file that does not
    import, a missing or non-callable function, a result of the wrong length or with
    non-numeric or non-finite values — is a `UserError` that names the spec.
    """

    def __init__(self, spec: str, *, name: str | None = None):
        self.spec = spec
        self.function = load_function(spec)
        self.name = name or getattr(self.function, "__name__", spec)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> RewardOutput:
        check_batch(prompts, responses)
        try:
            result = self.function(list(prompts), list(responses))
        except UserError:
            raise
        except Exception as exc:
            # a bug in the user's function is theirs to fix: one line naming it, not a trace
            raise UserError(
                f"reward function '{self.spec}' raised {type(exc).__name__}: {exc}"
            ) from exc
        return single_part(self.name, _check_result(self.spec, result, len(responses)))


def load_function(spec: str) -> Callable:
    """The callable a ``module:function`` or ``file.py:function`` spec names."""
    module_part, sep, function_name = spec.rpartition(":")
    if not sep or not module_part or not function_name:
        raise UserError(
            f"reward function '{spec}': expected 'module:function' or 'path/to/file.py:function'"
        )
    module = _import(spec, module_part)
    function = getattr(module, function_name, None)
    if function is None:
        raise UserError(f"reward function '{spec}': '{module_part}' has no '{function_name}'")
    if not callable(function):
        raise UserError(f"reward function '{spec}': '{function_name}' is not callable")
    return function


def _import(spec: str, module_part: str):
    looks_like_file = module_part.endswith(".py") or "/" in module_part or "\\" in module_part
    try:
        if not looks_like_file:
            return _import_module_from_cwd_too(module_part)
        path = Path(module_part).expanduser()
        if not path.is_file():
            raise UserError(f"reward function '{spec}': no such file {path}")
        # a stable, unique module name per file so two files named rewards.py do not collide
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module_name = f"alignkit_user_reward_{path.stem}_{digest}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
        return module
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        raise UserError(f"reward function '{spec}': cannot import {exc.name!r}: {exc}") from exc
    except Exception as exc:
        raise UserError(
            f"reward function '{spec}': importing '{module_part}' failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _import_module_from_cwd_too(name: str):
    # `alignkit` run as a console script does not have the working directory on sys.path,
    # yet "mymod:f" naturally means ./mymod.py; look there too while importing.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _check_result(spec: str, result, expected: int) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().reshape(-1).tolist()
    elif hasattr(result, "tolist") and not isinstance(result, (str, bytes)):
        result = result.tolist()  # numpy arrays
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        raise UserError(
            f"reward function '{spec}' must return a list of {expected} numbers, "
            f"got {type(result).__name__}"
        )
    if len(result) != expected:
        raise UserError(
            f"reward function '{spec}' returned {len(result)} scores for {expected} responses"
        )
    for i, value in enumerate(result):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(
                f"reward function '{spec}': score {i} is {value!r} ({type(value).__name__}), "
                "not a number"
            )
        if not math.isfinite(float(value)):
            raise UserError(f"reward function '{spec}': score {i} is {value}, not finite")
    return torch.tensor([float(v) for v in result], dtype=torch.float32)
