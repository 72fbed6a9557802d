"""HTTP routes: /generate, /results, /health, /models, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from facecore.bundle import GENERATED_MISSING, Bundle
from service import pipeline
from service.api.contract import MIN_MESH_RESOLUTION, MIN_Z_MAGNITUDE, OUTPUTS_PATTERN
from service.api.deps import RuntimeDep, SettingsDep
from service.api.schemas import DEFAULT_MESH_RESOLUTION, DEFAULT_TEXTURE_SIZE, ErrorBody, GenerateBody, ResultBody
from service.engine import admission
from service.settings import Settings
from service.store import META, ResultTooLarge

logger = logging.getLogger(__name__)
router = APIRouter()

FormatName = Literal["glb", "obj", "zip", "png"]
FORMAT_FILES = {
    "glb": ("mesh.glb", "glb"),
    "obj": ("mesh.obj", "obj"),
    "zip": ("bundle.zip", None),
    "png": ("albedo.png", "albedo"),
}
MEDIA = {
    ".glb": "model/gltf-binary",
    ".obj": "model/obj",
    ".mtl": "model/mtl",
    ".png": "image/png",
    ".zip": "application/zip",
    ".json": "application/json",
}


def mesh_request(body: GenerateBody, bundle: Bundle, settings: Settings, fmt: str | None) -> pipeline.MeshRequest:
    """Check a /generate body against the bundle and the limits; 422 with a message naming the field."""
    codes = bundle.manifest.codes
    model = bundle.face_model

    def fail(msg: str) -> HTTPException:
        return HTTPException(422, detail=msg)

    if body.z is not None and len(body.z) != codes.z_dim:
        raise fail(f"z: expected {codes.z_dim} values, got {len(body.z)}")
    if body.z is not None and max(map(abs, body.z)) <= MIN_Z_MAGNITUDE:
        raise fail(f"z: every value is within ±{MIN_Z_MAGNITUDE:g}; a latent z needs a direction (it is normalised)")
    if body.w is not None and len(body.w) != codes.w_dim:
        raise fail(f"w: expected {codes.w_dim} values, got {len(body.w)}")
    if body.identity is not None and not 1 <= len(body.identity) <= model.n_shape:
        raise fail(f"identity: expected 1 to {model.n_shape} values, got {len(body.identity)}")
    if not settings.min_texture_size <= body.texture_size <= settings.max_texture_size:
        raise fail(f"texture_size: must lie in [{settings.min_texture_size}, {settings.max_texture_size}]")
    if not MIN_MESH_RESOLUTION <= body.mesh_resolution <= settings.max_mesh_resolution:
        raise fail(f"mesh_resolution: must lie in [{MIN_MESH_RESOLUTION}, {settings.max_mesh_resolution}]")
    try:
        expression = model.expression_vector(body.expression)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    identity = None
    if body.identity is not None:
        identity = np.zeros(model.n_shape, np.float32)
        identity[: len(body.identity)] = body.identity
    outputs = set(body.outputs)
    if fmt is not None and FORMAT_FILES[fmt][1] is not None:
        outputs.add(FORMAT_FILES[fmt][1])
    return pipeline.MeshRequest(
        seed=body.seed,
        z=None if body.z is None else np.asarray(body.z, np.float32),
        w=None if body.w is None else np.asarray(body.w, np.float32),
        truncation=body.truncation,
        expression=expression,
        identity=identity,
        texture_size=body.texture_size,
        mesh_resolution=body.mesh_resolution,
        outputs=tuple(sorted(outputs)),
        blendshapes=body.blendshapes,
    )


META_KEYS = {"files": list, "codes": dict, "bundle": dict, "timings_ms": dict}
CHUNK = 1 << 20


def _valid_meta(meta: dict | None) -> dict | None:
    """A stored result's metadata if it has what a response needs (a damaged meta.json counts as absent)."""
    if meta is None or not all(isinstance(meta.get(k), t) for k, t in META_KEYS.items()):
        return None
    return meta


class OpenFileResponse(Response):
    """A file streamed from a handle opened *before* the response starts: a result evicted (or replaced)
    meanwhile cannot truncate the body, because the open handle keeps the file's bytes alive. ``part``: the
    (first, last) bytes of a range request (206), else the whole file."""

    def __init__(
        self,
        file,
        size: int,
        media_type: str,
        filename: str | None = None,
        headers: dict[str, str] | None = None,
        part: tuple[int, int] | None = None,
    ):
        first, last = part if part is not None else (0, size - 1)
        headers = dict(headers or {}, **{"content-length": str(last - first + 1)})
        if part is not None:
            headers["content-range"] = f"bytes {first}-{last}/{size}"
        if filename is not None:
            headers["content-disposition"] = f'attachment; filename="{filename}"'
        super().__init__(media_type=media_type, headers=headers, status_code=206 if part is not None else 200)
        self.file, self.first, self.left = file, first, last - first + 1

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope.get("method") != "HEAD":
                if self.first:
                    await asyncio.to_thread(self.file.seek, self.first)
                while self.left > 0 and (chunk := await asyncio.to_thread(self.file.read, min(CHUNK, self.left))):
                    self.left -= len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.file.close()


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None | Literal[False]:
    """The (first, last) bytes a ``Range`` header asks of a ``size``-byte file; None: the whole file (no header,
    another unit, several ranges: all may be answered whole); False: none of it exists (416)."""
    match = _RANGE.fullmatch((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else False
    start, end = int(first), (int(last) if last else size - 1)
    if start >= size:
        return False
    if end < start:
        return None  # invalid: ignored (RFC 9110 14.1.1)
    return start, min(end, size - 1)


def _file_answer(request: Request, found, result_id: str, name: str) -> Response:
    """A result file's answer to GET/HEAD: its bytes never change (content-addressed), so it carries a strong ETag
    and answers If-None-Match (304), Range (206; 416 beyond its end) and If-Range."""
    etag = f'"{result_id[:32]}-{name}"'
    headers = {"etag": etag, "accept-ranges": "bytes", "cache-control": "private, max-age=86400"}
    media = MEDIA.get(Path(name).suffix, "application/octet-stream")
    if isinstance(found, bytes):
        found_file, size = io.BytesIO(found), len(found)
    else:
        found_file, size = found
    if etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        found_file.close()
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    part = _byte_range(request.headers.get("range"), size) if if_range in (None, etag) else None
    if part is False:
        found_file.close()
        return Response(status_code=416, headers=headers | {"content-range": f"bytes */{size}"})
    return OpenFileResponse(found_file, size, media, headers=headers, part=part)


def _file_response(found, name: str) -> Response:
    """A ``?format=`` answer: the file as an attachment."""
    media = MEDIA.get(Path(name).suffix, "application/octet-stream")
    if isinstance(found, bytes):
        return Response(found, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'})
    return OpenFileResponse(found[0], found[1], media, name)


#: (store, result id, output kind) → (lock, holders and waiters): concurrent first requests for one kind of one
#: result make it once; the others wait for it on the event loop (they had each held an encoding thread while
#: waiting, so a few clients fetching one result's links filled the stage and were refused)
_MAKING: dict[tuple, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _making(key: tuple):
    lock, users = _MAKING.get(key, (None, 0))
    lock = lock or asyncio.Lock()
    _MAKING[key] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _MAKING[key]
        if users == 1:
            del _MAKING[key]
        else:
            _MAKING[key] = (lock, users - 1)


async def _result_file(runtime, result_id: str, name: str, scope: str = ""):
    """A result's file as (open handle, size), or bytes for a file made now; None if absent (or, with API keys,
    another key's).

    A JSON answer makes no file up front: each output kind is made on the first request for one of its files
    (from the result's :data:`pipeline.SOURCE`), and the zip of all files on its first request, in the encoding
    stage (its bounds and the request's deadline: refused with 503 when busy); a file the result has not is no work.
    They are stored when they fit under the cap and answered from memory otherwise.
    """
    if name.startswith(".") or name == META:  # internal files are not part of the result
        return None
    found, makeable = await asyncio.to_thread(_stored_or_makeable, runtime, result_id, name, scope)
    if found is not None or not makeable:
        return found
    kind = pipeline.ZIP_NAME if name == pipeline.ZIP_NAME else pipeline.file_kind(name)
    async with _making((id(runtime.store), result_id, kind)):
        return await runtime.run_stage("encode", _stored_file, runtime, result_id, name)


def _stored_or_makeable(runtime, result_id: str, name: str, scope: str):
    """(the stored file or None, whether the result can make it now)."""
    meta = runtime.store.meta(result_id)
    if meta is None or not _may_use(scope, meta):
        return None, False
    found = runtime.store.open(result_id, name)
    meta = _valid_meta(meta)
    return found, found is None and meta is not None and (name in meta["files"] or name == pipeline.ZIP_NAME)


def _may_use(scope: str, meta: dict) -> bool:
    """Whether a client may use a stored result: with API keys only the key that made it (an id is no secret once
    shared: a log, a link; a result stored before results had owners stays its id's holder's); without keys,
    whoever holds the id."""
    return not scope or meta.get("owner", scope) == scope


def _stored_file(runtime, result_id: str, name: str):
    """The stored file, or (when another request has not made it meanwhile) the file made now; None if absent."""
    return runtime.store.open(result_id, name) or _make_file(runtime, result_id, name)


def _make_file(runtime, result_id: str, name: str):
    """Make ``name`` (its output kind, or the zip of every file) from the result's source; None if absent."""
    meta = _valid_meta(runtime.store.meta(result_id))
    if meta is None or (name not in meta["files"] and name != pipeline.ZIP_NAME):
        return None
    if name != pipeline.ZIP_NAME:
        return _make(runtime, result_id, {pipeline.file_kind(name)}).get(name)
    stored = {k: v for k, v in runtime.store.files(result_id).items() if k != pipeline.ZIP_NAME}
    missing = {pipeline.file_kind(n) for n in meta["files"] if n not in stored}
    data = pipeline.zip_files(stored | _make(runtime, result_id, missing))
    runtime.store.add(result_id, name, data)
    return data


def _make(runtime, result_id: str, kinds: set[str | None]) -> dict[str, bytes]:
    """Make (and store) the files of output ``kinds`` of a result from its source; {} without one (kinds the
    result has not, None included, make nothing)."""
    source = runtime.store.read(result_id, pipeline.SOURCE) if kinds else None
    if source is None:
        return {}
    files = pipeline.make_files(runtime.bundle, source, kinds, _timer(runtime))
    for name, data in files.items():
        runtime.store.add(result_id, name, data)
    return files


def _timer(runtime) -> pipeline.Timer:
    """A stage timer that reports to the stage-latency histogram."""
    return pipeline.Timer(lambda stage, dt: runtime.metrics.stage_latency.labels(stage).observe(dt))


def _stored_meta_of(runtime, result_id: str) -> dict | None:
    return _valid_meta(runtime.store.meta(result_id))


def _json(result_id: str, meta: dict, cached: bool) -> Response:
    files = sorted({*meta["files"], pipeline.ZIP_NAME})
    body = ResultBody(
        id=result_id,
        links={name: f"/results/{result_id}/{name}" for name in files},
        codes=meta["codes"],
        bundle=meta["bundle"],
        timings_ms=meta["timings_ms"],
        cached=cached,
        face=meta.get("face"),
        albedo=meta.get("albedo"),
        texture=meta.get("texture") if isinstance(meta.get("texture"), dict) else None,
    )
    return JSONResponse(body.model_dump())


def _scope(request: Request) -> str:
    """The client's result scope: its API key's fingerprint when keys are configured, else shared."""
    return getattr(request.state, "client_scope", "")


async def _serve(
    request: Request, runtime, settings: Settings, canonical: bytes, fmt: str | None, compute, kind: tuple
) -> Response:
    """Answer from the store if it holds the result, else compute it (under the request's deadline), store it
    (unless it alone exceeds the cap) and answer from memory: never a second read that eviction could lose.
    ``kind``: what predicts the request's time in the pipeline (the request gate's estimate), e.g. its sizes."""
    began = time.monotonic()  # a DELETE of the result after this point wins over storing it (see store.put)
    scope = _scope(request)
    result_id = runtime.result_id(canonical, scope)
    loop = asyncio.get_running_loop()
    token = admission.deadline.set(loop.time() + settings.request_timeout_s)
    try:
        if fmt is None:
            found = await asyncio.to_thread(_stored_meta_of, runtime, result_id)
        else:  # a stored result's file, made now if it was left for its first fetch (under the encoding stage)
            found = await _result_file(runtime, result_id, FORMAT_FILES[fmt][0], scope)
        # `cached` tells a client that *someone* asked this before: only said where ids are per client (API keys)
        if found is not None:
            if fmt is None:
                return _json(result_id, found, cached=bool(scope))
            return _file_response(found, FORMAT_FILES[fmt][0])
        timer = _timer(runtime)
        # JSON answers give links, whose files are made when first fetched; a format answer makes its file now
        now = () if fmt is None else pipeline.OUTPUT_KINDS if fmt == "zip" else (FORMAT_FILES[fmt][1],)
        try:
            gated = _gated(runtime, compute(timer, now), (*kind, fmt))
            result = await _unless_gone(request, asyncio.wait_for(gated, settings.request_timeout_s))
        except ClientGone:
            runtime.metrics.abandoned.inc()
            return Response(status_code=499)  # nobody reads it
        except pipeline.RequestError as exc:
            raise HTTPException(exc.status, detail=str(exc)) from exc
        except TimeoutError as exc:
            raise HTTPException(
                503,
                detail=f"the request did not finish within {settings.request_timeout_s} s; the service is busy",
                headers={"Retry-After": str(runtime.retry_after_s())},
            ) from exc
    finally:
        admission.deadline.reset(token)
    meta = _stored_meta(result, timer) | ({"owner": scope} if scope else {})
    try:
        await asyncio.to_thread(runtime.store.put, result_id, result.files, meta, began)
    except ResultTooLarge as exc:
        if fmt is None:  # links to files that were never stored would be dead
            raise HTTPException(
                413,
                detail=f"{exc}; ask for one file with ?format=glb|obj|zip|png, or lower mesh_resolution, "
                "texture_size or blendshapes",
            ) from exc
    except OSError as exc:
        logger.error("cannot store result %s: %s", result_id, exc)
        raise HTTPException(
            503, detail="the results folder is not writable; retry later", headers={"Retry-After": "5"}
        ) from exc
    if fmt is None:
        return _json(result_id, meta, cached=False)
    name = FORMAT_FILES[fmt][0]
    if name == pipeline.ZIP_NAME:
        data = await runtime.run_stage("encode", pipeline.zip_files, result.files)
        await asyncio.to_thread(runtime.store.add, result_id, name, data)
    else:
        data = result.files[name]
    return _file_response(data, name)


class ClientGone(Exception):
    """The client closed its connection before the answer."""


async def _unless_gone(request: Request, work):
    """``work``'s result, or :class:`ClientGone` (``work`` cancelled) when the client disconnects first: a request
    its client gave up on (a timeout, a retry) stops at its next stage instead of computing to the end, its place
    in the gate and the stages freed for the requests still awaited."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # this handler itself is being cancelled (shutdown)
            raise asyncio.CancelledError
        if gone.done() and not gone.cancelled() and gone.exception() is not None:
            raise gone.exception()  # the connection's receive failed: not a disconnect
        raise ClientGone
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (the request's body has been read: what comes next is that or nothing)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _gated(runtime, work, kind: tuple):
    """``work`` once the request gate admits it (see :class:`service.engine.admission.Gate`)."""
    try:
        async with runtime.gate.enter(kind):
            return await work
    finally:
        work.close()  # never started when the gate refused: no "coroutine was never awaited"


FILE_RESPONSES = {
    200: {
        "description": "JSON with links, or with `?format=` the file itself",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ResultBody"}},
            "model/gltf-binary": {"schema": {"type": "string", "format": "binary"}},
            "model/obj": {"schema": {"type": "string", "format": "binary"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"model": ErrorBody, "description": "malformed request body"},
    401: {"model": ErrorBody, "description": "missing or unknown API key (when FACE_API_KEYS is set)"},
    413: {"model": ErrorBody, "description": "body, image or result too large"},
    422: {"model": ErrorBody, "description": "invalid parameters for this bundle"},
    503: {"model": ErrorBody, "description": "busy or not ready: retry after Retry-After seconds"},
}


@router.post("/generate", response_model=ResultBody, responses=FILE_RESPONSES)
async def generate(
    request: Request,
    body: GenerateBody,
    runtime: RuntimeDep,
    settings: SettingsDep,
    format: Annotated[FormatName | None, Query(description="return this file instead of JSON")] = None,  # noqa: A002
) -> Response:
    """A 3-D face from a seed or latent: albedo, displacement, normal map, detailed OBJ and GLB."""
    bundle = runtime.bundle
    if not bundle.capabilities["generate"]:
        raise HTTPException(503, detail="this bundle has no mapping/albedo graphs: /generate is unavailable")
    req = mesh_request(body, bundle, settings, format)

    def compute(timer, now):
        return pipeline.generate(bundle, runtime.run_graph, req, timer, runtime.run_stage, now)

    kind = ("generate", req.texture_size, req.mesh_resolution, req.blendshapes)
    return await _serve(request, runtime, settings, req.canonical(bundle), format, compute, kind)


@router.post("/reconstruct", response_model=ResultBody, responses={**FILE_RESPONSES, 415: {"model": ErrorBody}})
async def reconstruct(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="a face photo: JPEG, PNG or WebP")],
    texture_size: Annotated[int, Form()] = DEFAULT_TEXTURE_SIZE,
    mesh_resolution: Annotated[int, Form()] = DEFAULT_MESH_RESOLUTION,
    outputs: Annotated[str, Form(description="comma-separated: albedo,displacement,normal,obj,glb")] = (
        "albedo,displacement,normal,obj,glb"
    ),
    blendshapes: Annotated[bool, Form()] = False,
    detector: Annotated[Literal["auto", "hog", "cnn"], Form()] = "auto",
    albedo: Annotated[
        Literal["photo", "generated"],
        Form(description="photo: unwrapped from the photo and de-lit; generated: AlbedoGAN at the face's latent"),
    ] = "photo",
    format: Annotated[FormatName | None, Query(description="return this file instead of JSON")] = None,  # noqa: A002
) -> Response:
    """A 3-D face from a photo: fitted codes and landmarks, albedo (from the photo or AlbedoGAN), OBJ and GLB.

    The photo is used for this request only and never stored; the result (codes, landmarks, texture) is kept
    under an unguessable id for ``FACE_RESULTS_TTL_S`` after its last use, or until ``DELETE /results/{id}``.
    """
    bundle = runtime.bundle
    if not bundle.capabilities["reconstruct"]:
        raise HTTPException(503, detail="this bundle has no encoder/displacement graphs: /reconstruct is unavailable")
    if albedo == "generated" and not bundle.generated_reconstruct:
        raise HTTPException(422, detail=f"albedo: 'generated' needs a latent for the photo; {GENERATED_MISSING}")
    if not re.fullmatch(OUTPUTS_PATTERN, outputs):
        raise HTTPException(
            422, detail=f"outputs: {outputs[:100]!r} is not a comma-separated list of {list(pipeline.OUTPUT_KINDS)}"
        )
    kinds = [k.strip() for k in outputs.split(",")]
    body = GenerateBody(seed=0, texture_size=texture_size, mesh_resolution=mesh_resolution, outputs=kinds)
    checked = mesh_request(body, bundle, settings, format)
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, detail=f"image: larger than {settings.max_upload_bytes} bytes")
    req = pipeline.ReconstructRequest(
        photo_sha256=(await asyncio.to_thread(hashlib.sha256, data)).hexdigest(),  # ~20 ms for 10 MB: off the loop
        texture_size=checked.texture_size,
        mesh_resolution=checked.mesh_resolution,
        outputs=checked.outputs,
        blendshapes=blendshapes,
        detector=detector,
        albedo=albedo,
    )

    async def compute(timer, now):
        pixels, size = await runtime.run_stage("detect", pipeline.decode_photo_sized, data, settings.max_image_pixels)
        return await pipeline.reconstruct(bundle, runtime.run_graph, req, pixels, timer, runtime.run_stage, now, size)

    kind = ("reconstruct", req.albedo, req.texture_size, req.mesh_resolution, req.blendshapes)
    return await _serve(request, runtime, settings, req.canonical(bundle), format, compute, kind)


def _stored_meta(result: pipeline.Result, timer: pipeline.Timer) -> dict:
    timings_ms = {k: round(v * 1000, 2) for k, v in timer.timings.items()}
    return dict(result.meta, files=result.names, timings_ms=timings_ms)


NOT_FOUND = {404: {"model": ErrorBody, "description": "unknown, expired or deleted"}}


@router.get("/results/{result_id}", response_model=ResultBody, responses=NOT_FOUND)
async def result_info(request: Request, result_id: str, runtime: RuntimeDep) -> Response:
    """A stored result's JSON (links, codes, landmarks)."""
    meta = await asyncio.to_thread(_stored_meta_of, runtime, result_id) if runtime.store.valid_id(result_id) else None
    if meta is None or not _may_use(_scope(request), meta):
        raise HTTPException(404, detail="no such result (unknown or expired)")
    return _json(result_id, meta, cached=False)


@router.delete("/results/{result_id}", status_code=204, responses=NOT_FOUND)
async def delete_result(request: Request, result_id: str, runtime: RuntimeDep) -> Response:
    """Delete a result and all its files now (whoever holds the id may, ids being unguessable; with API keys only
    the key that made it)."""
    meta = await asyncio.to_thread(runtime.store.meta, result_id) if runtime.store.valid_id(result_id) else None
    if meta is None or not _may_use(_scope(request), meta):
        raise HTTPException(404, detail="no such result (unknown or expired)")
    if not await asyncio.to_thread(runtime.store.delete, result_id):
        raise HTTPException(404, detail="no such result (unknown or expired)")
    return Response(status_code=204)


@router.api_route(
    "/results/{result_id}/{name}",
    methods=["GET", "HEAD"],
    responses={
        200: {
            "description": "the file",
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in sorted(set(MEDIA.values()))},
        },
        206: {"description": "the bytes a Range header asked for (Content-Range)"},
        304: {"description": "If-None-Match names the file's ETag: unchanged (a result's files never change)"},
        416: {"description": "the Range lies beyond the file's end (Content-Range: bytes */size)"},
        **NOT_FOUND,
    },
    response_class=Response,
)
async def result_file(request: Request, result_id: str, name: str, runtime: RuntimeDep) -> Response:
    """One file of a result (``bundle.zip``: all of them); HEAD: its headers (its size) without the body; byte
    ranges (206) and conditional requests on its ETag (304)."""
    found = await _result_file(runtime, result_id, name, _scope(request))
    if found is None:
        raise HTTPException(404, detail="no such result file (unknown, expired or not produced)")
    return _file_answer(request, found, result_id, name)


@router.get("/health/live")
async def live() -> dict:
    return {"status": "alive"}


@router.get("/health/ready", responses={503: {"description": "loading, a worker restarting, or results not writable"}})
async def ready(request: Request) -> Response:
    """200 once the bundle is loaded and warmed up, while every batcher worker runs and results can be written."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    problems = await runtime.problems()
    if problems:
        return JSONResponse(
            {"status": "unavailable", "detail": problems}, status_code=503, headers={"Retry-After": "2"}
        )
    return JSONResponse(
        {"status": "ready", "bundle": runtime.bundle.manifest.name, "capabilities": runtime.bundle.capabilities}
    )


@router.get("/models")
async def models(runtime: RuntimeDep) -> dict:
    bundle = runtime.bundle
    return {
        "manifest": bundle.manifest.model_dump(),
        "digest": bundle.digest,
        "capabilities": bundle.capabilities,
        # what /reconstruct's ``albedo`` accepts with this bundle (``generated`` needs a latent for the photo)
        "reconstruct_albedo": ["photo", "generated"] if bundle.generated_reconstruct else ["photo"],
        "providers": {name: s.providers for name, s in runtime.sessions.items()},
        "expressions": list(bundle.face_model.expr_names),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
    },
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
