"""Static checks of the deployment files (no Docker engine on these machines)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stages(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile, flags=re.M | re.I)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_dockerfile_targets_match_the_project():
    text = (ROOT / "Dockerfile").read_text()
    st = stages(text)
    assert {"viewer", "serve", "train"} <= set(st)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for name, body in st.items():
        for group in re.findall(r'pip install[^\n]*"\.\[([a-z,\-]+)\]"', body):
            assert set(group.split(",")) <= extras, (name, group)
    serve = st["serve"]
    assert ".[serve,gpu]" in serve and "torch" not in serve.replace("torch-free", "")
    assert re.search(r"^USER\s+(?!root)\S+", serve, flags=re.M)  # non-root
    assert "/health/ready" in serve and 'python", "-m", "service"' in serve
    train = st["train"]
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in train  # CUDA torch at the exact pinned version before `.[train]`
    assert "training.run" in train
    for copied in re.findall(r"^COPY\s+(?!--from)(\S+)", text, flags=re.M):
        if copied != ".":
            assert (ROOT / copied).exists(), copied


def test_compose_runs_the_api_on_a_gpu_with_a_healthcheck():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["build"]["target"] == "serve"
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] in ("unless-stopped", "always")
    assert any(v.endswith(":/data/results") for v in api["volumes"])
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
