"""The one web app: settings, the routers of each area, errors and static files.

Every area is a FastAPI router in ``alignkit/web/<area>/routes.py`` and only calls down
into the library (DESIGN.md, "The product layer"). The app itself owns what all areas
share: the request-size limit, one-line JSON errors (a client never sees a traceback),
plotly's JavaScript served from the installed package, and the pages' own CSS/JS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignkit.web.pages import STATIC_DIR, page

log = logging.getLogger("alignkit.web")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a label or a playground step is a few hundred bytes


@dataclass
class ServeSettings:
    """What `alignkit serve` was started with."""

    db: Path = Path("labels.db")
    runs_dir: Path = Path("runs")
    max_body_bytes: int = MAX_BODY_BYTES
    # the Host names requests may carry (DNS rebinding: a page elsewhere whose name points
    # at this machine must not read it); None checks nothing (the app inside tests and
    # embedders); `alignkit serve` always sets them (`serve.allowed_hosts`)
    allowed_hosts: tuple[str, ...] | None = None
    # Options of each area (for example the annotation worker's model) live here by name.
    extra: dict = field(default_factory=dict)


def plotly_js_path() -> Path:
    """plotly.js as shipped inside the installed `plotly` package (no CDN: pages work offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _one_line(error: RequestValidationError) -> str:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = first.get("msg", "invalid request")
    return f"{where}: {message}" if where else message


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with a one-line 413: at once when its
    Content-Length says so, and for a chunked upload as soon as what has arrived passes the
    limit (the rest is never read, so a huge upload costs the server nothing)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def _refusal(self) -> JSONResponse:
        return JSONResponse(
            {"error": f"request body over the limit of {self.limit} bytes"}, status_code=413
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refusal()(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # an HTTPException: the app's handler answers it with one line
                    raise StarletteHTTPException(
                        413, f"request body over the limit of {self.limit} bytes"
                    )
            return message

        await self.app(scope, counted, send)


# Pages load only their own scripts; plotly adds <style> elements and data: images.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the app for ``settings``; each area's router is included here."""
    settings = settings or ServeSettings()
    app = FastAPI(title="alignkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # a route with its own policy (a run folder's report: sandboxed) keeps it
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, error: RequestValidationError):
        return JSONResponse({"error": _one_line(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception):
        # A bug in our code: the traceback goes to the server's log, never to the client.
        log.exception("error serving %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(plotly_js_path(), media_type="application/javascript")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        path = STATIC_DIR / name
        if len(name) > 200 or "/" in name or "\\" in name or name.startswith("."):
            raise StarletteHTTPException(404, f"no static file {name[:80]!r}")
        if not path.is_file():
            raise StarletteHTTPException(404, f"no static file {name!r}")
        return FileResponse(path)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page(
            "alignkit",
            """
<section class="cards">
  <a class="card" href="/annotate"><h2>Annotate</h2>
    <p>Compare two answers and pick the better one. Your labels train the model.</p></a>
  <a class="card" href="/playground"><h2>Playground</h2>
    <p>Step through the RLHF loop on alignkit's own math; tune β, the learning rate, ε.</p></a>
  <a class="card" href="/runs"><h2>Runs</h2>
    <p>Metrics, guard events, checkpoints and rollouts of every run folder.</p></a>
</section>""",
        )

    from alignkit.web.annotate.routes import router as annotate_router
    from alignkit.web.playground.routes import router as playground_router
    from alignkit.web.runs.routes import router as runs_router

    app.include_router(annotate_router)
    app.include_router(playground_router)
    app.include_router(runs_router)
    return app
