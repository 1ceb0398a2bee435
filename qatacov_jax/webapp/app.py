"""The FastAPI application: the demo page, `POST /api/predict` and the annotation API.

Routes (every `/api/` route checks the token when the server has one):

    GET  /                       the page (static/index.html; every asset served from here)
    GET  /api/config             what the page needs to know (modes, limits, thresholds)
    POST /api/predict            multipart `file` -> infer.py's report fields + PNGs
    GET  /api/annotate           the session: progress, settings, next image, job list
    GET  /api/annotate/{key}     X-ray, candidates, votes and decisions so far
    POST /api/annotate/{key}     a decision {annotator, outcome, candidate, mask, ...};
                                 409 on a conflict (docs/annotation.md#the-web-api)

An annotation server without a model (`--review`, or `--annotate` alone: `engine` None)
takes its `/api/config` from `routes.annotation.review_router`; `/api/predict` answers 404.
    GET  /openapi.json           every route's request and response schema (`schemas`)

`routes.demo` and `routes.annotation` hold the routes, `schemas` their JSON bodies and
`deps` what they share (settings, engine, store, the token check; held on `app.state`).
Errors are JSON `{"error": "<what is wrong and what to do>"}` with a 4xx status; the
server keeps serving.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import RequestResponseEndpoint

from qatacov_jax.webapp.annotation import CONSENSUS, AnnotationSession
from qatacov_jax.webapp.deps import TOKEN_ERROR, ApiError, Settings, require_token, token_accepted
from qatacov_jax.webapp.engine import Engine
from qatacov_jax.webapp.guards import RequestGuard
from qatacov_jax.webapp.routes import annotation, demo
from qatacov_jax.webapp.routes.demo import STATIC
from qatacov_jax.webapp.schemas import ErrorResponse

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_RESPONSES = {401: {"model": ErrorResponse, "description": "missing or wrong --token"}}


def create_app(
    engine: Engine | None,
    settings: Settings = Settings(),
    store: AnnotationSession | None = None,
) -> FastAPI:
    """The web app over loaded models (`engine.load_engine`) and, for annotation mode, a
    session (`annotation.AnnotationSession`); `engine` None for a review server."""
    if engine is None and store is None:
        raise ValueError("a server needs models (engine) or an annotation session (store)")
    # No /docs or /redoc: their pages load scripts from a CDN; the schema is local.
    app = FastAPI(title="qatacov-jax", docs_url=None, redoc_url=None)
    app.state.engine, app.state.settings, app.state.store = engine, settings, store
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.middleware("http")(guard_uploads)
    # Outermost: the Host check, the streamed body limit and the security headers hold for
    # every request, whatever the routes do (guards.py).
    app.add_middleware(RequestGuard)
    app.include_router(demo.page)
    api = demo.router if engine is not None else annotation.review_router
    for router, prefix, tag in (
        (api, "/api", "demo"),
        (annotation.router, "/api/annotate", "annotation"),
    ):
        app.include_router(
            router,
            prefix=prefix,
            tags=[tag],
            dependencies=[Depends(require_token)],
            responses=API_RESPONSES,
        )
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def api_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, ApiError)
    return error(e.message, e.status)


async def validation_error(request: Request, e: Exception) -> JSONResponse:
    """FastAPI's 422 as one `{"error"}` line naming each bad field."""
    assert isinstance(e, RequestValidationError)
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{where or 'request'}: {err.get('msg')}")
    return error("; ".join(parts), 422)


async def guard_uploads(request: Request, call_next: RequestResponseEndpoint) -> Response:
    """Refuses an `/api/` POST without the token, or with a declared length over the
    limit, before its body is read: FastAPI reads a body before it solves a route's
    dependencies (`deps.require_token`, which checks every `/api/` route)."""
    settings: Settings = request.app.state.settings
    if request.method == "POST" and request.url.path.startswith("/api/"):
        if not token_accepted(settings, request.headers):
            return error(TOKEN_ERROR, 401)
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes + 64 * 1024  # + multipart framing
        if length and length.isdigit() and int(length) > limit:
            return error(
                f"upload of {int(length) / 2**20:.1f} MB is over the --max-upload-mb limit "
                f"of {settings.max_upload_mb:g} MB",
                413,
            )
    return await call_next(request)


def check_host(host: str, token: str | None) -> None:
    """A non-loopback binding needs a token (anyone on the network could use the server)."""
    if host not in LOOPBACK and not token:
        raise ValueError(
            f"--host {host} makes the server reachable from other machines; give it a secret "
            "with --token-file FILE (or $QATACOV_TOKEN); clients then open /?token=SECRET."
        )


def static_files() -> list[Path]:
    """The page's assets (tests check the package ships them and nothing is remote)."""
    return sorted(Path(str(STATIC)).iterdir())


__all__ = ["CONSENSUS", "Settings", "check_host", "create_app", "static_files"]
