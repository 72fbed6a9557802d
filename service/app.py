"""FastAPI application factory: the lifespan loads the bundle once, warms up, then reports ready."""

from __future__ import annotations

import hashlib
import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import pipeline
from service.api import contract
from service.api.routes import router
from service.api.schemas import DEFAULT_MESH_RESOLUTION, DEFAULT_TEXTURE_SIZE
from service.engine.batcher import QueueFull
from service.engine.runtime import Runtime
from service.metrics import Metrics
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
THREE = STATIC / "node_modules" / "three" / "build" / "three.module.js"
#: paths that never need an API key: liveness/readiness probes, Prometheus, the viewer and the API docs
PUBLIC = ("/health/", "/metrics", "/static/", "/docs", "/redoc", "/openapi.json")


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # chunked (no declared length): read it whole first, so an oversize body is a 413 here and not
            # whatever the form parser makes of an exception raised in the middle of its stream (a 400)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client gone
                size += len(message.get("body", b""))
                if size > self.limit:
                    return await _too_large(send, self.limit)
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replay_receive():
                return replay.pop() if replay else await receive()

            return await self.app(scope, replay_receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


class Accounting:
    """Pure ASGI middleware: API keys (when configured), unhandled errors as JSON 500s, and every answer counted
    by route and status. Not ``@app.middleware("http")``: that runs each request in an extra task with memory
    streams, event-loop work that every request, the liveness probe's included, waited behind under load."""

    def __init__(self, app, metrics: Metrics, key_digests: tuple[str, ...]):
        self.app = app
        self.metrics = metrics
        self.keys = key_digests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.keys and not (path == "/" or path.startswith(PUBLIC)) and scope["method"] != "OPTIONS":
            headers = Headers(scope=scope)
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            digest = hashlib.sha256(given.encode()).hexdigest()
            known = next((d for d in self.keys if hmac.compare_digest(d, digest)), None)
            if not given or known is None:
                self.metrics.requests.labels("unauthorised", "401").inc()
                response = JSONResponse(
                    {"detail": "missing or unknown API key (Authorization: Bearer KEY or X-API-Key: KEY)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
            # each key sees (and is cached against) only its own results: routes read request.state.client_scope
            scope.setdefault("state", {})["client_scope"] = known[:32]
        status = None

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:  # counted like any other answer, and a JSON body like every other error
            logger.exception("unhandled error in %s %s", scope["method"], path)
            if status is not None:  # the answer has begun: the connection can only be dropped
                raise
            status = 500
            await JSONResponse({"detail": "internal server error"}, status_code=500)(scope, receive, send)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status or 500)).inc()


async def _too_large(send, limit: int) -> None:
    body = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413).body
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def warmup(runtime: Runtime) -> None:
    """Run every graph once (allocations, kernel selection) and build the caches a request at the API's default
    sizes would wait for (detectors, recogniser, UV tables, mesh sampling) before reporting ready."""
    import asyncio

    import numpy as np

    bundle = runtime.bundle
    if bundle.capabilities["generate"]:
        req = pipeline.MeshRequest(
            seed=0, z=None, w=None, truncation=0.7, expression=np.zeros(bundle.face_model.n_expr, np.float32),
            identity=None, texture_size=DEFAULT_TEXTURE_SIZE, mesh_resolution=DEFAULT_MESH_RESOLUTION,
            outputs=pipeline.OUTPUT_KINDS, blendshapes=False,
        )  # fmt: skip
        await pipeline.generate(bundle, runtime.run_graph, req, pipeline.Timer())
    if bundle.capabilities["reconstruct"]:
        await asyncio.to_thread(pipeline.warm_reconstruct, bundle, DEFAULT_TEXTURE_SIZE)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = Runtime(settings, metrics)  # BundleError here stops the server with the message
        await runtime.start()
        try:
            if settings.warmup:
                await warmup(runtime)
            runtime.ready = True
            app.state.runtime = runtime
            logger.info("ready: %s %s", runtime.bundle.manifest.name, runtime.bundle.manifest.version)
            yield
        finally:
            app.state.runtime = None
            await runtime.stop()

    app = FastAPI(
        title="AlbedoGAN 3D faces",
        version="0.1.0",
        description="Generate or reconstruct realistic 3-D faces: albedo, displacement, detailed meshes.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None

    keys = tuple(hashlib.sha256(k.get_secret_value().encode()).hexdigest() for k in settings.api_keys)
    # inside Accounting (and CORS): an oversize body's 413 is counted like any answer, readable by a browser, and
    # a client without a key is refused before the server reads its body
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(Accounting, metrics=metrics, key_digests=keys)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        runtime = getattr(request.app.state, "runtime", None)
        retry = runtime.retry_after_s() if runtime is not None else 1
        metrics.refused.labels(str(exc).split("'")[1] if "'" in str(exc) else "queue").inc()
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:  # Allow: every method of every route on this path, not just the first's
            methods = set()
            for route in (*app.router.routes, *router.routes):  # the API's routes sit in an included router
                if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
                    methods |= route.methods
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    app.include_router(router)

    def openapi() -> dict:
        """FastAPI's document, refined with the served bundle's sizes and the settings' limits once loaded."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        runtime = app.state.runtime
        if runtime is not None:
            app.openapi_schema = contract.refine(schema, runtime.bundle, settings)
        return schema

    app.openapi = openapi
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def viewer():
        if not THREE.is_file():
            return HTMLResponse(
                "<h1>Viewer assets missing</h1><p>Run <code>npm ci --prefix service/static</code> "
                "(three.js) and reload; the API works regardless, see <a href='/docs'>/docs</a>.</p>",
                status_code=503,
            )
        return FileResponse(STATIC / "index.html", media_type="text/html")

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After", "Content-Disposition"],
        )
    return app
