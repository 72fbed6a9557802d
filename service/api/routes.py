"""HTTP routes: /generate, /results, /health, /models, /metrics."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from facecore.bundle import Bundle
from service import pipeline
from service.api.deps import RuntimeDep, SettingsDep
from service.api.schemas import GenerateBody, ResultBody
from service.settings import Settings

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
    if body.w is not None and len(body.w) != codes.w_dim:
        raise fail(f"w: expected {codes.w_dim} values, got {len(body.w)}")
    if body.identity is not None and not 1 <= len(body.identity) <= model.n_shape:
        raise fail(f"identity: expected 1 to {model.n_shape} values, got {len(body.identity)}")
    if not settings.min_texture_size <= body.texture_size <= settings.max_texture_size:
        raise fail(f"texture_size: must lie in [{settings.min_texture_size}, {settings.max_texture_size}]")
    if not 32 <= body.mesh_resolution <= settings.max_mesh_resolution:
        raise fail(f"mesh_resolution: must lie in [32, {settings.max_mesh_resolution}]")
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


def _file(runtime, result_id: str, name: str):
    """A stored file; the zip of all files is built on first request (most clients never ask for it)."""
    path = runtime.store.path(result_id, name)
    if path is None and name == pipeline.ZIP_NAME and runtime.store.meta(result_id) is not None:
        files = {k: v for k, v in runtime.store.files(result_id).items() if k != pipeline.ZIP_NAME}
        path = runtime.store.add(result_id, name, pipeline.zip_files(files))
    return path


async def _respond(runtime, result_id: str, fmt: str | None, cached: bool) -> Response:
    meta = runtime.store.meta(result_id)
    if meta is None:  # evicted between storing and answering: extremely unlikely; the client may retry
        raise HTTPException(503, detail="result was evicted; retry", headers={"Retry-After": "1"})
    if fmt is not None:
        name = FORMAT_FILES[fmt][0]
        path = await asyncio.to_thread(_file, runtime, result_id, name)
        if path is None:
            raise HTTPException(404, detail=f"this result has no {name}")
        return FileResponse(path, media_type=MEDIA[path.suffix], filename=name)
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
    )
    return JSONResponse(body.model_dump())


@router.post("/generate", response_model=ResultBody, responses={422: {}, 503: {}, 504: {}})
async def generate(
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
    result_id = req.key(bundle)
    cached = runtime.store.meta(result_id) is not None
    if not cached:
        timer = pipeline.Timer(lambda stage, dt: runtime.metrics.stage_latency.labels(stage).observe(dt))
        try:
            result = await asyncio.wait_for(
                pipeline.generate(bundle, runtime.run_graph, req, timer), settings.request_timeout_s
            )
        except TimeoutError as exc:
            raise HTTPException(504, detail=f"generation took longer than {settings.request_timeout_s} s") from exc
        await asyncio.to_thread(runtime.store.put, result_id, result.files, _stored_meta(result, timer))
    return await _respond(runtime, result_id, format, cached)


@router.post("/reconstruct", response_model=ResultBody, responses={413: {}, 415: {}, 422: {}, 503: {}, 504: {}})
async def reconstruct(
    runtime: RuntimeDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="a face photo: JPEG, PNG or WebP")],
    texture_size: Annotated[int, Form()] = 512,
    mesh_resolution: Annotated[int, Form()] = 256,
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
    """A 3-D face from a photo: fitted codes and landmarks, albedo (from the photo or AlbedoGAN), OBJ and GLB."""
    bundle = runtime.bundle
    if not bundle.capabilities["reconstruct"]:
        raise HTTPException(503, detail="this bundle has no encoder/displacement graphs: /reconstruct is unavailable")
    if albedo == "generated" and "ws" not in bundle.manifest.graphs["encoder"].outputs:
        raise HTTPException(
            422, detail="albedo: 'generated' needs an encoder graph with a 'ws' output; this bundle has none"
        )
    kinds = [k.strip() for k in outputs.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(pipeline.OUTPUT_KINDS))
    if unknown or not kinds:
        raise HTTPException(
            422, detail=f"outputs: unknown or empty {unknown or kinds}; use {list(pipeline.OUTPUT_KINDS)}"
        )
    body = GenerateBody(seed=0, texture_size=texture_size, mesh_resolution=mesh_resolution, outputs=kinds)
    checked = mesh_request(body, bundle, settings, format)
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, detail=f"image: larger than {settings.max_upload_bytes} bytes")
    req = pipeline.ReconstructRequest(
        photo_sha256=hashlib.sha256(data).hexdigest(),
        texture_size=checked.texture_size,
        mesh_resolution=checked.mesh_resolution,
        outputs=checked.outputs,
        blendshapes=blendshapes,
        detector=detector,
        albedo=albedo,
    )
    result_id = req.key(bundle)
    cached = runtime.store.meta(result_id) is not None
    if not cached:
        try:
            pixels = pipeline.decode_photo(data, settings.max_image_pixels)
            timer = pipeline.Timer(lambda stage, dt: runtime.metrics.stage_latency.labels(stage).observe(dt))
            result = await asyncio.wait_for(
                pipeline.reconstruct(bundle, runtime.run_graph, req, pixels, timer), settings.request_timeout_s
            )
        except pipeline.PhotoError as exc:
            raise HTTPException(exc.status, detail=str(exc)) from exc
        except TimeoutError as exc:
            raise HTTPException(504, detail=f"reconstruction took longer than {settings.request_timeout_s} s") from exc
        await asyncio.to_thread(runtime.store.put, result_id, result.files, _stored_meta(result, timer))
    return await _respond(runtime, result_id, format, cached)


def _stored_meta(result: pipeline.Result, timer: pipeline.Timer) -> dict:
    return dict(
        result.meta, files=sorted(result.files), timings_ms={k: round(v * 1000, 2) for k, v in timer.timings.items()}
    )


@router.get("/results/{result_id}")
async def result_info(result_id: str, runtime: RuntimeDep) -> Response:
    if not runtime.store.valid_id(result_id) or runtime.store.meta(result_id) is None:
        raise HTTPException(404, detail="no such result (unknown or expired)")
    return await _respond(runtime, result_id, None, True)


@router.get("/results/{result_id}/{name}")
async def result_file(result_id: str, name: str, runtime: RuntimeDep) -> Response:
    path = await asyncio.to_thread(_file, runtime, result_id, name)
    if path is None:
        raise HTTPException(404, detail="no such result file (unknown, expired or not produced)")
    return FileResponse(path, media_type=MEDIA.get(path.suffix, "application/octet-stream"))


@router.get("/health/live")
async def live() -> dict:
    return {"status": "alive"}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
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
        "providers": {name: s.providers for name, s in runtime.sessions.items()},
        "expressions": list(bundle.face_model.expr_names),
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
