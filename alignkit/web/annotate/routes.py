"""Routes of the annotate area (being built: issue 13)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from alignkit.web.pages import page

router = APIRouter()


@router.get("/annotate", response_class=HTMLResponse, include_in_schema=False)
def annotate_page() -> str:
    return page("Annotate", "<h1>Annotate</h1>", active="/annotate")
