from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from airies import __version__

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> dict[str, object]:
    """Liveness and database reachability; needs no API key."""
    database = request.app.state.database
    with database.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__, "database": database.dialect}
