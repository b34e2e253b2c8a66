"""Routes of the runs dashboard: the run folders under ``--runs``, their metrics (polled
while a run is going), events, checkpoints, rollouts, preference pairs and pipeline reports.

Run ids are paths relative to the runs root, passed as a query parameter; anything that
resolves outside the root is a 404 (see ``folders.inside``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute

from alignkit.errors import UserError
from alignkit.web.pages import page
from alignkit.web.runs import folders, preference, rollouts


class RefuseOutsideRuns(APIRoute):
    """Every route of this router answers a run id that resolves outside ``--runs`` with a
    404 and its one-line reason (``folders.OutsideRuns``), and data of a run that cannot be
    read (a dataset that is gone, a damaged file: the library's ``UserError``) with a 422
    and its reason, in one place."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def refusing(request: Request) -> Response:
            try:
                return await handler(request)
            except folders.OutsideRuns as error:
                raise HTTPException(404, str(error)) from error
            except UserError as error:
                raise HTTPException(422, str(error)) from error

        return refusing


router = APIRouter(route_class=RefuseOutsideRuns)


def _root(request: Request) -> Path:
    return Path(request.app.state.settings.runs_dir)


@router.get("/api/runs")
def list_runs(request: Request) -> dict:
    return folders.list_runs(_root(request))


@router.get("/api/runs/run")
def run(request: Request, id: str = Query(max_length=1000)) -> dict:
    return folders.run_details(_root(request), id)


@router.get("/api/runs/metrics")
def metrics(
    request: Request, id: str = Query(max_length=1000), since: int = Query(0, ge=0)
) -> dict:
    return folders.metrics_since(_root(request), id, since)


@router.get("/api/runs/rollouts")
def rollout_list(request: Request, id: str = Query(max_length=1000)) -> dict:
    return rollouts.rollout_list(_root(request), id)


@router.get("/api/runs/rollout")
def rollout(request: Request, id: str = Query(max_length=1000), index: int = Query(ge=0)) -> dict:
    return rollouts.rollout_detail(_root(request), id, index)


@router.get("/api/runs/pairs")
def pairs(request: Request, id: str = Query(max_length=1000)) -> dict:
    return preference.pair_list(_root(request), id)


@router.get("/api/runs/pair")
def pair(request: Request, id: str = Query(max_length=1000), index: int = Query(ge=0)) -> dict:
    """Per-token log π_θ − log π_ref of a pair's chosen and rejected answers (computed now)."""
    return preference.pair_logratios(_root(request), id, index)


@router.get("/api/runs/pipeline")
def pipeline(request: Request, id: str = Query(max_length=1000)) -> dict:
    return folders.pipeline_summary(_root(request), id)


# A run folder's HTML is not the app's: sandboxed, its scripts run in an origin of their
# own, so they cannot read an annotator's token or call the app's routes as the user.
REPORT_POLICY = "sandbox allow-scripts allow-popups; frame-ancestors 'none'"


@router.get("/runs/report", include_in_schema=False)
def report(request: Request, id: str = Query(max_length=1000)) -> FileResponse:
    """A pipeline's report.html, as the pipeline wrote it (it opens offline), sandboxed."""
    return FileResponse(
        folders.report_path(_root(request), id),
        media_type="text/html",
        headers={"Content-Security-Policy": REPORT_POLICY},
    )


@router.get("/runs", response_class=HTMLResponse, include_in_schema=False)
def runs_page() -> str:
    body = """
<link rel="stylesheet" href="/static/runs.css">
<div class="rn-head"><h1>Runs <span class="muted" id="rn-root"></span></h1>
 <label class="rn-refresh"><input type="checkbox" id="auto-refresh" checked> refresh while
  running</label></div>
<div class="rn-grid">
 <aside class="panel rn-list">
  <h2>Run folders</h2>
  <p class="muted rn-tip">Tick two or more to overlay their charts.</p>
  <ul id="run-list"></ul>
  <div id="pipelines"></div>
 </aside>
 <div class="rn-main">
  <div id="rn-empty" class="panel muted">No run folders yet. Train something, e.g.
   <code>alignkit grpo --model tiny-random-llama --dataset demo --max-steps 5
   --output-dir runs/try</code>, and it appears here.</div>
  <div id="rn-run" hidden>
   <div class="panel rn-summary">
    <div class="rn-title"><h2 id="rn-title"></h2><span id="rn-kind" class="rn-chip"></span>
     <span id="rn-status" class="rn-chip"></span></div>
    <div id="rn-facts" class="rn-facts"></div>
    <ul id="rn-problems" class="rn-problems" hidden
     title="lines of this run folder that could not be read; the rest is shown"></ul>
   </div>
   <div class="rn-tabs" role="tablist">
    <button data-tab="charts" class="active">Charts</button>
    <button data-tab="inspector">Rollout inspector</button>
    <button data-tab="config">Config, events, checkpoints</button>
   </div>
   <section id="tab-charts" class="rn-tab">
    <div class="rn-metric-pick"><label>metrics
     <input id="metric-filter" type="search" placeholder="filter, e.g. kl or rewards/"></label>
     <span class="muted" id="metric-count"></span></div>
    <div id="charts" class="rn-charts"></div>
   </section>
   <section id="tab-inspector" class="rn-tab" hidden>
    <div id="inspector-online" hidden>
     <div class="rn-inspector">
      <div class="panel rn-samples">
       <div class="rn-sample-tools">
        <label>sort <select id="sample-sort">
         <option value="iteration">by step</option>
         <option value="score">by score (high first)</option>
         <option value="kl">by KL (high first)</option>
        </select></label>
       </div>
       <ol id="sample-list"></ol>
      </div>
      <div class="panel rn-sample">
       <div class="rn-colour"><span class="muted">colour tokens by</span>
        <div id="colour-by" class="rn-seg"></div>
        <span class="rn-legend" id="legend"></span></div>
       <p class="rn-prompt"><span class="muted">prompt</span> <span id="sample-prompt"></span></p>
       <div id="tokens" class="rn-tokens" aria-label="response tokens"></div>
       <div id="token-tip" class="rn-tip-box muted">Hover a token for its numbers.</div>
       <div class="rn-score"><h3>Score</h3><table id="score-parts"></table></div>
       <div class="rn-same"><h3>The same prompt across training steps</h3>
        <ol id="same-prompt"></ol></div>
      </div>
     </div>
    </div>
    <div id="inspector-preference" hidden>
     <div class="panel">
      <label>pair <select id="pair-pick"></select></label>
      <span class="muted" id="pair-status"></span>
      <p class="rn-prompt"><span class="muted">prompt</span> <span id="pair-prompt"></span></p>
      <div class="rn-pair">
       <div><h3>chosen <span id="chosen-sum" class="muted"></span></h3>
        <div id="chosen-tokens" class="rn-tokens"></div></div>
       <div><h3>rejected <span id="rejected-sum" class="muted"></span></h3>
        <div id="rejected-tokens" class="rn-tokens"></div></div>
      </div>
      <div id="pair-tip" class="rn-tip-box muted">Each token is coloured by
       log π<sub>θ</sub> − log π<sub>ref</sub>: green where training made it more likely,
       red where less. Hover for the numbers.</div>
     </div>
    </div>
    <div id="inspector-none" class="panel muted" hidden>This run has no samples to inspect
     (SFT and reward-model runs log no rollouts).</div>
   </section>
   <section id="tab-config" class="rn-tab" hidden>
    <div class="rn-config-grid">
     <div class="panel"><h3>Config</h3><table id="config-table" class="rn-kv"></table></div>
     <div>
      <div class="panel"><h3>Events</h3><table id="events-table" class="rn-events"></table></div>
      <div class="panel"><h3>Checkpoints</h3><table id="checkpoints-table"></table></div>
     </div>
    </div>
   </section>
  </div>
  <div id="rn-pipeline" class="panel" hidden>
   <h2 id="pipeline-title"></h2>
   <p><a id="pipeline-report" target="_blank">Open the pipeline's report</a></p>
   <pre id="pipeline-summary" class="rn-summary-json"></pre>
  </div>
 </div>
</div>"""
    return page("Runs", body, scripts=("/static/plotly.min.js", "/static/runs.js"), active="/runs")
