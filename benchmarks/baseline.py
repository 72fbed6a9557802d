"""A baseline bundle for the comparisons the benchmarks make in one run: the embedded bundle of a git revision."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = Path("service") / "bundled" / "default"
BUNDLE_1_0 = "9f7484e"  # the first shipped default bundle (1.0.0)


def baseline_from_git(rev: str, into: Path) -> Path:
    """Extract the embedded bundle of git revision ``rev`` into ``into``; returns its folder."""
    proc = subprocess.run(["git", "-C", str(REPO), "archive", rev, str(EMBEDDED)], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"no embedded bundle at git revision {rev!r}: {proc.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / EMBEDDED
