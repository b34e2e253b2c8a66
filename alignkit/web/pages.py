"""The HTML frame every page shares: header with the areas, the stylesheet, scripts.

Pages are plain HTML plus a little JS per page. Model text never goes through here as
markup: a page's JS puts it in with ``textContent``; anything a route interpolates into
HTML on the server is escaped with ``html.escape`` first.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

AREAS = (("/annotate", "Annotate"), ("/playground", "Playground"), ("/runs", "Runs"))


def page(title: str, body: str, *, scripts: Sequence[str] = (), active: str | None = None) -> str:
    """A whole HTML document: ``body`` is trusted markup; ``title`` is escaped."""
    nav = "".join(
        f'<a href="{href}"{" class=active" if href == active else ""}>{label}</a>'
        for href, label in AREAS
    )
    tags = "".join(f'<script src="{src}"></script>' for src in scripts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">  <!-- no favicon request, no 404 in the console -->
<link rel="stylesheet" href="/static/base.css">
</head><body>
<header><a class="brand" href="/">alignkit</a><nav>{nav}</nav></header>
<main>{body}</main>
{tags}
</body></html>"""
