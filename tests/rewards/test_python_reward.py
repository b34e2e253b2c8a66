import sys
import textwrap

import pytest

from alignkit.errors import UserError
from alignkit.rewards import PythonReward


def write(tmp_path, body: str, name: str = "user_rewards.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_function_from_a_file(tmp_path):
    path = write(
        tmp_path, "def n_chars(prompts, responses):\n    return [len(r) for r in responses]\n"
    )
    reward = PythonReward(f"{path}:n_chars")
    out = reward(["a", [{"role": "user", "content": "b"}]], ["xy", "xyz"])
    assert out.scores.tolist() == [2.0, 3.0]
    assert out.parts["n_chars"].tolist() == [2.0, 3.0]
    assert reward.name == "n_chars"


def test_function_from_a_module(tmp_path, monkeypatch):
    write(
        tmp_path, "def one(prompts, responses):\n    return [1] * len(responses)\n", "mymod_x1.py"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert PythonReward("mymod_x1:one")(["p"], ["r"]).scores.tolist() == [1.0]
    finally:
        sys.modules.pop("mymod_x1", None)


def test_module_in_working_directory_found_without_sys_path(tmp_path, monkeypatch):
    write(
        tmp_path,
        "def two(prompts, responses):\n    return [2.0 for _ in responses]\n",
        "cwdmod_x2.py",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert PythonReward("cwdmod_x2:two")(["p"], ["r"]).scores.tolist() == [2.0]
    finally:
        sys.modules.pop("cwdmod_x2", None)


def test_numpy_and_tensor_results_are_accepted(tmp_path):
    path = write(
        tmp_path,
        """
        import numpy as np
        import torch
        def as_numpy(prompts, responses):
            return np.ones(len(responses))
        def as_tensor(prompts, responses):
            return torch.zeros(len(responses))
        """,
    )
    assert PythonReward(f"{path}:as_numpy")(["p"], ["r"]).scores.tolist() == [1.0]
    assert PythonReward(f"{path}:as_tensor")(["p"], ["r"]).scores.tolist() == [0.0]


BAD_RESULTS = {
    "short": "return [1.0]",
    "text": "return ['high'] * len(responses)",
    "none": "return None",
    "string": "return 'nope'",
    "nan": "return [float('nan')] * len(responses)",
    "boolean": "return [True] * len(responses)",
    "raises": "raise RuntimeError('boom')",
}


@pytest.mark.parametrize("kind", sorted(BAD_RESULTS))
def test_wrong_results_name_the_spec(tmp_path, kind):
    path = write(
        tmp_path, f"def f(prompts, responses):\n    {BAD_RESULTS[kind]}\n", f"bad_{kind}.py"
    )
    spec = f"{path}:f"
    reward = PythonReward(spec)
    with pytest.raises(UserError) as info:
        reward(["p1", "p2"], ["r1", "r2"])
    assert spec in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        "no_colon_here",
        ":f",
        "mod:",
        "alignkit_no_such_module_zz:f",
        "alignkit.errors:no_such_function",
        "alignkit.errors:__doc__",
    ],
)
def test_bad_specs_name_the_spec(spec):
    with pytest.raises(UserError) as info:
        PythonReward(spec)
    assert spec in str(info.value)


def test_missing_file_and_broken_module_name_the_spec(tmp_path):
    missing = f"{tmp_path}/absent.py:f"
    with pytest.raises(UserError, match="no such file") as info:
        PythonReward(missing)
    assert missing in str(info.value)
    broken = write(tmp_path, "import alignkit_surely_missing_dependency\n", "broken.py")
    with pytest.raises(UserError, match="alignkit_surely_missing_dependency") as info:
        PythonReward(f"{broken}:f")
    assert f"{broken}:f" in str(info.value)
    syntax = write(tmp_path, "def f(:\n", "syntax.py")
    with pytest.raises(UserError, match="SyntaxError"):
        PythonReward(f"{syntax}:f")
