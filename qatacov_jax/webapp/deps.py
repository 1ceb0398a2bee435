"""What the routes share, as FastAPI dependencies: the server's settings, its engine and
annotation store (held on `app.state` by `app.create_app`), and the token check.

    def route(engine: EngineDep, settings: SettingsDep, store: StoreDep): ...

The dependencies themselves are `async def`: they only read `app.state`, and a plain `def`
would cost each request a trip through the thread pool that the predictions queue on.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers

from qatacov_jax.inference.infection_map import DEFAULT_DISPLAY_FLOOR
from qatacov_jax.webapp.annotation import AnnotationSession
from qatacov_jax.webapp.engine import Engine

TOKEN_ERROR = "missing or wrong token: open the page as /?token=<--token>"
ANNOTATION_OFF = (
    "annotation mode is off: start the server with --review CANDIDATES --annotations OUT_DIR "
    "or --annotate IMAGES_DIR --annotations OUT_DIR"
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Server options (`scripts/serve.py` flags)."""

    threshold: float = 0.5
    lung_threshold: float = 0.5
    display_floor: float = DEFAULT_DISPLAY_FLOOR
    max_upload_mb: float = 32.0
    token: str | None = None
    blind: bool = False  # annotation: hide model names, shuffle candidates per image
    which: str = "best"  # the checkpoint of each run that was loaded (--which), for labels
    # Host names answered (guards.RequestGuard); None answers any (tests' clients). The
    # server sets them: loopback names, --host and --allowed-host (guards.allowed_hosts).
    allowed_hosts: tuple[str, ...] | None = None
    body_timeout_s: float = 30.0  # a request body that stalls this long is answered 408

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """A refused request: answered as `{"error": message}` with `status` (app.create_app)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_optional_store(request: Request) -> AnnotationSession | None:
    """The annotation session, or None on a demo-only server."""
    return request.app.state.store


async def get_store(request: Request) -> AnnotationSession:
    """The annotation session; 404 on a demo-only server."""
    store = request.app.state.store
    if store is None:
        raise ApiError(404, ANNOTATION_OFF)
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[AnnotationSession, Depends(get_store)]
OptionalStoreDep = Annotated[AnnotationSession | None, Depends(get_optional_store)]


def token_accepted(settings: Settings, headers: Headers) -> bool:
    """`Authorization: Bearer <token>` or `X-Token: <token>` matches `--token` (or the
    server has none). Compared in constant time."""
    if settings.token is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    given = given or headers.get("x-token", "")
    return secrets.compare_digest(given.encode(), settings.token.encode())


async def require_token(request: Request, settings: SettingsDep) -> None:
    """Every `/api/` route's dependency: 401 without the server's token."""
    if not token_accepted(settings, request.headers):
        raise ApiError(401, TOKEN_ERROR)
