"""Fixtures of the annotate area: a labels store with pairs, annotators and their tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alignkit.web import ServeSettings, create_app
from alignkit.web.annotate.projects import new_pairs_project
from alignkit.web.auth import create_annotator
from alignkit.web.store import Store


def _make_pairs(count: int, *, group: str | None = None) -> list[tuple]:
    """``count`` distinct ready pairs: (prompt, answer a, answer b, group)."""
    return [
        (f"Question {i}: what is {i} + {i}?", f"It is {2 * i}.", f"Maybe {2 * i + 1}?", group)
        for i in range(count)
    ]


def _write_pairs_file(path: Path, pairs: list[tuple]) -> Path:
    with path.open("w") as handle:
        for prompt, a, b, group in pairs:
            row = {"prompt": prompt, "answer_a": a, "answer_b": b}
            if group is not None:
                row["group"] = group
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "labels.db"


@pytest.fixture
def store(db_path):
    opened = Store(db_path)
    yield opened
    opened.close()


@pytest.fixture
def project(store) -> int:
    """Ten ready pairs, each for two annotators."""
    return new_pairs_project(store, _make_pairs(10, group="math"), overlap=2, name="test")


@pytest.fixture
def tokens(store) -> dict[str, str]:
    """Tokens of annotators alice, bob, carol and an admin."""
    made = {name: create_annotator(store, name) for name in ("alice", "bob", "carol")}
    made["admin"] = create_annotator(store, "admin", is_admin=True)
    return made


@pytest.fixture
def make_pairs():
    """``make_pairs(count, group=None)``: distinct ready pairs (prompt, a, b, group)."""
    return _make_pairs


@pytest.fixture
def write_pairs_file():
    """``write_pairs_file(path, pairs)``: a pairs JSONL file (prompt, answer_a, answer_b)."""
    return _write_pairs_file


@pytest.fixture
def app(db_path, tmp_path):
    return create_app(ServeSettings(db=db_path, runs_dir=tmp_path / "runs"))


@pytest.fixture
def client(app, store, project, tokens):
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
