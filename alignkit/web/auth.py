"""Annotator tokens: made once, shown once, stored only as a hash; a FastAPI dependency.

A token is ``secrets.token_urlsafe(24)`` (192 random bits), so a plain SHA-256 of it is
enough: there is nothing to brute-force that a slow hash would protect. The page sends it
as ``Authorization: Bearer <token>``; a request without a valid one gets 401, and the
admin-only routes (statistics, export) 403 for an ordinary annotator.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from alignkit.web.store import Annotator, Store, StoreConflict, app_store

TOKEN_BYTES = 24


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def create_annotator(store: Store, name: str, *, is_admin: bool = False) -> str:
    """Add an annotator and return their token (the only time it exists in clear)."""
    name = name.strip()
    if not name or len(name) > 64 or any(ch in name for ch in "|\n\r\t"):
        raise ValueError("an annotator name is 1-64 characters, without '|' or line breaks")
    token = new_token()
    try:
        store.add_annotator(name, hash_token(token), is_admin=is_admin)
    except StoreConflict as error:
        raise ValueError(str(error)) from None
    return token


def store_of(request: Request) -> Store:
    """The app's labels store (opened on first use, at the settings' ``db``)."""
    return app_store(request.app)


def current_annotator(request: Request, store: Annotated[Store, Depends(store_of)]) -> Annotator:
    """The annotator whose token the request carries; 401 without a valid one."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "a token is needed: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
        )
    annotator = store.annotator_by_token_hash(hash_token(token.strip()))
    if annotator is None:
        raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})
    return annotator


def admin_annotator(annotator: Annotated[Annotator, Depends(current_annotator)]) -> Annotator:
    """An annotator added with --admin; 403 for anyone else."""
    if not annotator.is_admin:
        raise HTTPException(403, "this needs an admin token")
    return annotator


# Route parameters: ``annotator: CurrentAnnotator`` needs a valid token, ``AdminAnnotator``
# an admin's; ``store: StoreDep`` is the app's store.
StoreDep = Annotated[Store, Depends(store_of)]
CurrentAnnotator = Annotated[Annotator, Depends(current_annotator)]
AdminAnnotator = Annotated[Annotator, Depends(admin_annotator)]
