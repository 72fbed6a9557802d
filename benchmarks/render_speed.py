"""Renderer speed: the default face mesh, forward + backward (loss = image mean; grads to verts, albedo, sh).

python benchmarks/render_speed.py [--batch 8] [--size 224] [--texture 256] [--runs 7] [--threads N] [--profile]

Prints the median and best milliseconds per iteration on CPU, and on CUDA when it is available.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.face.model import FaceModel
from models.render import MeshRenderer, WeakPerspectiveCamera, zbuffer


def make_inputs(fm: FaceModel, batch: int, texture: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = 0.5 * torch.randn(batch, fm.n_shape, generator=g)
    expr = 0.3 * torch.rand(batch, fm.n_expr, generator=g)
    pose = torch.zeros(batch, len(fm.joint_names), 3)
    pose[:, 0, 1] = torch.linspace(-0.6, 0.6, batch)  # yaw ±35°
    with torch.no_grad():
        verts = fm(shape, expr, pose)
    cam = WeakPerspectiveCamera.framing(verts, margin=0.1)
    albedo = torch.rand(batch, 3, texture, texture, generator=g)
    sh = torch.zeros(batch, 9, 3)
    sh[:, 0] = 3.0
    sh[:, 1:4] = 0.3 * torch.randn(batch, 3, 3, generator=g)
    to = {"device": device}
    cam = WeakPerspectiveCamera(cam.scale.to(**to), cam.translation.to(**to))
    return verts.to(**to), cam, albedo.to(**to), sh.to(**to)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(1000 * (time.perf_counter() - t))
    return out


def bench(device: torch.device, args: argparse.Namespace) -> None:
    fm = FaceModel.from_file().to(device)
    renderer = MeshRenderer.from_face_model(fm, args.size).to(device)
    verts, cam, albedo, sh = make_inputs(fm, args.batch, args.texture, device)

    def step() -> None:
        v = verts.detach().requires_grad_(True)
        a = albedo.detach().requires_grad_(True)
        s = sh.detach().requires_grad_(True)
        out = renderer(v, cam, a, s)
        out.image.mean().backward()

    def forward_only() -> None:
        with torch.no_grad():
            renderer(verts, cam, albedo, sh)

    def zbuf_only() -> None:
        zbuffer(cam.project(verts), renderer.faces, args.size)

    with torch.no_grad():
        cover = renderer(verts, cam, albedo, sh).mask.mean().item()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name}, torch {torch.__version__}; batch {args.batch}, {fm.n_verts} verts, "
        f"{len(fm.faces)} triangles, {args.size}x{args.size}, texture {args.texture}², coverage {100 * cover:.0f} %"
    )
    for label, fn in (("z-buffer only", zbuf_only), ("forward", forward_only), ("forward+backward", step)):
        ms = time_ms(fn, device, args.runs)
        print(f"  {label:17s} median {statistics.median(ms):7.1f} ms   best {min(ms):7.1f} ms")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--texture", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of forward+backward")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench(torch.device("cpu"), args)
    if torch.cuda.is_available() and not args.cpu_only:
        bench(torch.device("cuda"), args)
    elif not torch.cuda.is_available():
        print("CUDA: not available on this machine")


if __name__ == "__main__":
    main()
