"""Static checks of the deployment files; tests/test_docker_smoke.py builds and runs them (opt-in)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stages(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile, flags=re.M | re.I)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def build_args(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, flags=re.M))


def test_dockerfile_targets_match_the_project():
    text = (ROOT / "Dockerfile").read_text()
    st = stages(text)
    assert {"viewer", "serve", "train"} <= set(st)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for name, body in st.items():
        for group in re.findall(r'pip install[^\n]*"\.\[([a-z,\-${}A-Z_]+)\]"', body):
            assert set(group.replace("${ORT}", "gpu").split(",")) <= extras, (name, group)
            assert set(group.replace("${ORT}", "cpu").split(",")) <= extras, (name, group)
    serve = st["serve"]
    assert '".[serve,${ORT}]"' in serve and "ARG ORT=gpu" in serve  # onnxruntime-gpu unless asked for cpu
    assert "torch" not in serve.replace("torch-free", "")
    assert re.search(r"^USER\s+(?!root)\S+", serve, flags=re.M)  # non-root
    assert "/health/ready" in serve and 'python", "-m", "service"' in serve
    train = st["train"]
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in train  # CUDA torch at the exact pinned version before `.[train]`
    assert "training.run" in train
    for copied in re.findall(r"^COPY\s+(?!--from)(\S+)", text, flags=re.M):
        if copied != ".":
            assert (ROOT / copied).exists(), copied
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in packages["include"]:  # every package the wheel is built from is in the serve image
        assert f"COPY {package.rstrip('*')} " in serve, package


def test_base_images_are_build_args_with_gpu_defaults():
    text = (ROOT / "Dockerfile").read_text()
    args = build_args(text)
    assert args["SERVE_BASE"].startswith("nvidia/cuda:") and "runtime" in args["SERVE_BASE"]
    assert args["TRAIN_BASE"].startswith("nvidia/cuda:") and "devel" in args["TRAIN_BASE"]
    assert args["VIEWER_BASE"] == "node:20-slim"
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${VIEWER_BASE}", "${SERVE_BASE}", "${TRAIN_BASE}"]
    assert not re.match(r"#\s*syntax=", text)  # a dockerfile frontend would have to be pulled from a registry
    viewer = stages(text)["viewer"]
    assert "apt-get install" in viewer and "npm ci" in viewer  # npm from apt on a plain Debian base
    for f in (text, (ROOT / "docker" / "lb.Dockerfile").read_text()):
        assert "ca-certificates.crt" not in f and "PIP_CERT" not in f  # the host CA bundle is only in the local base


def test_build_local_script():
    script = ROOT / "docker" / "build-local.sh"
    assert script.stat().st_mode & 0o111  # executable
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "debootstrap --variant=minbase" in text and "docker import" in text and "/etc/apt/sources.list" in text
    assert "ca-certificates.crt" in text
    assert "--build-arg ORT=cpu" in text and "--target serve" in text
    cpu_api = yaml.safe_load((ROOT / "docker" / "compose.cpu.yml").read_text())["services"]["api"]
    assert '-t "$IMAGE"' in text and "IMAGE=${IMAGE:-" + cpu_api["image"] + "}" in text


def _normalise(service: dict, compose_dir: Path) -> dict:
    """A compose service with its relative paths made absolute (the CPU files live in docker/)."""
    out = dict(service)
    if "build" in out:
        build = dict(out["build"])
        build["context"] = str((compose_dir / build.get("context", ".")).resolve())
        out["build"] = build
    if "volumes" in out:
        out["volumes"] = [
            str((compose_dir / v.split(":", 1)[0]).resolve()) + ":" + v.split(":", 1)[1] if v.startswith(".") else v
            for v in out["volumes"]
        ]
    return out


def test_compose_runs_the_api_on_a_gpu_with_a_healthcheck():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["build"]["target"] == "serve" and "args" not in api["build"]  # the Dockerfile's GPU defaults
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] in ("unless-stopped", "always")
    assert any(v.endswith(":/data/results") for v in api["volumes"])
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_cpu_compose_differs_from_the_gpu_one_only_where_it_must():
    gpu = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cpu = yaml.safe_load((ROOT / "docker" / "compose.cpu.yml").read_text())
    g_api, c_api = _normalise(gpu["services"]["api"], ROOT), _normalise(cpu["services"]["api"], ROOT / "docker")
    # the differences: base image + onnxruntime flavour (build args), the image tag, no GPU reservation
    assert c_api["build"].pop("args") == {
        "SERVE_BASE": "${FACE_CPU_BASE:-debian:bookworm-slim}",
        "VIEWER_BASE": "${FACE_CPU_BASE:-debian:bookworm-slim}",
        "ORT": "cpu",
    }
    assert g_api.pop("image") == "albedogan3d:serve" and c_api.pop("image") == "albedogan3d:serve-cpu"
    assert "deploy" in g_api and "deploy" not in c_api
    g_api.pop("deploy")
    assert c_api == g_api  # ports, environment, volumes, healthcheck, restart: the same
    # the CUDA training service is GPU-only; the rest of the file is the same
    assert set(gpu["services"]) - set(cpu["services"]) == {"train"} and set(cpu["services"]) <= set(gpu["services"])
    for name in set(cpu["services"]) - {"api"}:
        assert _normalise(cpu["services"][name], ROOT / "docker") == _normalise(gpu["services"][name], ROOT), name
    assert cpu["volumes"] == gpu["volumes"]


def test_replicas_share_one_store_behind_a_readiness_gated_balancer():
    compose = yaml.safe_load((ROOT / "docker" / "compose.replicas.yml").read_text())
    api, lb = compose["services"]["api"], compose["services"]["lb"]
    assert "ports" not in api and lb["ports"] == ["${FACE_PORT:-8000}:8000"]  # only through the balancer
    assert "results:/data/results" in api["volumes"] and "results" in compose["volumes"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    cpu_api = _normalise(yaml.safe_load((ROOT / "docker" / "compose.cpu.yml").read_text())["services"]["api"], ROOT)
    assert _normalise(api, ROOT)["build"] == cpu_api["build"] and api["image"] == cpu_api["image"]
    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    assert re.search(r"option httpchk GET /health/ready", cfg) and "http-check expect status 200" in cfg
    assert re.search(r"server-template \w+ \d+ api:8000", cfg) and "resolvers docker" in cfg
    assert re.search(r"retry-on [^\n]*\bempty-response\b[^\n]*\b503\b", cfg) and "option redispatch" in cfg
    assert "haproxy" in (ROOT / "docker" / "lb.Dockerfile").read_text()
    # with no replica ready the balancer sheds like the api does: 503 + Retry-After, a JSON detail
    errorfile = re.search(r"errorfile 503 (\S+)", cfg).group(1)
    assert f"COPY docker/haproxy-503.http {errorfile}" in (ROOT / "docker" / "lb.Dockerfile").read_text()
    head, body = (ROOT / "docker" / "haproxy-503.http").read_bytes().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower()
    assert f"content-length: {len(body)}".encode() in head and "detail" in json.loads(body)


def test_kubernetes_manifests_validate_offline():
    import kubernetes_validate

    docs = [d for f in sorted((ROOT / "docker" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # raises on any unknown or mistyped field
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    api = pod["containers"][0]
    assert kinds["Deployment"]["spec"]["replicas"] >= 2
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
    claim = kinds["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # one store shared by every replica
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert api["volumeMounts"][0]["mountPath"] == "/data/results"
    assert kinds["Service"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
