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

from alignkit.web.pages import STATIC_DIR, page

log = logging.getLogger("alignkit.web")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a label or a playground step is a few hundred bytes


@dataclass
class ServeSettings:
    """What `alignkit serve` was started with."""

    db: Path = Path("labels.db")
    runs_dir: Path = Path("runs")
    max_body_bytes: int = MAX_BODY_BYTES
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


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the app for ``settings``; each area's router is included here."""
    settings = settings or ServeSettings()
    app = FastAPI(title="alignkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse(
                {"error": f"request body over the limit of {settings.max_body_bytes} bytes"},
                status_code=413,
            )
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked upload: measure what arrived
            if len(body) > settings.max_body_bytes:
                return JSONResponse(
                    {"error": f"request body over the limit of {settings.max_body_bytes} bytes"},
                    status_code=413,
                )
        return await call_next(request)

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
