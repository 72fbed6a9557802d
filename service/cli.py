"""``albedogan``: the service's pipeline over folders, without a server.

    albedogan reconstruct PHOTOS/ --out OUT/        # one OUT/<photo stem>/ per face photo
    albedogan generate --seeds 0-99 --out OUT/      # one OUT/seed_<n>/ per seed

Every output folder holds exactly the files the service stores for the same request (same bytes) plus
``result.json``: the request, its content address (``key``: sha256 of the bundle digest and the canonical
request, what the service's result id is a keyed hash of) and the fitted codes. Folders are written atomically, so a run
that is interrupted and started again skips what is done; a folder made with other options is redone. A photo
that fails (no face, not an image, …) is reported and skipped; the exit status is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from facecore.bundle import GENERATED_MISSING, Bundle, BundleError, load_bundle
from service import pipeline
from service.settings import Settings

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
RESULT_JSON = "result.json"


class InputError(ValueError):
    """One input cannot be processed; it is reported and skipped."""


class UsageError(RuntimeError):
    """Nothing can be processed (bundle, options, output folder); reported, exit status 2."""


@dataclass(frozen=True)
class Job:
    name: str  # output folder name
    label: str  # what the progress messages call it
    payload: Any  # seed (generate) or photo path (reconstruct)


def parse_seeds(spec: str) -> list[int]:
    """``"0-99"``, ``"3,7,10-12"`` → sorted unique seeds."""
    seeds: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--seeds: {part!r} is not N or N-M") from exc
        if not 0 <= a <= b <= 2**32 - 1:
            raise argparse.ArgumentTypeError(f"--seeds: {part!r} must be 0 ≤ N ≤ M < 2**32")
        seeds.update(range(a, b + 1))
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: no seeds given")
    return sorted(seeds)


def photo_jobs(inputs: Sequence[Path]) -> list[Job]:
    """The photos of the given folders (not recursive) and files, one output name each (stem; + suffix on clashes)."""
    photos: list[Path] = []
    for p in inputs:
        if p.is_dir():
            photos += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES)
        elif p.is_file():
            photos.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    stems: dict[str, int] = {}
    for p in photos:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    jobs = []
    for p in photos:
        name = p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        jobs.append(Job(name, str(p), p))
    return jobs


def seed_jobs(seeds: Sequence[int]) -> list[Job]:
    width = max(4, len(str(max(seeds))))
    return [Job(f"seed_{s:0{width}d}", f"seed {s}", s) for s in seeds]


def done_key(folder: Path) -> str | None:
    """The request key of a finished output folder, or None."""
    try:
        return json.loads((folder / RESULT_JSON).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_atomically(folder: Path, files: Mapping[str, bytes], record: Mapping[str, Any]) -> None:
    """Write ``files`` + ``result.json`` into a temporary sibling, then rename it to ``folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / RESULT_JSON).write_text(json.dumps(dict(record), indent=1, sort_keys=True))
        if folder.exists():  # an older result made with other options
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Runner:
    """The bundle's graphs on onnxruntime, called one request at a time (the service's batch of one)."""

    def __init__(self, settings: Settings):
        from service.engine.sessions import open_sessions

        self.settings = settings
        self.bundle: Bundle = load_bundle(settings.bundle)
        self.sessions = open_sessions(self.bundle, settings.providers, settings.intra_op_threads)

    async def run_graph(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self.sessions[name].run, inputs)


def _check(body_kwargs: dict[str, Any], runner: Runner) -> pipeline.MeshRequest:
    """The service's own validation of a /generate-style request (the same limits and messages)."""
    from fastapi import HTTPException
    from pydantic import ValidationError

    from service.api.routes import mesh_request
    from service.api.schemas import GenerateBody

    try:
        return mesh_request(GenerateBody(**body_kwargs), runner.bundle, runner.settings, None)
    except ValidationError as exc:
        raise InputError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    except HTTPException as exc:
        raise InputError(str(exc.detail)) from exc


def generate_request(args: argparse.Namespace, runner: Runner, seed: int) -> pipeline.MeshRequest:
    return _check(
        dict(
            seed=seed,
            truncation=args.truncation,
            texture_size=args.texture_size,
            mesh_resolution=args.mesh_resolution,
            outputs=args.outputs,
            blendshapes=args.blendshapes,
        ),
        runner,
    )


def reconstruct_request(args: argparse.Namespace, runner: Runner, data: bytes) -> pipeline.ReconstructRequest:
    """What the service's /reconstruct route builds from the same form fields."""
    checked = _check(
        dict(seed=0, texture_size=args.texture_size, mesh_resolution=args.mesh_resolution, outputs=args.outputs),
        runner,
    )
    if len(data) > runner.settings.max_upload_bytes:
        raise InputError(f"image: larger than {runner.settings.max_upload_bytes} bytes")
    return pipeline.ReconstructRequest(
        photo_sha256=hashlib.sha256(data).hexdigest(),
        texture_size=checked.texture_size,
        mesh_resolution=checked.mesh_resolution,
        outputs=checked.outputs,
        blendshapes=args.blendshapes,
        detector=args.detector,
        albedo=args.albedo,
    )


async def run_job(args: argparse.Namespace, runner: Runner, job: Job) -> str:
    """Process one input; returns "done" or "skipped" (already done); raises InputError for a bad input."""
    bundle = runner.bundle
    timer = pipeline.Timer()
    if args.command == "generate":
        req: pipeline.MeshRequest | pipeline.ReconstructRequest = generate_request(args, runner, job.payload)
        request = {"endpoint": "generate", "seed": job.payload}
    else:
        try:
            data = Path(job.payload).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}") from exc
        req = reconstruct_request(args, runner, data)
        request = {"endpoint": "reconstruct", "photo": Path(job.payload).name, "photo_sha256": req.photo_sha256}
    key = req.key(bundle)
    folder = args.out / job.name
    if done_key(folder) == key:
        return "skipped"
    try:
        if isinstance(req, pipeline.MeshRequest):
            result = await pipeline.generate(bundle, runner.run_graph, req, timer)
        else:
            pixels, size = pipeline.decode_photo_sized(data, runner.settings.max_image_pixels)
            result = await pipeline.reconstruct(bundle, runner.run_graph, req, pixels, timer, photo_size=size)
    except ValueError as exc:  # pipeline.PhotoError and the like: this input cannot be made into a face
        raise InputError(str(exc)) from exc
    options = {k: getattr(req, k) for k in ("texture_size", "mesh_resolution", "outputs", "blendshapes")}
    record = {"key": key, "request": request | options, **result.meta, "files": sorted(result.files)}
    if isinstance(req, pipeline.ReconstructRequest):
        record["request"] |= {"detector": req.detector, "albedo": req.albedo}
    else:
        record["request"]["truncation"] = req.truncation
    await asyncio.to_thread(write_atomically, folder, result.files, record)
    return "done"


async def run_all(args: argparse.Namespace, jobs: Sequence[Job]) -> dict[str, int]:
    runner = Runner(Settings(**({"bundle": args.bundle} if args.bundle else {})))
    capability = runner.bundle.capabilities[args.command]
    if not capability:
        raise UsageError(f"the bundle {runner.settings.bundle} cannot {args.command} (graphs missing)")
    if getattr(args, "albedo", None) == "generated" and not runner.bundle.generated_reconstruct:
        raise UsageError(f"--albedo generated needs a latent for the photo; {GENERATED_MISSING}")
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for job in tqdm(jobs, unit="face", disable=args.quiet, dynamic_ncols=True):
        try:
            counts[await run_job(args, runner, job)] += 1
        except InputError as exc:
            counts["failed"] += 1
            tqdm.write(f"error: {job.label}: {exc}", file=sys.stderr)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="albedogan", description="AlbedoGAN 3D faces for folders, without a server")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per face)")
    common.add_argument("--bundle", type=Path, help="model bundle folder or zip (default: FACE_BUNDLE or embedded)")
    common.add_argument("--texture-size", type=int, default=512)
    common.add_argument("--mesh-resolution", type=int, default=256)
    common.add_argument(
        "--outputs",
        type=lambda s: [k.strip() for k in s.split(",") if k.strip()],
        default=list(pipeline.OUTPUT_KINDS),
        help="comma-separated: " + ",".join(pipeline.OUTPUT_KINDS),
    )
    common.add_argument("--blendshapes", action="store_true", help="ARKit morph targets in the GLB")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rec = sub.add_parser("reconstruct", parents=[common], help="a 3-D face per photo (JPEG/PNG/WebP)")
    rec.add_argument("photos", nargs="+", type=Path, help="photo files or folders of photos")
    rec.add_argument("--detector", choices=("auto", "hog", "cnn"), default="auto")
    rec.add_argument("--albedo", choices=("photo", "generated"), default="photo")
    gen = sub.add_parser("generate", parents=[common], help="a random 3-D face per seed")
    gen.add_argument("--seeds", type=parse_seeds, required=True, help="e.g. 0-99 or 1,5,10-12")
    gen.add_argument("--truncation", type=float, default=0.7)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        jobs = seed_jobs(args.seeds) if args.command == "generate" else photo_jobs(args.photos)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(run_all(args, jobs))
    except (UsageError, BundleError, OSError) as exc:  # nothing can be done: no bundle, an unwritable --out, …
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{counts['done']} done, {counts['skipped']} already done, {counts['failed']} failed → {args.out}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
