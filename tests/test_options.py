"""Config loading: YAML then command line, coercion, validation, help, saving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest
import yaml

from alignkit.errors import UserError
from alignkit.options import (
    ConfigValueError,
    build_arg_parser,
    config_to_dict,
    load_config,
    option,
    parse_config,
    save_config,
)
from alignkit.train.train_config import TrainConfig


@dataclass
class Cfg:
    steps: int = option(10, "Number of steps.", min=1)
    lr: float = option(1e-3, "Learning rate.", gt=0)
    name: str = option("run", "Run name.")
    flag: bool = option(False, "A switch.")
    mode: Literal["a", "b"] = option("a", "The mode.")
    limit: int | None = option(None, "Optional limit.", min=0)
    mods: list[str] = option(["x", "y"], "Modules.")
    ratio: float = option(0.5, "A ratio.", min=0, max=1)

    def validate(self) -> None:
        if self.limit is not None and self.limit > self.steps:
            raise ConfigValueError("limit", f"must not exceed steps ({self.steps})")


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_fresh_list_per_instance():
    a, b = load_config(Cfg), load_config(Cfg)
    assert a == Cfg() and a.mods == ["x", "y"]
    a.mods.append("z")
    assert b.mods == ["x", "y"]


def test_yaml_then_cli_precedence(tmp_path):
    path = write_yaml(tmp_path, {"steps": 5, "lr": 0.1, "name": "yaml"})
    cfg = parse_config(Cfg, ["--config", path, "--steps", "7", "--name=cli"])
    assert (cfg.steps, cfg.lr, cfg.name) == (7, 0.1, "cli")


def test_cli_spellings_and_coercion():
    cfg = parse_config(
        Cfg,
        ["--flag", "--mode", "b", "--limit", "3", "--mods", "q,k , v", "--lr=2e-5", "--ratio", "1"],
    )
    assert cfg.flag is True and cfg.mode == "b" and cfg.limit == 3
    assert cfg.mods == ["q", "k", "v"] and cfg.lr == 2e-5 and cfg.ratio == 1.0
    assert parse_config(Cfg, ["--flag", "false"]).flag is False
    assert parse_config(Cfg, ["--flag=yes"]).flag is True
    assert parse_config(Cfg, ["--no-flag"]).flag is False
    assert parse_config(Cfg, ["--limit", "none"]).limit is None
    assert parse_config(Cfg, ["--mods", "[a, b]"]).mods == ["a", "b"]
    assert parse_config(Cfg, ["--flag", "--steps", "3"]).steps == 3


def test_dashes_and_underscores():
    @dataclass
    class D:
        max_steps: int = option(1, "Steps.")

    assert parse_config(D, ["--max-steps", "4"]).max_steps == 4
    assert parse_config(D, ["--max_steps=5"]).max_steps == 5


def test_unknown_cli_key_suggests():
    with pytest.raises(
        UserError, match=r"command line: unknown option --stesp \(did you mean --steps\?\)"
    ):
        parse_config(Cfg, ["--stesp", "3"])


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    path = write_yaml(tmp_path, {"nmae": "x"})
    with pytest.raises(UserError) as info:
        parse_config(Cfg, ["--config", path])
    message = str(info.value)
    assert path in message and "'nmae'" in message and "did you mean 'name'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--steps", "abc"], r"command line: --steps: expected an integer, got 'abc'"),
        (["--lr", "fast"], r"--lr: expected a number"),
        (["--flag", "maybe"], r"unexpected argument 'maybe'"),
        (["--mode", "c"], r"--mode: expected one of 'a', 'b', got 'c'"),
        (["--steps"], r"--steps needs a value"),
        (["--no-steps"], r"only works for on/off options"),
        (["steps", "3"], r"unexpected argument 'steps'"),
    ],
)
def test_cli_type_errors(argv, pattern):
    with pytest.raises(UserError, match=pattern):
        parse_config(Cfg, argv)


def test_yaml_type_errors(tmp_path):
    with pytest.raises(UserError, match=r"c\.yaml: 'steps': expected an integer, got 2\.5"):
        parse_config(Cfg, ["--config", write_yaml(tmp_path, {"steps": 2.5})])
    with pytest.raises(UserError, match=r"'flag': expected true or false, got 1"):
        parse_config(Cfg, ["--config", write_yaml(tmp_path, {"flag": 1})])
    with pytest.raises(UserError, match=r"'mods': expected a list of a string"):
        parse_config(Cfg, ["--config", write_yaml(tmp_path, {"mods": {"a": 1}})])


def test_out_of_range_names_key_and_source(tmp_path):
    with pytest.raises(UserError, match=r"command line: --steps must be >= 1, got 0"):
        parse_config(Cfg, ["--steps", "0"])
    with pytest.raises(UserError, match=r"command line: --lr must be > 0, got 0.0"):
        parse_config(Cfg, ["--lr", "0"])
    with pytest.raises(UserError, match=r"c\.yaml: 'ratio' must be <= 1, got 2"):
        parse_config(Cfg, ["--config", write_yaml(tmp_path, {"ratio": 2})])


def test_validate_hook_names_the_source(tmp_path):
    with pytest.raises(UserError, match=r"command line: --limit: must not exceed steps \(10\)"):
        parse_config(Cfg, ["--limit", "11"])
    path = write_yaml(tmp_path, {"limit": 20})
    with pytest.raises(UserError, match=r"c\.yaml: 'limit': must not exceed"):
        parse_config(Cfg, ["--config", path])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        parse_config(Cfg, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+: invalid YAML"):
        parse_config(Cfg, ["--config", str(bad)])
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        parse_config(Cfg, ["--config", str(bad)])
    bad.write_text("")
    assert parse_config(Cfg, ["--config", str(bad)]) == Cfg()


def test_load_config_with_mapping_overrides(tmp_path):
    cfg = load_config(Cfg, write_yaml(tmp_path, {"steps": 4}), {"steps": "6", "flag": True})
    assert cfg.steps == 6 and cfg.flag is True


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, ["--help"], prog="alignkit sft", description="Fine-tune.")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "alignkit sft" in out and "Fine-tune." in out
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}" in out, name
    assert "Peak learning rate." in out and "(default: 2e-05)" in out
    assert "--no-resume" in out and "{cosine,linear,constant}" in out
    help_text = build_arg_parser(Cfg, "x").format_help()
    assert (
        "(>= 1)" in help_text and "(default: x,y)" in help_text and "(default: none)" in help_text
    )


def test_train_config_defaults_and_checks():
    cfg = load_config(TrainConfig)
    assert cfg.model == "smollm2-135m-instruct" and cfg.lr_scheduler == "cosine"
    with pytest.raises(UserError, match="--max_prompt_length: must be smaller than max_length"):
        parse_config(TrainConfig, ["--max_length", "64", "--max_prompt_length", "64"])
    with pytest.raises(UserError, match="--lr_scheduler: expected one of"):
        parse_config(TrainConfig, ["--lr_scheduler", "step"])
    with pytest.raises(UserError, match=r"did you mean --learning_rate"):
        parse_config(TrainConfig, ["--learning-rat", "1"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = parse_config(TrainConfig, ["--max_steps", "9", "--lora_target_modules", "q_proj"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config_to_dict(cfg)
    again = parse_config(TrainConfig, ["--config", str(tmp_path / "config.yaml")])
    assert again == cfg


@dataclass
class WithSection:
    guard: dict[str, Any] = option({}, "A nested section.")


def test_mapping_field_from_yaml_and_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("guard:\n  policy: rollback\n  detectors: {kl_bound: {max_kl: 3}}\n")
    assert load_config(WithSection, path).guard == {
        "policy": "rollback",
        "detectors": {"kl_bound": {"max_kl": 3}},
    }
    assert load_config(WithSection, None, ["--guard", "{policy: warn}"]).guard == {"policy": "warn"}
    with pytest.raises(UserError, match="guard"):
        load_config(WithSection, None, ["--guard", "[1, 2]"])


def test_max_prompt_length_follows_max_length_unless_set():
    """`--max-length 192` alone is not an error about an option the user never set: the
    prompt limit defaults to half of max_length. Only a value the user gave is refused."""
    assert load_config(TrainConfig, None, ["--max-length", "192"]).max_prompt_length == 96
    assert load_config(TrainConfig, None, []).max_prompt_length == 256
    assert TrainConfig(max_length=100).max_prompt_length == 50
    with pytest.raises(UserError, match="max_prompt_length"):
        load_config(TrainConfig, None, ["--max-length", "192", "--max-prompt-length", "200"])
