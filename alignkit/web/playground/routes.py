"""Routes of the playground: the page, one step of the exact world, the library's source,
and the real-model mode (sample two answers, prefer one, one DPO step).

Every number the page shows comes from here: the page's JS draws, it computes nothing.
"""

from __future__ import annotations

import html
from dataclasses import asdict, fields
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from alignkit.web.pages import page
from alignkit.web.playground import exact, theory
from alignkit.web.playground.real_model import (
    MAX_PROMPT_CHARS,
    RealModelSession,
    RealModelSettings,
)

router = APIRouter()

MAX_STEPS_PER_REQUEST = 500
MAX_ANSWER_CHARS = 4000


class SettingsBody(BaseModel):
    method: Literal["dpo", "ppo", "grpo"] = "ppo"
    beta: float = 0.1
    learning_rate: float = 0.5
    clip_eps: float = 0.2
    adaptive_beta: bool = False
    kl_target: float = 0.3
    kl_horizon: int = 50
    group_size: int = 4
    batch_size: int = 8
    ppo_epochs: int = 4
    label_noise: float = 0.0
    proxy_flaw: float = 2.5
    seed: int = Field(0, ge=0, le=2**32 - 1)


class StateBody(BaseModel):
    logits: list[float]
    value: float = 0.0
    beta: float | None = None
    step: int = Field(0, ge=0, le=10**9)


class StepBody(BaseModel):
    settings: SettingsBody = SettingsBody()
    state: StateBody | None = None  # None: start from the reference
    steps: int = Field(1, ge=1, le=MAX_STEPS_PER_REQUEST)


class SampleBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class PreferBody(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    chosen: str = Field(max_length=MAX_ANSWER_CHARS)
    rejected: str = Field(max_length=MAX_ANSWER_CHARS)
    beta: float = Field(0.1, gt=0, le=10)
    learning_rate: float = Field(2e-4, gt=0, le=1)


def _settings(body: SettingsBody) -> exact.Settings:
    try:
        return exact.Settings(**body.model_dump())
    except ValueError as error:  # out of range: the client's to fix, in one line
        raise HTTPException(422, f"settings: {error}") from error


def _state(body: StateBody | None) -> exact.State:
    if body is None:
        return exact.initial_state()
    state = exact.State(**body.model_dump())
    try:
        state.tensor()
    except ValueError as error:
        raise HTTPException(422, f"state: {error}") from error
    return state


@router.get("/api/playground/world")
def world(proxy_flaw: float = 2.5, beta: float = 0.1) -> dict:
    """The prompt, the answers with their traits and rewards, the starting state."""
    return exact.world(_settings(SettingsBody(proxy_flaw=proxy_flaw, beta=beta)))


@router.post("/api/playground/step")
def step(body: StepBody) -> dict:
    """``steps`` steps of the exact world from ``state`` under ``settings``; a run that
    diverges returns its finite steps and says where it stopped (``diverged``)."""
    try:
        results, diverged = (
            exact.run(_state(body.state), _settings(body.settings), body.steps),
            None,
        )
    except exact.Diverged as stopped:
        results, diverged = stopped.results, str(stopped)
    return {"results": [result.to_dict() for result in results], "diverged": diverged}


@router.get("/api/playground/code")
def code(method: str) -> dict:
    """The source of the functions a step of ``method`` runs (dpo, ppo, grpo, real)."""
    try:
        return {"method": method, "functions": theory.code_for(method)}
    except KeyError:
        raise HTTPException(404, f"no method {method!r}; expected dpo, ppo, grpo or real") from None


def _real_session(request: Request) -> RealModelSession:
    state = request.app.state
    session = getattr(state, "playground_real_model", None)
    if session is None:
        from alignkit.models.loading import DEFAULT_MODEL

        model = request.app.state.settings.extra.get("playground_model", DEFAULT_MODEL)
        session = RealModelSession(RealModelSettings(model=model))
        state.playground_real_model = session
    return session


@router.get("/api/playground/real/status")
def real_status(request: Request) -> dict:
    return _real_session(request).status()


@router.post("/api/playground/real/sample")
def real_sample(body: SampleBody, request: Request) -> dict:
    """Two answers to the prompt from the current policy."""
    return _real_session(request).sample_pair(body.prompt)


@router.post("/api/playground/real/prefer")
def real_prefer(body: PreferBody, request: Request) -> dict:
    """One DPO step on the pair the person labelled; log π before and after."""
    if body.chosen == body.rejected:
        raise HTTPException(422, "chosen and rejected are identical: nothing to learn")
    return _real_session(request).prefer(
        body.prompt,
        body.chosen,
        body.rejected,
        beta=body.beta,
        learning_rate=body.learning_rate,
    )


# ----------------------------------------------------------------------------- the page


def _slider(name: str, label: str, lo: float, hi: float, step: float, value: float, hint: str):
    return f"""<label class="pg-control" title="{html.escape(hint)}"><span>{label}</span>
<input type="range" id="{name}" name="{name}" min="{lo}" max="{hi}" step="{step}" value="{value}">
<output id="{name}-out" for="{name}">{value}</output></label>"""


def _controls() -> str:
    defaults = {f.name: f.default for f in fields(exact.Settings)}
    methods = "".join(
        f'<label class="pg-method"><input type="radio" name="method" value="{m}"'
        f"{' checked' if m == defaults['method'] else ''}>{m.upper()}</label>"
        for m in exact.METHODS
    )
    return f"""
<div class="pg-methods" role="radiogroup" aria-label="method">{methods}</div>
{_slider("beta", "β (KL coefficient)", 0.01, 3, 0.01, 0.05, "strength of the KL penalty")}
{_slider("learning_rate", "learning rate", 0.05, 20, 0.05, 0.5, "SGD step on the logits")}
{_slider("clip_eps", "clip ε (PPO, GRPO)", 0.05, 0.5, 0.01, 0.2, "PPO/GRPO ratio clip")}
<label class="pg-check"><input type="checkbox" id="adaptive_beta"> adaptive β
  <span class="muted">(PPO, GRPO)</span></label>
{_slider("kl_target", "KL target (nats)", 0.05, 2, 0.05, 0.3, "the adaptive controller's target")}
{_slider("kl_horizon", "controller horizon H", 5, 500, 5, 50, "samples per full correction")}
{_slider("group_size", "GRPO group size G", 2, 16, 1, 4, "answers per prompt in a group")}
{_slider("label_noise", "label noise (DPO)", 0, 0.5, 0.01, 0, "chance a preference is flipped")}
{_slider("proxy_flaw", "proxy flaw (pays for length)", 0, 5, 0.1, 2.5, "0: proxy = gold")}
"""


def _answers_skeleton() -> str:
    return '<ol id="answers" class="pg-answers" aria-label="candidate answers"></ol>'


STAGES = (
    ("prompt", "Prompt"),
    ("answers", "Sample answers"),
    ("preference", "Preference / score"),
    ("update", "Update"),
    ("shift", "Probabilities shift"),
)


def _exact_section() -> str:
    stages = "".join(
        f'<li class="pg-stage" data-stage="{key}"><b>{i}</b> {label}</li>'
        for i, (key, label) in enumerate(STAGES, start=1)
    )
    return f"""
<section id="mode-exact" class="pg-mode">
 <div class="pg-grid">
  <aside class="panel pg-controls" aria-label="controls">
   <h2>Controls</h2>
   {_controls()}
   <div class="pg-buttons">
    <button id="play" class="primary" title="play / pause (space)">▶ Play</button>
    <button id="step" title="one step, stage by stage">Step</button>
    <button id="skip" title="50 steps at once">+50 steps</button>
    <button id="reset" title="back to the reference policy">Reset</button>
   </div>
   <label class="pg-control"><span>speed</span>
    <select id="speed">
     <option value="slow">slow (each stage)</option>
     <option value="normal" selected>normal</option>
     <option value="fast">fast</option>
     <option value="turbo">turbo (no stages)</option>
    </select></label>
   <p class="muted pg-share">The controls live in the address bar:
    <a id="share" href="#">link to these settings</a>.</p>
  </aside>
  <div class="panel pg-stagebox">
   <ol class="pg-stages" id="stages">{stages}</ol>
   <div class="pg-prompt" id="prompt-box"><span class="muted">prompt</span>
     <p id="prompt"></p></div>
   <p id="narration" class="pg-narration" aria-live="polite"></p>
   {_answers_skeleton()}
   <div class="pg-figures" id="figures">
    <div><span class="muted">step</span><b id="fig-step">0</b></div>
    <div><span class="muted">proxy reward</span><b id="fig-proxy">–</b></div>
    <div><span class="muted">gold reward</span><b id="fig-gold">–</b></div>
    <div><span class="muted">KL to π<sub>ref</sub></span><b id="fig-kl">–</b></div>
    <div><span class="muted">β</span><b id="fig-beta">–</b></div>
   </div>
  </div>
 </div>
 <div class="pg-charts">
  <div class="panel"><div id="chart-probs" class="pg-chart"></div></div>
  <div class="panel"><div id="chart-rewards" class="pg-chart"></div></div>
  <div class="panel"><div id="chart-kl" class="pg-chart"></div></div>
  <div class="panel"><div id="chart-logps" class="pg-chart"></div></div>
  <div class="panel"><div id="chart-beta" class="pg-chart"></div></div>
  <div class="panel pg-hint"><h2>Try this</h2>
   <ol>
    <li>Press <b>+50 steps</b> twice at β = 0.05: the policy runs to the <em>padded</em>
     answer — proxy up, gold down. That is reward hacking.</li>
    <li><b>Reset</b>, set β = 1 and run again: the KL penalty holds the policy near the
     reference and gold stays up.</li>
    <li>Or keep β = 0.05 and tick <b>adaptive β</b>: the controller raises β when KL passes
     its target.</li>
    <li>Set the proxy flaw to 0: proxy and gold agree, and nothing is hacked.</li>
   </ol></div>
 </div>
 <div class="panel pg-code">
  <h2>The code this step runs <span class="muted" id="code-method"></span></h2>
  <p class="muted">Shown from the library's own source (<code>inspect.getsource</code>), so
   it is exactly what the server just ran.</p>
  <div id="code-tabs" class="pg-code-tabs"></div>
  <pre id="code"><code id="code-text"></code></pre>
 </div>
</section>"""


def _real_section() -> str:
    return """
<section id="mode-real" class="pg-mode" hidden>
 <div class="panel">
  <h2>Teach a real model, one preference at a time</h2>
  <p class="muted">The model (<span id="real-model"></span>) answers your prompt twice; pick
   the better answer, and one DPO step on a LoRA adapter makes it more likely. The page
   shows log π(chosen) and log π(rejected) before and after the step.</p>
  <form id="real-form" class="pg-real-form">
   <input id="real-prompt" type="text" maxlength="2000"
     value="Explain photosynthesis to a five-year-old." aria-label="prompt">
   <button id="real-sample" class="primary" type="submit">Answer twice</button>
  </form>
  <div class="pg-real-settings">
   <label>β <input id="real-beta" type="number" min="0.01" max="10" step="0.01" value="0.1">
   </label>
   <label>learning rate <input id="real-lr" type="number" min="0.00001" max="1"
     step="0.0001" value="0.0002"></label>
   <span id="real-status" class="muted" aria-live="polite"></span>
  </div>
  <div class="pg-real-pair" id="real-pair" hidden>
   <div class="pg-real-answer" data-index="0"><h3>Answer A</h3><p class="pg-real-text"></p>
    <button class="pg-pick" data-index="0">A is better</button></div>
   <div class="pg-real-answer" data-index="1"><h3>Answer B</h3><p class="pg-real-text"></p>
    <button class="pg-pick" data-index="1">B is better</button></div>
  </div>
  <table class="pg-real-result" id="real-result" hidden>
   <thead><tr><th></th><th>log π before</th><th>log π after</th><th>change</th>
    <th>log π<sub>ref</sub></th></tr></thead>
   <tbody>
    <tr data-row="chosen"><th>chosen</th><td></td><td></td><td></td><td></td></tr>
    <tr data-row="rejected"><th>rejected</th><td></td><td></td><td></td><td></td></tr>
   </tbody>
   <tfoot><tr><td colspan="5" id="real-summary" class="muted"></td></tr></tfoot>
  </table>
  <button id="real-again" hidden>Fresh pair for the same prompt</button>
 </div>
 <div class="panel pg-code">
  <h2>The code a real-model step runs</h2>
  <div id="real-code-tabs" class="pg-code-tabs"></div>
  <pre><code id="real-code-text"></code></pre>
 </div>
</section>"""


def _read_section() -> str:
    sections = "".join(
        f'<article class="panel pg-theory"><h2>{html.escape(title)}</h2>{body}</article>'
        for title, body in theory.THEORY
    )
    questions = "".join(
        f"<details class='pg-qa'><summary>{html.escape(q)}</summary><p>{html.escape(a)}</p>"
        "</details>"
        for q, a in theory.QUESTIONS
    )
    return f"""
<section id="mode-read" class="pg-mode" hidden>
 <div class="pg-read">{sections}</div>
 <div class="panel"><h2>Interview questions</h2>{questions}</div>
</section>"""


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
def playground_page() -> str:
    body = f"""
<link rel="stylesheet" href="/static/playground.css">
<div class="pg-head">
 <h1>Playground <span class="muted">RLHF on alignkit's own math</span></h1>
 <nav class="pg-tabs" role="tablist">
  <button role="tab" data-mode="exact" class="active">Exact world</button>
  <button role="tab" data-mode="real">Real model</button>
  <button role="tab" data-mode="read">Read: theory &amp; Q&amp;A</button>
 </nav>
</div>
{_exact_section()}{_real_section()}{_read_section()}
<script type="application/json" id="pg-defaults">{_defaults_json()}</script>"""
    return page(
        "Playground",
        body,
        scripts=("/static/plotly.min.js", "/static/playground.js"),
        active="/playground",
    )


def _defaults_json() -> str:
    import json

    defaults = asdict(exact.Settings(beta=0.05))
    defaults["learning_rate_by_method"] = {"dpo": 5.0, "ppo": 0.5, "grpo": 0.5}
    defaults["learning_rate_max_by_method"] = {m: hi for m, (_, hi) in exact.LEARNING_RATES.items()}
    # "</" cannot end the script element early: json.dumps escapes no slash, so do it here.
    return json.dumps(defaults).replace("</", "<\\/")
