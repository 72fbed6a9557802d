"""Smoke test of the real deployment: build, run, kill a replica under load, check every result survived.

    python docker/smoke.py            # needs a Docker engine and docker compose (v2) or docker-compose (v1)

1. builds the CPU serve image and the balancer (docker/build-local.sh; FACE_CPU_BASE picks another base),
   prints the image size and checks that torch is not in it;
2. the CPU compose file (docker/compose.cpu.yml): healthcheck passes, /generate and /reconstruct answer, a
   result is still served, byte-identical, after `down` + `up` (the results volume);
3. two replicas behind HAProxy (docker/compose.replicas.yml): latency direct vs through the balancer (p50),
   then clients load the balancer, one replica is SIGKILLed mid-load, and every completed result must be
   fetchable and byte-identical from the survivor; every answer must be 200 or 503 + Retry-After.

Standard library only. The last line is ``SMOKE {json summary}``; the exit status is 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "fixtures" / "photos"
IMAGE = "albedogan3d:serve-cpu"
SMALL = {"texture_size": 256, "mesh_resolution": 128}


class SmokeFailure(AssertionError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, env: dict | None = None, check: bool = True) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and out.returncode:
        raise SmokeFailure(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout


def compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SmokeFailure("neither `docker compose` nor `docker-compose` is installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- HTTP


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, headers, body); never raises for an HTTP status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_generate(base: str, seed: int) -> tuple[int, dict, bytes]:
    body = json.dumps({"seed": seed, **SMALL}).encode()
    return http("POST", f"{base}/generate", body, {"content-type": "application/json"})


def post_reconstruct(base: str, photo: Path, texture_size: int) -> tuple[int, dict, bytes]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{photo.name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + photo.read_bytes()
        + b"\r\n"
    ]
    for k, v in {"texture_size": texture_size, "mesh_resolution": SMALL["mesh_resolution"]}.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return http("POST", f"{base}/reconstruct", body, {"content-type": f"multipart/form-data; boundary={boundary}"})


def wait_until(what: str, ok, timeout: float = 180) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if ok():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


# ---------------------------------------------------------------------------------------------- stacks


class Stack:
    def __init__(self, compose: list[str], file: str, project: str, port: int):
        self.cmd = [*compose, "-p", project, "-f", str(ROOT / file)]
        self.env = dict(os.environ, FACE_PORT=str(port))
        self.base = f"http://127.0.0.1:{port}"

    def __call__(self, *args: str, check: bool = True) -> str:
        return sh(*self.cmd, *args, env=self.env, check=check)

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def health(self, cid: str) -> str:
        return sh("docker", "inspect", "-f", "{{.State.Health.Status}}", cid).strip()

    def wait_healthy(self, service: str, n: int) -> float:
        return wait_until(
            f"{n} healthy {service}",
            lambda: sum(self.health(c) == "healthy" for c in self.containers(service)) >= n,
        )


def ip_of(cid: str) -> str:
    return sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid).split()[0]


def check_cpu_stack(compose: list[str], port: int, summary: dict) -> None:
    st = Stack(compose, "docker/compose.cpu.yml", "albedogan3d-smoke-cpu", port)
    st("down", "-v", check=False)
    try:
        t0 = time.monotonic()
        st("up", "-d")
        st.wait_healthy("api", 1)
        summary["cpu_healthy_s"] = round(time.monotonic() - t0, 1)
        log(f"cpu stack: healthcheck passed after {summary['cpu_healthy_s']} s")
        status, _, body = post_generate(st.base, 7)
        if status != 200:
            raise SmokeFailure(f"cpu stack: /generate answered {status}: {body[:300]!r}")
        gen_id = json.loads(body)["id"]
        glb = http("GET", f"{st.base}/results/{gen_id}/mesh.glb")[2]
        photos = sorted(PHOTOS.glob("*.jpg"))
        if photos:
            status, _, body = post_reconstruct(st.base, photos[0], 256)
            if status != 200:
                raise SmokeFailure(f"cpu stack: /reconstruct answered {status}: {body[:300]!r}")
            log(f"cpu stack: /generate and /reconstruct answered 200 ({len(json.loads(body)['links'])} files)")
        else:
            log(f"cpu stack: /generate answered 200; /reconstruct not tried ({PHOTOS} missing)")
        st("down")
        st("up", "-d")
        st.wait_healthy("api", 1)
        status, _, again = http("GET", f"{st.base}/results/{gen_id}/mesh.glb")
        if status != 200 or again != glb:
            raise SmokeFailure(f"cpu stack: result not kept across down/up (status {status})")
        summary["cpu_results_survive_down_up"] = True
        log("cpu stack: the result survived down + up byte-identical")
    finally:
        st("down", "-v", check=False)


class Load:
    """Clients on the balancer: new faces (and reconstructions), each completed result's files fetched at once."""

    def __init__(self, base: str, photos: list[Path], clients: int):
        self.base, self.photos, self.clients = base, photos, clients
        self.next = 0
        self.lock = threading.Lock()
        self.completed: dict[str, dict[str, str]] = {}  # id → file → sha256
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.shed = 0
        self.stop = threading.Event()

    def _job(self) -> int:
        with self.lock:
            self.next += 1
            return self.next

    def _count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _request(self, k: int):
        if self.photos and k % 4 == 0:  # every 4th a reconstruction (another texture size → another result)
            photo = self.photos[(k // 4) % len(self.photos)]
            return post_reconstruct(self.base, photo, 256 + 8 * (k // 4 // len(self.photos)))
        return post_generate(self.base, 1000 + k)

    def _one(self, k: int) -> None:
        for _attempt in range(20):
            try:
                status, headers, body = self._request(k)
            except OSError as exc:
                self.errors.append(f"job {k}: {exc}")
                return
            self._count(status)
            if status == 503 and "retry-after" in {h.lower() for h in headers}:
                self.shed += 1
                time.sleep(float(next(v for h, v in headers.items() if h.lower() == "retry-after")))
                continue
            if status != 200:
                self.errors.append(f"job {k}: {status} {body[:200]!r}")
                return
            rid = json.loads(body)["id"]
            files = {}
            for name in ("mesh.glb", "albedo.png"):
                s, _, data = http("GET", f"{self.base}/results/{rid}/{name}")
                self._count(s)
                if s != 200:
                    self.errors.append(f"job {k}: GET {name} of a completed result answered {s}")
                    return
                files[name] = hashlib.sha256(data).hexdigest()
            with self.lock:
                self.completed[rid] = files
            return
        self.errors.append(f"job {k}: still 503 after 20 tries")

    def run(self) -> None:
        def client():
            while not self.stop.is_set():
                self._one(self._job())

        self.threads = [threading.Thread(target=client, daemon=True) for _ in range(self.clients)]
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def check_replicas(compose: list[str], port: int, args: argparse.Namespace, summary: dict) -> None:
    st = Stack(compose, "docker/compose.replicas.yml", "albedogan3d-smoke", port)
    st("down", "-v", check=False)
    try:
        t0 = time.monotonic()
        st("up", "-d", "--scale", "api=2")
        st.wait_healthy("api", 2)
        wait_until("the balancer", lambda: http("GET", f"{st.base}/health/ready", timeout=5)[0] == 200)
        summary["replicas_ready_s"] = round(time.monotonic() - t0, 1)
        replicas = st.containers("api")
        direct = {cid: f"http://{ip_of(cid)}:8000" for cid in replicas}
        log(f"2 replicas ready behind the balancer after {summary['replicas_ready_s']} s")

        # a result made through one replica is served by the other (one shared store)
        first, second = list(direct.values())
        s, _, body = post_generate(first, 1)
        rid = json.loads(body)["id"]
        a = http("GET", f"{first}/results/{rid}/mesh.glb")[2]
        s2, _, b = http("GET", f"{second}/results/{rid}/mesh.glb")
        if s != 200 or s2 != 200 or a != b:
            raise SmokeFailure("a result made by one replica is not served identically by the other")

        # latency of the same (stored) request: direct to each replica vs through the balancer
        # (interleaved, so that drift in what else this machine runs hits every target alike)
        targets = {**{"direct " + c[:12]: u for c, u in direct.items()}, "balancer": st.base}
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for base in targets.values():
            post_generate(base, 1)
        for _ in range(args.latency_samples):
            for name, base in targets.items():
                t = time.perf_counter()
                if post_generate(base, 1)[0] != 200:
                    raise SmokeFailure(f"{name}: a stored /generate did not answer 200")
                samples[name].append(time.perf_counter() - t)
        lat = {name: p50_ms(v) for name, v in samples.items()}
        direct_p50 = statistics.median(v for k, v in lat.items() if k.startswith("direct"))
        summary["latency_p50_ms"] = lat
        summary["balancer_overhead_p50_ms"] = round(lat["balancer"] - direct_p50, 2)
        log(f"p50 of a stored /generate: {lat} → balancer overhead {summary['balancer_overhead_p50_ms']} ms")

        # load through the balancer, SIGKILL one replica mid-load
        load = Load(st.base, sorted(PHOTOS.glob("*.jpg")), args.clients)
        t_load = time.monotonic()
        load.run()
        wait_until(f"{args.before_kill} completed results", lambda: len(load.completed) >= args.before_kill, 300)
        victim, survivor = replicas[0], replicas[1]
        before = len(load.completed)
        sh("docker", "kill", victim)
        log(f"killed replica {victim[:12]} after {before} completed results (load continues)")
        wait_until(f"{args.after_kill} more results", lambda: len(load.completed) >= before + args.after_kill, 600)
        load.join()
        summary["load_s"] = round(time.monotonic() - t_load, 1)
        summary["load"] = {
            "completed": len(load.completed),
            "completed_before_kill": before,
            "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
            "shed_503_retry_after": load.shed,
            "errors": load.errors[:10],
        }
        log(f"load: {summary['load']}")
        # HAProxy logs only abnormal requests (retried, redispatched, failed): how it routed around the kill
        lb_log = sh("docker", "logs", st.containers("lb")[0], check=False).splitlines()
        summary["balancer_log"] = [ln for ln in lb_log if " api/" in ln or "DOWN" in ln][:12]

        # every completed result, from the survivor directly, byte-identical to what the client got
        missing, differ = [], []
        for rid, files in load.completed.items():
            for name, digest in files.items():
                s, _, data = http("GET", f"{direct[survivor]}/results/{rid}/{name}")
                if s != 200:
                    missing.append(f"{rid[:12]}/{name}: {s}")
                elif hashlib.sha256(data).hexdigest() != digest:
                    differ.append(f"{rid[:12]}/{name}")
        summary["survivor_check"] = {"results": len(load.completed), "missing": missing, "differ": differ}
        log(f"survivor serves {len(load.completed) - len(missing)}/{len(load.completed)} results, {len(differ)} differ")
        summary["killed_replica_restarted"] = (
            sh("docker", "inspect", "-f", "{{.State.Running}}", victim, check=False).strip() == "true"
        )
        if missing or differ or load.errors:
            raise SmokeFailure(f"lost or corrupt results or errors: {missing[:5]} {differ[:5]} {load.errors[:5]}")
        if any(int(k) >= 500 and int(k) != 503 for k in summary["load"]["statuses"]):
            raise SmokeFailure(f"5xx other than 503: {summary['load']['statuses']}")
    finally:
        st("down", "-v", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="use the images already built")
    parser.add_argument("--skip-cpu-stack", action="store_true", help="only the replica test")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before-kill", type=int, default=8, help="completed results before the kill")
    parser.add_argument("--after-kill", type=int, default=16, help="completed results after the kill")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--port", type=int, default=0, help="host port of the stacks (default: a free one)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    summary: dict = {"ok": False}
    try:
        sh("docker", "info")
        compose = compose_cmd()
        summary["compose"] = " ".join(compose)
        if not args.no_build:
            t = time.monotonic()
            out = sh(str(ROOT / "docker" / "build-local.sh"))
            summary["build_s"] = round(time.monotonic() - t, 1)
            built = "; ".join(ln for ln in out.splitlines() if ln.startswith("built"))
            log(f"built in {summary['build_s']} s: {built}")
        summary["image_mb"] = round(int(sh("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6)
        torch_inside = sh(
            "docker", "run", "--rm", "--entrypoint", "python", IMAGE, "-c",
            "import importlib.util; print(importlib.util.find_spec('torch') is not None)",
        ).strip()  # fmt: skip
        summary["torch_in_image"] = torch_inside == "True"
        log(f"{IMAGE}: {summary['image_mb']} MB, torch inside: {summary['torch_in_image']}")
        if summary["torch_in_image"]:
            raise SmokeFailure("torch is installed in the serve image")
        port = args.port or free_port()
        if not args.skip_cpu_stack:
            check_cpu_stack(compose, port, summary)
        check_replicas(compose, port, args, summary)
        summary["ok"] = True
    except SmokeFailure as exc:
        summary["failure"] = str(exc)
        log(f"FAILED: {exc}")
    summary["duration_s"] = round(time.monotonic() - t0, 1)
    print("SMOKE " + json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
