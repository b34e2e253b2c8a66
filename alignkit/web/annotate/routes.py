"""Routes of the annotate area: the labelling page, the stats page and their JSON API.

The page never learns which stored answer is "a": it is shown ``left`` and ``right`` and
answers with ``pick`` ∈ {left, right, tie, both_bad}; the server maps the pick to the
item's answer through the recorded assignment (which answer it put on the left for this
annotator), so position bias is measurable and a client cannot get the mapping wrong.

API (all JSON; every route but the pages needs ``Authorization: Bearer <token>``):

- ``GET  /api/annotate/next``: the item to label now (or null), progress, worker status;
- ``POST /api/annotate/labels``: one label, idempotent by ``client_id``; answered only
  once the label is committed;
- ``POST /api/annotate/skip``: pass on an item;
- ``GET  /api/annotate/learning?item_id=N``: online mode, how the pair's margin moved;
- ``GET  /api/stats`` and ``GET /api/annotate/export`` (admin): the statistics; the pairs
  as JSONL (``?rule=majority|each&ties=vote|drop&keep_flagged=false&min_labels=1``).
"""

from __future__ import annotations

import contextlib
from typing import Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from alignkit.web.annotate.export import ExportRule, export_rows, to_jsonl
from alignkit.web.annotate.stats import label_stats
from alignkit.web.auth import AdminAnnotator, CurrentAnnotator, StoreDep
from alignkit.web.pages import page
from alignkit.web.store import Assignment, Store, StoreConflict, StoreNotFound, app_store

PICKS = {"tie": "tie", "both_bad": "both_bad"}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Start the background worker when ``alignkit serve`` configured one; stop it and
    close the store at shutdown."""
    from alignkit.web.annotate.worker import AnnotateWorker

    settings = app.state.settings.extra.get("annotate")
    worker = AnnotateWorker(app_store(app), settings).start() if settings is not None else None
    app.state.annotate_worker = worker
    try:
        yield
    finally:
        if worker is not None:
            worker.stop()
        store = getattr(app.state, "store", None)
        if store is not None:
            store.close()
            app.state.store = None


router = APIRouter(lifespan=lifespan)

SQLITE_MAX_INT = 2**63 - 1  # an id past it cannot be in the store (and SQLite refuses it)


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    item_id: int = Field(ge=1, le=SQLITE_MAX_INT)
    pick: Literal["left", "right", "tie", "both_bad"]
    reason: str | None = Field(default=None, max_length=2000)
    time_on_item_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: int = Field(ge=1, le=SQLITE_MAX_INT)


def _worker_status(app: FastAPI, store: Store) -> dict:
    worker = getattr(app.state, "annotate_worker", None)
    if worker is not None:
        return worker.status()
    progress = store.sampling_progress()
    return {"state": "off", **progress, "policy_version": store.policy_version()}


def _shown(assignment: Assignment) -> dict:
    item = assignment.item
    left_is_a = assignment.shown_left == "a"
    return {
        "id": item.id,
        "prompt": item.prompt,
        "group": item.group,
        "left": item.answer_a if left_is_a else item.answer_b,
        "right": item.answer_b if left_is_a else item.answer_a,
    }


def _choice(pick: str, shown_left: str) -> str:
    if pick in PICKS:
        return PICKS[pick]
    shown_right = "b" if shown_left == "a" else "a"
    return shown_left if pick == "left" else shown_right


def _not_found(error: StoreNotFound) -> HTTPException:
    return HTTPException(404, str(error))


# ---------------------------------------------------------------------- API


@router.get("/api/annotate/me")
def me(request_annotator: CurrentAnnotator, store: StoreDep) -> dict:
    return {
        "name": request_annotator.name,
        "admin": request_annotator.is_admin,
        "progress": store.progress(request_annotator.id),
    }


@router.get("/api/annotate/next")
def next_item(
    request: Request,
    annotator: CurrentAnnotator,
    store: StoreDep,
) -> dict:
    assignment = store.next_assignment(annotator.id)
    return {
        "item": _shown(assignment) if assignment else None,
        "progress": store.progress(annotator.id),
        "worker": _worker_status(request.app, store),
    }


@router.post("/api/annotate/labels")
def submit_label(
    body: LabelIn,
    request: Request,
    response: Response,
    annotator: CurrentAnnotator,
    store: StoreDep,
) -> dict:
    try:
        shown_left = store.shown_left(body.item_id, annotator.id)
        label, created = store.add_label(
            client_id=body.client_id,
            annotator_id=annotator.id,
            item_id=body.item_id,
            choice=_choice(body.pick, shown_left),
            reason=(body.reason or "").strip() or None,
            time_on_item=None if body.time_on_item_ms is None else body.time_on_item_ms / 1000,
        )
    except StoreNotFound as error:
        raise _not_found(error) from None
    except StoreConflict as error:
        raise HTTPException(409, str(error)) from None
    response.status_code = 201 if created else 200
    worker = getattr(request.app.state, "annotate_worker", None)
    if worker is not None and created:
        worker.wake()
    return {
        "label": {"id": label.id, "item_id": label.item_id, "client_id": label.client_id},
        "duplicate": not created,
        "progress": store.progress(annotator.id),
    }


@router.post("/api/annotate/skip")
def skip_item(
    body: SkipIn,
    annotator: CurrentAnnotator,
    store: StoreDep,
) -> dict:
    try:
        store.skip(annotator.id, body.item_id)
    except StoreNotFound as error:
        raise _not_found(error) from None
    except StoreConflict as error:
        raise HTTPException(409, str(error)) from None
    return {"skipped": body.item_id, "progress": store.progress(annotator.id)}


@router.get("/api/annotate/learning")
def learning(
    request: Request,
    annotator: CurrentAnnotator,
    store: StoreDep,
    item_id: int | None = Query(default=None, ge=1, le=SQLITE_MAX_INT),
) -> dict:
    if item_id is not None and not store.was_shown(item_id, annotator.id):
        raise HTTPException(404, f"item {item_id} was not shown to you")
    move = store.latest_move(item_id) if item_id is not None else None
    return {"move": move, "worker": _worker_status(request.app, store)}


@router.get("/api/stats")
def stats(
    _admin: AdminAnnotator,
    store: StoreDep,
    min_agreement: float = Query(default=0.7, ge=0, le=1),
) -> dict:
    return label_stats(store, min_agreement=min_agreement)


@router.get("/api/annotate/export")
def export(
    _admin: AdminAnnotator,
    store: StoreDep,
    rule: Literal["majority", "each"] = "majority",
    ties: Literal["vote", "drop"] = "vote",
    keep_flagged: bool = False,
    min_labels: int = Query(default=1, ge=1),
    min_agreement: float = Query(default=0.7, ge=0, le=1),
) -> Response:
    export_rule = ExportRule(rule, ties, keep_flagged, min_labels, min_agreement)
    rows, sidecar = export_rows(store, export_rule)
    return Response(
        to_jsonl(rows),
        media_type="application/x-ndjson",
        headers={
            "Content-Disposition": 'attachment; filename="pairs.jsonl"',
            "X-Alignkit-Rows": str(sidecar["rows"]),
        },
    )


# ---------------------------------------------------------------------- pages

_LOGIN = """
<section id="login" class="panel ak-login" hidden>
  <h1>Sign in to annotate</h1>
  <p class="muted">Paste the token you were given. It stays in this tab only, until you sign out.</p>
  <form id="login-form">
    <input id="token" type="password" autocomplete="off" spellcheck="false"
           placeholder="your token" aria-label="token">
    <button class="primary" type="submit">Start</button>
  </form>
  <p id="login-error" class="error" role="alert"></p>
</section>"""

_TOPBAR = """
<div class="ak-top">
  <div class="ak-who">Signed in as <b id="who"></b></div>
  <div class="ak-progress" title="your labels / pairs left for you">
    <span><b id="done">0</b> done · <b id="remaining">0</b> left</span>
    <div class="ak-bar"><div id="bar-fill"></div></div>
  </div>
  <a id="stats-link" href="/annotate/stats" hidden>Statistics</a>
  <button id="logout" type="button">Sign out</button>
</div>"""

ANNOTATE_BODY = (
    _LOGIN
    + """
<section id="work" hidden>"""
    + _TOPBAR
    + """
  <div id="status" class="muted ak-status"></div>
  <div id="task">
    <div class="panel ak-prompt"><div class="ak-label">Prompt <span id="group" class="ak-tag" hidden></span>
      <span id="item-number" class="ak-item-number"></span></div>
      <div id="prompt"></div></div>
    <div class="ak-answers">
      <article class="panel ak-answer" id="answer-left"><div class="ak-label">Answer A</div>
        <div class="ak-text" id="left-text"></div></article>
      <article class="panel ak-answer" id="answer-right"><div class="ak-label">Answer B</div>
        <div class="ak-text" id="right-text"></div></article>
    </div>
    <div class="ak-choices">
      <button type="button" class="ak-choice" data-pick="left">A is better <kbd>1</kbd></button>
      <button type="button" class="ak-choice" data-pick="right">B is better <kbd>2</kbd></button>
      <button type="button" class="ak-choice" data-pick="tie">Tie <kbd>3</kbd></button>
      <button type="button" class="ak-choice" data-pick="both_bad">Both bad <kbd>4</kbd></button>
      <button type="button" class="ak-skip" id="skip">Skip <kbd>S</kbd></button>
    </div>
    <input id="reason" class="ak-reason" maxlength="2000" autocomplete="off"
           placeholder="Reason (optional) — press R to type, Enter when done">
  </div>
  <div id="empty" class="panel ak-empty" hidden>
    <h2>Nothing left for you right now</h2>
    <p class="muted" id="empty-detail">Every pair has its labels. Thank you!</p>
  </div>
  <p id="message" class="ak-message" role="status"></p>
  <div id="learning" class="panel ak-learning" hidden>
    <div class="ak-label">Policy learning</div><div id="learning-text"></div>
  </div>
</section>"""
)

STATS_BODY = (
    _LOGIN
    + """
<section id="work" hidden>"""
    + _TOPBAR
    + """
  <h1>Agreement and quality</h1>
  <div id="stats-error" class="error"></div>
  <div class="ak-cards" id="cards"></div>
  <div class="panel"><h2>Annotators</h2>
    <table id="annotators"><thead><tr><th>Annotator</th><th>Labels</th>
      <th title="agreement with the others' majority on the same items">Agreement</th>
      <th title="share of a/b picks that took the answer shown on the left">Left picks</th>
      <th title="(left rate − ½)·√n / ½">z</th><th>Median time</th><th>Choices</th>
      <th>Flags</th></tr></thead><tbody></tbody></table></div>
  <div class="panel"><h2>Cohen's kappa per pair of annotators</h2>
    <p class="muted">Over the items both labelled (pairs with at least 5 shared items).</p>
    <table id="pairs"><thead><tr><th>Annotators</th><th>κ</th></tr></thead><tbody></tbody></table>
  </div>
  <div class="panel"><h2>Export preference pairs</h2>
    <form id="export-form" class="ak-export">
      <label>Rule <select id="rule"><option value="majority">majority per item</option>
        <option value="each">every label</option></select></label>
      <label>Ties and both-bad <select id="ties"><option value="vote">count as votes</option>
        <option value="drop">leave out of the vote</option></select></label>
      <label><input type="checkbox" id="keep-flagged"> keep flagged annotators</label>
      <button class="primary" type="submit" id="download">Download pairs.jsonl</button>
    </form>
    <p id="export-message" class="muted"></p>
  </div>
</section>"""
)


@router.get("/annotate", response_class=HTMLResponse, include_in_schema=False)
def annotate_page() -> str:
    return _page("Annotate", ANNOTATE_BODY, "/static/annotate.js")


@router.get("/annotate/stats", response_class=HTMLResponse, include_in_schema=False)
def stats_page() -> str:
    return _page("Annotation statistics", STATS_BODY, "/static/annotate_stats.js")


def _page(title: str, body: str, script: str) -> str:
    css = '<link rel="stylesheet" href="/static/annotate.css">'
    return page(
        title, css + body, scripts=["/static/annotate_common.js", script], active="/annotate"
    )
