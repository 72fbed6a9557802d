"""Run the Khronos glTF validator (npm package gltf-validator, installed by `npm ci --prefix tools`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VALIDATOR_SCRIPT = REPO_ROOT / "tools" / "validate_gltf.mjs"
VALIDATOR_PACKAGE = REPO_ROOT / "tools" / "node_modules" / "gltf-validator"


def run_gltf_validator(path: Path) -> tuple[int, dict]:
    """Run tools/validate_gltf.mjs on ``path``: (exit status, report); skip if node/the package is absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: cannot run the Khronos glTF validator")
    if not VALIDATOR_PACKAGE.is_dir():
        pytest.skip(f"{VALIDATOR_PACKAGE} is missing: run `npm ci --prefix tools` to install the glTF validator")
    result = subprocess.run(
        [node, str(VALIDATOR_SCRIPT), str(path)], capture_output=True, text=True, timeout=120, cwd=path.parent
    )
    assert result.returncode in (0, 1), f"validator did not run: {result.stderr}"
    print(f"glTF validator: {result.stderr.strip()}")
    return result.returncode, json.loads(result.stdout)


def assert_valid_gltf(path: Path) -> dict:
    """The validator's report for ``path``, asserting it has no errors; warnings are reported, not fatal."""
    returncode, report = run_gltf_validator(path)
    issues = report["issues"]
    assert issues["numErrors"] == 0, json.dumps(issues["messages"], indent=1)
    assert returncode == 0
    if issues["numWarnings"]:
        codes = sorted({m["code"] for m in issues["messages"] if m["severity"] == 1})
        warnings.warn(f"glTF validator: {path.name} has {issues['numWarnings']} warnings: {codes}", stacklevel=2)
    return report
