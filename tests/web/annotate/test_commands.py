"""`alignkit annotate ...` end to end on the tiny model: new, add-annotator, stats, export,
and the export passing `alignkit data check` and training `alignkit dpo` and `alignkit rm`."""

from __future__ import annotations

import json
import shlex

import pytest

from alignkit.cli import main
from alignkit.web.auth import hash_token
from alignkit.web.store import Store

TRAIN_FLAGS = shlex.split(
    "--model tiny-random-llama --max-steps 1 --batch-size 2 --max-length 96 "
    "--max-prompt-length 64 --no-report-to-tensorboard"
)


def _label_everything(db, picks_by_annotator: dict[str, str]) -> None:
    """Each annotator labels every item they are given, with a fixed choice of answer."""
    store = Store(db)
    try:
        for name, choice in picks_by_annotator.items():
            annotator = next(a for a in store.annotators() if a.name == name)
            while (assignment := store.next_assignment(annotator.id)) is not None:
                store.add_label(
                    client_id=f"{name}-{assignment.item.id:05d}",
                    annotator_id=annotator.id,
                    item_id=assignment.item.id,
                    choice=choice,
                    time_on_item=2.0,
                )
    finally:
        store.close()


def test_add_annotator_prints_a_token_once_and_stores_only_its_hash(tmp_path, capsys):
    db = tmp_path / "labels.db"
    assert main(["annotate", "add-annotator", "eve", "--db", str(db), "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 32 and "\n" not in token
    store = Store(db)
    annotator = store.annotator_by_token_hash(hash_token(token))
    assert annotator.name == "eve" and annotator.is_admin
    dump = "\n".join(store.read().iterdump())
    assert token not in dump and hash_token(token) in dump
    store.close()
    assert main(["annotate", "add-annotator", "eve", "--db", str(db)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_new_from_prompts_samples_two_different_answers_per_prompt(tmp_path, capsys):
    db = tmp_path / "labels.db"
    argv = f"annotate new --db {db} --prompts demo --limit 3 --model tiny-random-llama "
    argv += "--max-new-tokens 12 --overlap 3"
    assert main(shlex.split(argv)) == 0
    out = capsys.readouterr().out
    assert "3 prompts for tiny-random-llama" in out and "sampled 3 pairs in" in out
    store = Store(db)
    items = store.items()
    assert len(items) == 3
    assert all(item.answer_a != item.answer_b and item.prompt_id is not None for item in items)
    assert isinstance(items[0].prompt, list) and items[0].group in ("concise", "detailed")
    assert store.projects()[0]["overlap"] == 3 and store.sampling_progress()["pending"] == 0
    store.close()


def test_new_with_later_leaves_the_prompts_for_the_serve_worker(tmp_path, capsys):
    db = tmp_path / "labels.db"
    argv = f"annotate new --db {db} --prompts demo --limit 2 --model tiny-random-llama --later"
    assert main(shlex.split(argv)) == 0
    store = Store(db)
    assert store.items() == [] and store.sampling_progress()["pending"] == 2
    store.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        ("annotate new --db {db}", "one of --prompts"),
        ("annotate new --db {db} --prompts demo --pairs {pairs}", "one of --prompts"),
        ("annotate new --db {db} --pairs {pairs} --overlap 0", "--overlap"),
        ("annotate new --db {db} --prompts /no/such.jsonl", "file not found"),
        ("annotate new --db {db} --pairs {bad}", "answer_b"),
        ("annotate stats --db {missing}", "no labels database"),
        ("annotate export --db {missing} --out x.jsonl", "no labels database"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    tmp_path, capsys, write_pairs_file, make_pairs, argv, message
):
    pairs = write_pairs_file(tmp_path / "pairs.jsonl", make_pairs(2))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "answer_a": "Hello", "answer_b": ""}) + "\n")
    paths = {"db": tmp_path / "l.db", "pairs": pairs, "bad": bad, "missing": tmp_path / "no.db"}
    assert main(shlex.split(argv.format(**paths))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_stats_export_and_the_export_trains_dpo_and_rm(
    tmp_path, capsys, write_pairs_file, make_pairs
):
    db = tmp_path / "labels.db"
    pairs = write_pairs_file(tmp_path / "pairs.jsonl", make_pairs(12, group="math"))
    assert main(["annotate", "new", "--db", str(db), "--pairs", str(pairs)]) == 0
    for name in ("ann", "ben", "cy"):
        assert main(["annotate", "add-annotator", name, "--db", str(db)]) == 0
    capsys.readouterr()
    # ann and ben always choose answer a; cy (who only gets what is left) never comes in
    _label_everything(db, {"ann": "a", "ben": "a", "cy": "b"})

    assert main(["annotate", "stats", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "24 labels on 12 items" in out and "ann · ben" in out
    assert main(["annotate", "stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["cohen_kappa"] == {"ann|ben": 1.0} and stats["items_complete"] == 12

    out_file = tmp_path / "export" / "pairs.jsonl"
    assert main(["annotate", "export", "--db", str(db), "--out", str(out_file)]) == 0
    assert "wrote 12 pairs" in capsys.readouterr().out
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert all(row["chosen"].startswith("It is") and row["annotator"] == "ann+ben" for row in rows)
    assert {row["group"] for row in rows} == {"math"}
    sidecar = json.loads((tmp_path / "export" / "pairs.agreement.json").read_text())
    assert sidecar["rows"] == 12 and sidecar["agreement"]["labels"] == 24

    assert main(["data", "check", str(out_file), "--format", "preference"]) == 0
    capsys.readouterr()
    for command in ("dpo", "rm"):
        run = tmp_path / command
        argv = [command, *TRAIN_FLAGS, "--dataset", str(out_file), "--output-dir", str(run)]
        assert main(argv) == 0, capsys.readouterr().err
        assert (run / "model" / "config.json").is_file()
        assert f"alignkit {command}: 1 step" in capsys.readouterr().out


def test_serve_options_become_the_annotate_workers_settings(tmp_path, capsys):
    from alignkit.cli import build_parser
    from alignkit.web.annotate.commands import worker_settings

    argv = "serve --model tiny-random-llama --reward-model rm/model --online-dpo --dpo-every 4 "
    argv += "--pair-max-new-tokens 32 --pair-temperature 0.7"
    settings = worker_settings(build_parser().parse_args(shlex.split(argv)), tmp_path)
    assert settings.model == "tiny-random-llama" and settings.reward_model == "rm/model"
    assert settings.online_dpo.every == 4 and settings.sampling.max_new_tokens == 32
    assert settings.sampling.temperature == 0.7 and settings.runs_dir == tmp_path
    plain = worker_settings(build_parser().parse_args(["serve"]), tmp_path)
    assert plain.online_dpo is None and plain.model is None
    assert main(["serve", "--online-dpo", "--dpo-every", "0", "--db", str(tmp_path / "l.db")]) == 2
    assert "--dpo-every must be at least 1" in capsys.readouterr().err
