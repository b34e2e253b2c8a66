"""Routes of the playground area (being built: issue 14)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from alignkit.web.pages import page

router = APIRouter()


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
def playground_page() -> str:
    return page("Playground", "<h1>Playground</h1>", active="/playground")
