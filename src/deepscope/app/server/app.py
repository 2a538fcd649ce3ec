"""The FastAPI application: the token check, errors as JSON, the API routes (``routes``) and the page's static
files at ``/``."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepscope._version import __version__
from deepscope.app.server.problems import NotFoundError, error_body, status_of
from deepscope.app.server.routes import router
from deepscope.app.server.security import COOKIE
from deepscope.app.server.workbench import Workbench
from deepscope.errors import DeepscopeError

log = logging.getLogger("deepscope.server")
WEB = Path(__file__).resolve().parent.parent / "web"


def create_app(bench: Workbench, web: Path | None = WEB) -> FastAPI:
    """The workbench application over ``bench`` (its models, images and pools; whoever made ``bench`` closes it);
    ``web``: the folder of the page served at ``/`` (None: the API only).

    >>> import tempfile
    >>> from deepscope.app.server.workbench import Settings, open_workbench
    >>> bench = open_workbench(["zoo:lenet_mnist"], settings=Settings(root=tempfile.mkdtemp()))
    >>> [path for path in create_app(bench).openapi()["paths"] if "jobs" in path]
    ['/api/jobs/{job_id}']
    >>> bench.close()
    """

    app = FastAPI(
        title="deepscope workbench",
        version=__version__,
        description="See inside computer-vision networks. The contract: docs/workbench-api.md.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.bench = bench

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        access = bench.access
        if not access.required:
            return await call_next(request)
        header = request.headers.get("authorization", "")
        offered = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.query_params.get("token") or request.cookies.get(COOKIE)
        )
        try:
            access.check(offered)
        except DeepscopeError as error:
            return JSONResponse(error_body(error), status_code=status_of(error))
        response = await call_next(request)
        if request.cookies.get(COOKIE) != access.token:
            response.set_cookie(COOKIE, access.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(DeepscopeError)
    async def deepscope_error(request: Request, error: DeepscopeError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=status_of(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "the request is not valid"
        return JSONResponse(
            {
                "error": f"bad request: {message}",
                "kind": "RequestValidationError",
                "detail": [
                    {
                        "loc": list(p.get("loc", ())),
                        "msg": str(p.get("msg", "")),
                        "type": str(p.get("type", "")),
                    }
                    for p in problems
                ],
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            body = error_body(NotFoundError(f"no route {request.method} {request.url.path}; see /api/docs"))
        else:
            body = {"error": str(error.detail), "kind": "HTTPException"}
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(error), status_code=500)

    app.include_router(router, prefix="/api")
    if web is not None and web.is_dir():
        app.mount("/", StaticFiles(directory=web, html=True), name="web")
    return app
