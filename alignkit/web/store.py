"""The labels database: SQLite in WAL mode, one connection per thread, nothing lost.

What is stored, one table each: annotators (token hashes, never tokens), labelling projects,
the prompts a project samples from (with how many pairs each still owes), items (a prompt
and its two answers, "a" and "b"), assignments (who was shown which item, and which answer
was on the left), labels, and the online learner's policy updates with how each trained
pair's log-ratio moved.

Why it loses nothing:

- every write is one ``BEGIN IMMEDIATE`` transaction, committed before the call returns,
  with ``synchronous=FULL``: a label the server acknowledged is on disk, even after SIGKILL;
- a label carries the client's id (``UNIQUE(client_id)``): a retry of the same submit gets
  the stored label back instead of a second row;
- ``UNIQUE(item_id, annotator_id)``: a second tab cannot label the same item again, nor
  overwrite the first label;
- an item is handed out under the same write lock that counts its open slots, so twenty
  annotators asking at once never push an item past its overlap.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data.records import Text
from alignkit.feedback.labels import CHOICES, Label

SCHEMA_VERSION = 1
# An item handed out and not labelled within this many seconds frees its slot for others.
ASSIGNMENT_LEASE_S = 15 * 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  token_hash TEXT NOT NULL UNIQUE,
  is_admin INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  source TEXT NOT NULL CHECK (source IN ('prompts', 'pairs')),
  model TEXT,
  overlap INTEGER NOT NULL CHECK (overlap >= 1),
  settings TEXT NOT NULL DEFAULT '{}',
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
  id INTEGER PRIMARY KEY,
  project_id INTEGER NOT NULL REFERENCES projects(id),
  prompt TEXT NOT NULL,
  grp TEXT,
  pending INTEGER NOT NULL DEFAULT 1 CHECK (pending >= 0),
  failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY,
  project_id INTEGER NOT NULL REFERENCES projects(id),
  prompt_id INTEGER REFERENCES prompts(id),
  prompt TEXT NOT NULL,
  answer_a TEXT NOT NULL,
  answer_b TEXT NOT NULL,
  grp TEXT,
  policy_version INTEGER NOT NULL DEFAULT 0,
  reward_a REAL,
  reward_b REAL,
  uncertainty REAL,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
  item_id INTEGER NOT NULL REFERENCES items(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  shown_left TEXT NOT NULL CHECK (shown_left IN ('a', 'b')),
  assigned_at REAL NOT NULL,
  skipped INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (item_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS labels (
  id INTEGER PRIMARY KEY,
  client_id TEXT NOT NULL UNIQUE,
  item_id INTEGER NOT NULL REFERENCES items(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
  shown_left TEXT NOT NULL CHECK (shown_left IN ('a', 'b')),
  reason TEXT,
  shown_at REAL NOT NULL,
  created_at REAL NOT NULL,
  time_on_item REAL,
  UNIQUE (item_id, annotator_id)
);
CREATE TABLE IF NOT EXISTS policy_updates (
  id INTEGER PRIMARY KEY,
  version INTEGER NOT NULL UNIQUE,
  pairs INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  loss_before REAL NOT NULL,
  loss_after REAL NOT NULL,
  adapter_dir TEXT,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS margin_moves (
  update_id INTEGER NOT NULL REFERENCES policy_updates(id),
  item_id INTEGER NOT NULL REFERENCES items(id),
  chosen TEXT NOT NULL CHECK (chosen IN ('a', 'b')),
  before REAL NOT NULL,
  after REAL NOT NULL,
  PRIMARY KEY (update_id, item_id)
);
CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator_id);
CREATE INDEX IF NOT EXISTS items_by_queue ON items (uncertainty, id);
"""


class StoreConflict(Exception):
    """A write the data forbids (a second label for one item, a reused client id)."""


class StoreNotFound(Exception):
    """A row that does not exist (an unknown item, an item never shown to this annotator)."""


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class Item:
    """A prompt and its two answers; ``prompt`` is text or a message list."""

    id: int
    project_id: int
    prompt_id: int | None
    prompt: Text
    answer_a: str
    answer_b: str
    group: str | None
    policy_version: int
    uncertainty: float | None


@dataclass(frozen=True)
class Assignment:
    """An item as shown to one annotator: which answer was on the left."""

    item: Item
    shown_left: str
    assigned_at: float


@dataclass(frozen=True)
class StoredLabel:
    id: int
    client_id: str
    item_id: int
    annotator: str
    choice: str
    shown_left: str
    reason: str | None
    shown_at: float
    created_at: float
    time_on_item: float | None

    def as_feedback_label(self) -> Label:
        """The label as alignkit.feedback's agreement code reads it."""
        return Label(str(self.item_id), self.annotator, self.choice, self.shown_left)


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        project_id=row["project_id"],
        prompt_id=row["prompt_id"],
        prompt=json.loads(row["prompt"]),
        answer_a=row["answer_a"],
        answer_b=row["answer_b"],
        group=row["grp"],
        policy_version=row["policy_version"],
        uncertainty=row["uncertainty"],
    )


_LABEL_COLUMNS = (
    "l.id, l.client_id, l.item_id, a.name AS annotator, l.choice, l.shown_left, l.reason, "
    "l.shown_at, l.created_at, l.time_on_item"
)


def _label(row: sqlite3.Row) -> StoredLabel:
    return StoredLabel(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - a Row iterates values


class Store:
    """The labels database at ``path`` (created with its schema on first use).

    Safe to share between threads: each thread gets its own connection, and SQLite's write
    lock (taken at ``BEGIN IMMEDIATE``) serialises writers, across processes too.
    """

    def __init__(self, path: str | Path, *, rng: random.Random | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._rng = rng or random.SystemRandom()
        self._create_schema()

    # ------------------------------------------------------------------ connections

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE (the write lock first), COMMIT or ROLLBACK."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        """The thread's connection, for single reads (WAL: readers never wait on writers)."""
        return self._connection()

    def _create_schema(self) -> None:
        db = self._connection()
        db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self.write() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        """Close every thread's connection (call once no request is running)."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------ annotators

    def add_annotator(self, name: str, token_hash: str, *, is_admin: bool = False) -> Annotator:
        """A new annotator; raises StoreConflict when the name is taken."""
        try:
            with self.write() as db:
                cursor = db.execute(
                    "INSERT INTO annotators (name, token_hash, is_admin, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (name, token_hash, int(is_admin), time.time()),
                )
        except sqlite3.IntegrityError:
            raise StoreConflict(f"an annotator named {name!r} already exists") from None
        return Annotator(cursor.lastrowid, name, is_admin)

    def annotator_by_token_hash(self, token_hash: str) -> Annotator | None:
        row = (
            self.read()
            .execute(
                "SELECT id, name, is_admin FROM annotators WHERE token_hash = ?", (token_hash,)
            )
            .fetchone()
        )
        return Annotator(row["id"], row["name"], bool(row["is_admin"])) if row else None

    def annotators(self) -> list[Annotator]:
        rows = self.read().execute("SELECT id, name, is_admin FROM annotators ORDER BY id")
        return [Annotator(r["id"], r["name"], bool(r["is_admin"])) for r in rows]

    # ------------------------------------------------------------------ projects and items

    def add_project(
        self,
        name: str,
        source: str,
        *,
        overlap: int,
        model: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> int:
        with self.write() as db:
            cursor = db.execute(
                "INSERT INTO projects (name, source, model, overlap, settings, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, source, model, overlap, json.dumps(settings or {}), time.time()),
            )
        return cursor.lastrowid

    def projects(self) -> list[dict[str, Any]]:
        rows = self.read().execute("SELECT * FROM projects ORDER BY id").fetchall()
        return [dict(row) | {"settings": json.loads(row["settings"])} for row in rows]

    def add_prompts(self, project_id: int, prompts: Sequence[tuple[Text, str | None]]) -> None:
        """Prompts to sample one pair each from (``pending`` = 1)."""
        with self.write() as db:
            db.executemany(
                "INSERT INTO prompts (project_id, prompt, grp) VALUES (?, ?, ?)",
                [(project_id, json.dumps(prompt), group) for prompt, group in prompts],
            )

    def pending_prompts(self, limit: int) -> list[dict[str, Any]]:
        """Prompts that still owe pairs, oldest first, with their project's model."""
        rows = self.read().execute(
            "SELECT p.id, p.project_id, p.prompt, p.grp, p.pending, j.model FROM prompts p "
            "JOIN projects j ON j.id = p.project_id WHERE p.pending > 0 AND p.failures < 3 "
            "ORDER BY p.id LIMIT ?",
            (limit,),
        )
        return [dict(row) | {"prompt": json.loads(row["prompt"])} for row in rows]

    def project_prompts(self, project_id: int) -> list[dict[str, Any]]:
        rows = self.read().execute(
            "SELECT id, prompt, grp, pending FROM prompts WHERE project_id = ? ORDER BY id",
            (project_id,),
        )
        return [dict(row) | {"prompt": json.loads(row["prompt"])} for row in rows]

    def request_pairs(self, prompt_ids: Sequence[int], count: int = 1) -> None:
        """Ask the sampler for ``count`` more pairs of each prompt (online mode)."""
        with self.write() as db:
            db.executemany(
                "UPDATE prompts SET pending = pending + ?, failures = 0 WHERE id = ?",
                [(count, prompt_id) for prompt_id in prompt_ids],
            )

    def prompt_failed(self, prompt_id: int) -> None:
        """A prompt whose two samples came out identical again; given up after three."""
        with self.write() as db:
            db.execute("UPDATE prompts SET failures = failures + 1 WHERE id = ?", (prompt_id,))

    def add_item(
        self,
        project_id: int,
        prompt: Text,
        answer_a: str,
        answer_b: str,
        *,
        group: str | None = None,
        prompt_id: int | None = None,
        policy_version: int = 0,
    ) -> int:
        """A new item; when it answers a pending prompt, that prompt owes one pair fewer
        (in the same transaction, so a crash never leaves the two disagreeing)."""
        with self.write() as db:
            cursor = db.execute(
                "INSERT INTO items (project_id, prompt_id, prompt, answer_a, answer_b, grp, "
                "policy_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project_id,
                    prompt_id,
                    json.dumps(prompt),
                    answer_a,
                    answer_b,
                    group,
                    policy_version,
                    time.time(),
                ),
            )
            if prompt_id is not None:
                db.execute(
                    "UPDATE prompts SET pending = MAX(pending - 1, 0) WHERE id = ?", (prompt_id,)
                )
        return cursor.lastrowid

    def add_items(self, project_id: int, rows: Sequence[tuple[Text, str, str, str | None]]) -> None:
        """Ready pairs (prompt, answer a, answer b, group), in one transaction."""
        now = time.time()
        with self.write() as db:
            db.executemany(
                "INSERT INTO items (project_id, prompt, answer_a, answer_b, grp, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(project_id, json.dumps(p), a, b, g, now) for p, a, b, g in rows],
            )

    def item(self, item_id: int) -> Item:
        row = self.read().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise StoreNotFound(f"no item {item_id}")
        return _item(row)

    def items(self, *, unscored_only: bool = False) -> list[Item]:
        where = " WHERE uncertainty IS NULL" if unscored_only else ""
        rows = self.read().execute(f"SELECT * FROM items{where} ORDER BY id").fetchall()
        return [_item(row) for row in rows]

    def set_rewards(self, scores: Sequence[tuple[int, float, float, float]]) -> None:
        """(item id, r_a, r_b, uncertainty) for each scored item."""
        with self.write() as db:
            db.executemany(
                "UPDATE items SET reward_a = ?, reward_b = ?, uncertainty = ? WHERE id = ?",
                [(r_a, r_b, u, item_id) for item_id, r_a, r_b, u in scores],
            )

    # ------------------------------------------------------------------ the queue

    _OPEN_SLOTS = """
      (SELECT COUNT(*) FROM assignments s
        WHERE s.item_id = i.id AND s.skipped = 0
          AND (s.assigned_at > :lease_start OR EXISTS (
            SELECT 1 FROM labels l WHERE l.item_id = s.item_id AND l.annotator_id = s.annotator_id
          ))
      ) < (SELECT overlap FROM projects p WHERE p.id = i.project_id)
    """
    _NOT_SEEN = """
      NOT EXISTS (SELECT 1 FROM assignments s WHERE s.item_id = i.id AND s.annotator_id = :me)
    """

    def _open_assignment(self, db: sqlite3.Connection, annotator_id: int) -> sqlite3.Row | None:
        return db.execute(
            "SELECT s.item_id, s.shown_left, s.assigned_at FROM assignments s "
            "WHERE s.annotator_id = ? AND s.skipped = 0 AND NOT EXISTS ("
            "  SELECT 1 FROM labels l WHERE l.item_id = s.item_id AND l.annotator_id = ?) "
            "ORDER BY s.assigned_at LIMIT 1",
            (annotator_id, annotator_id),
        ).fetchone()

    def next_assignment(self, annotator_id: int) -> Assignment | None:
        """The item this annotator should label now, or None when nothing is left for them.

        An item already handed to them and not yet labelled or skipped comes back (a reload
        or a second tab sees the same item). Otherwise the first item they have never been
        shown that still has a free slot (fewer than ``overlap`` annotators labelled it or
        hold it), the reward model's least sure pairs first; its left answer is drawn at
        random and recorded.
        """
        with self.write() as db:
            row = self._open_assignment(db, annotator_id)
            if row is None:
                params = {"me": annotator_id, "lease_start": time.time() - ASSIGNMENT_LEASE_S}
                free = db.execute(
                    f"SELECT i.id FROM items i WHERE {self._NOT_SEEN} AND {self._OPEN_SLOTS} "
                    "ORDER BY i.uncertainty IS NULL, i.uncertainty, i.id LIMIT 1",
                    params,
                ).fetchone()
                if free is None:
                    return None
                shown_left = self._rng.choice(("a", "b"))
                now = time.time()
                db.execute(
                    "INSERT INTO assignments (item_id, annotator_id, shown_left, assigned_at) "
                    "VALUES (?, ?, ?, ?)",
                    (free["id"], annotator_id, shown_left, now),
                )
                item_id, assigned_at = free["id"], now
            else:
                item_id, shown_left, assigned_at = (
                    row["item_id"],
                    row["shown_left"],
                    row["assigned_at"],
                )
            item = _item(db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())
        return Assignment(item, shown_left, assigned_at)

    def was_shown(self, item_id: int, annotator_id: int) -> bool:
        """Whether the item was ever assigned to the annotator."""
        row = (
            self.read()
            .execute(
                "SELECT 1 FROM assignments WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            )
            .fetchone()
        )
        return row is not None

    def shown_left(self, item_id: int, annotator_id: int) -> str:
        """Which answer ("a" or "b") this annotator was shown on the left of an item
        (fixed when the item was handed out, never changed)."""
        row = (
            self.read()
            .execute(
                "SELECT shown_left FROM assignments WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            )
            .fetchone()
        )
        if row is None:
            raise StoreNotFound(f"item {item_id} was not given to you")
        return row["shown_left"]

    def skip(self, annotator_id: int, item_id: int) -> None:
        """The annotator passes on an item: it is never shown to them again, and its slot
        goes to someone else."""
        with self.write() as db:
            row = db.execute(
                "SELECT skipped FROM assignments WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            ).fetchone()
            if row is None:
                raise StoreNotFound(f"item {item_id} was not given to you")
            labelled = db.execute(
                "SELECT 1 FROM labels WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            ).fetchone()
            if labelled:
                raise StoreConflict(f"you already labelled item {item_id}")
            db.execute(
                "UPDATE assignments SET skipped = 1 WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            )

    def progress(self, annotator_id: int) -> dict[str, int]:
        """done (their labels), remaining (items they could still be given, including the
        one open now), and pairs still being sampled."""
        db = self.read()
        params = {"me": annotator_id, "lease_start": time.time() - ASSIGNMENT_LEASE_S}
        done = db.execute(
            "SELECT COUNT(*) FROM labels WHERE annotator_id = ?", (annotator_id,)
        ).fetchone()[0]
        open_now = 1 if self._open_assignment(db, annotator_id) else 0
        free = db.execute(
            f"SELECT COUNT(*) FROM items i WHERE {self._NOT_SEEN} AND {self._OPEN_SLOTS}", params
        ).fetchone()[0]
        sampling = db.execute(
            "SELECT COALESCE(SUM(pending), 0) FROM prompts WHERE failures < 3"
        ).fetchone()[0]
        return {"done": done, "remaining": open_now + free, "sampling": sampling}

    def sampling_progress(self) -> dict[str, int]:
        """Pairs sampled from prompts so far, and still owed."""
        db = self.read()
        sampled = db.execute("SELECT COUNT(*) FROM items WHERE prompt_id IS NOT NULL").fetchone()[0]
        pending = db.execute(
            "SELECT COALESCE(SUM(pending), 0) FROM prompts WHERE failures < 3"
        ).fetchone()[0]
        return {"sampled": sampled, "pending": pending}

    # ------------------------------------------------------------------ labels

    def add_label(
        self,
        *,
        client_id: str,
        annotator_id: int,
        item_id: int,
        choice: str,
        reason: str | None = None,
        time_on_item: float | None = None,
    ) -> tuple[StoredLabel, bool]:
        """Store one label, committed before returning; returns (label, created).

        The same ``client_id`` again (a retry) returns the stored label with created=False
        and changes nothing. A second label of the same item by the same annotator, or a
        client id already used for another item, is a StoreConflict.
        """
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        with self.write() as db:
            existing = db.execute(
                f"SELECT {_LABEL_COLUMNS}, l.annotator_id FROM labels l "
                "JOIN annotators a ON a.id = l.annotator_id WHERE l.client_id = ?",
                (client_id,),
            ).fetchone()
            if existing is not None:
                if existing["annotator_id"] != annotator_id or existing["item_id"] != item_id:
                    raise StoreConflict(
                        f"client id {client_id!r} was already used for another label"
                    )
                return _label_without_annotator_id(existing), False
            assignment = db.execute(
                "SELECT shown_left, assigned_at, skipped FROM assignments "
                "WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            ).fetchone()
            if assignment is None:
                raise StoreNotFound(f"item {item_id} was not given to you")
            if db.execute(
                "SELECT 1 FROM labels WHERE item_id = ? AND annotator_id = ?",
                (item_id, annotator_id),
            ).fetchone():
                raise StoreConflict(f"you already labelled item {item_id}")
            cursor = db.execute(
                "INSERT INTO labels (client_id, item_id, annotator_id, choice, shown_left, "
                "reason, shown_at, created_at, time_on_item) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    client_id,
                    item_id,
                    annotator_id,
                    choice,
                    assignment["shown_left"],
                    reason,
                    assignment["assigned_at"],
                    time.time(),
                    time_on_item,
                ),
            )
            if assignment["skipped"]:  # skipped in one tab, labelled in another: the label wins
                db.execute(
                    "UPDATE assignments SET skipped = 0 WHERE item_id = ? AND annotator_id = ?",
                    (item_id, annotator_id),
                )
            row = db.execute(
                f"SELECT {_LABEL_COLUMNS} FROM labels l JOIN annotators a "
                "ON a.id = l.annotator_id WHERE l.id = ?",
                (cursor.lastrowid,),
            ).fetchone()
        return _label(row), True

    def labels(self) -> list[StoredLabel]:
        rows = self.read().execute(
            f"SELECT {_LABEL_COLUMNS} FROM labels l JOIN annotators a ON a.id = l.annotator_id "
            "ORDER BY l.id"
        )
        return [_label(row) for row in rows]

    def label_count(self) -> int:
        return self.read().execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    # ------------------------------------------------------------------ online learning

    def add_policy_update(
        self,
        *,
        pairs: int,
        steps: int,
        loss_before: float,
        loss_after: float,
        moves: Sequence[tuple[int, str, float, float]],
        adapter_dir: str | None = None,
    ) -> int:
        """Record one round of DPO steps and, per trained pair (item, chosen answer), the
        margin log π(chosen) − log π(rejected) before and after. Returns the new version."""
        with self.write() as db:
            version = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM policy_updates"
            ).fetchone()[0]
            cursor = db.execute(
                "INSERT INTO policy_updates (version, pairs, steps, loss_before, loss_after, "
                "adapter_dir, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, pairs, steps, loss_before, loss_after, adapter_dir, time.time()),
            )
            db.executemany(
                "INSERT INTO margin_moves (update_id, item_id, chosen, before, after) "
                "VALUES (?, ?, ?, ?, ?)",
                [(cursor.lastrowid, *move) for move in moves],
            )
        return version

    def policy_version(self) -> int:
        return (
            self.read()
            .execute("SELECT COALESCE(MAX(version), 0) FROM policy_updates")
            .fetchone()[0]
        )

    def policy_updates(self) -> list[dict[str, Any]]:
        rows = self.read().execute("SELECT * FROM policy_updates ORDER BY version")
        return [dict(row) for row in rows]

    def trained_items(self) -> set[int]:
        """Items whose consensus pair some policy update already trained on."""
        rows = self.read().execute("SELECT DISTINCT item_id FROM margin_moves")
        return {row[0] for row in rows}

    def latest_move(self, item_id: int) -> dict[str, Any] | None:
        """The last recorded move of an item's margin, with the update's version."""
        row = (
            self.read()
            .execute(
                "SELECT m.item_id, m.chosen, m.before, m.after, u.version, u.created_at "
                "FROM margin_moves m JOIN policy_updates u ON u.id = m.update_id "
                "WHERE m.item_id = ? ORDER BY u.version DESC LIMIT 1",
                (item_id,),
            )
            .fetchone()
        )
        return dict(row) if row else None


def _label_without_annotator_id(row: sqlite3.Row) -> StoredLabel:
    return StoredLabel(**{key: row[key] for key in row.keys() if key != "annotator_id"})  # noqa: SIM118


_APP_STORE_LOCK = threading.Lock()


def app_store(app) -> Store:
    """The one Store of a web app, opened at ``app.state.settings.db`` on first use."""
    store = getattr(app.state, "store", None)
    if store is None:
        with _APP_STORE_LOCK:
            store = getattr(app.state, "store", None)
            if store is None:
                store = Store(app.state.settings.db)
                app.state.store = store
    return store
