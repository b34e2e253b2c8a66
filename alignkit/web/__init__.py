"""`alignkit serve`: one FastAPI app with three areas.

- ``annotate/``: people compare two answers; labels land in SQLite (``store.py``).
- ``playground/``: the RLHF loop stepped live on alignkit's own math.
- ``runs/``: run folders, their metrics, guard events and rollouts.

``create_app`` builds the app; ``serve`` runs it on uvicorn.
"""

from alignkit.web.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
