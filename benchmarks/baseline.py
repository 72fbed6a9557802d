"""A baseline bundle for the comparisons the benchmarks make in one run: the embedded bundle of a git revision."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

from service.settings import EMBEDDED_BUNDLE

REPO = Path(__file__).resolve().parents[1]
BUNDLE_1_0 = "9f7484e"  # the revision that shipped the first trained default bundle (1.0.0)


def baseline_from_git(rev: str, into: Path) -> Path:
    """Extract the embedded bundle of git revision ``rev`` into ``into``; returns its folder."""
    rel = EMBEDDED_BUNDLE.relative_to(REPO)
    proc = subprocess.run(["git", "-C", str(REPO), "archive", rev, str(rel)], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"no embedded bundle at git revision {rev!r}: {proc.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / rel
