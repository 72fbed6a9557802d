"""The service runs without torch (DESIGN §2): import and serve with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_imports_and_serves_without_torch(tiny_bundle, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import pkgutil, importlib, facecore, service
        for pkg in (facecore, service):
            for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if not mod.name.endswith("__main__"):
                    importlib.import_module(mod.name)
        from fastapi.testclient import TestClient
        from service.app import create_app
        from service.settings import Settings
        settings = Settings(bundle=r"{tiny_bundle}", results_dir=r"{tmp_path / "results"}")
        with TestClient(create_app(settings)) as client:
            r = client.post("/generate", json={{"seed": 1, "texture_size": 256, "mesh_resolution": 48}})
            assert r.status_code == 200, r.text
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] == "torch"]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
