"""Bounded, content-addressed on-disk result store with atomic writes, a size cap and a TTL."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
META = "meta.json"


class ResultStore:
    """``root/{id}/{file}``; ids are sha256 hex of the request (same request + bundle → same id).

    Writes go to a temporary folder that is renamed into place, so readers never see a partial result.
    After each write, results older than ``ttl_s`` and then the least recently used ones beyond
    ``max_bytes`` are deleted.
    """

    def __init__(self, root: str | Path, max_bytes: int, ttl_s: float):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()

    @staticmethod
    def valid_id(result_id: str) -> bool:
        return bool(_ID.match(result_id))

    def path(self, result_id: str, name: str) -> Path | None:
        """The file of a stored result, or None (also for malformed ids/names: never a path escape)."""
        if not (_ID.match(result_id) and _NAME.match(name)):
            return None
        p = self.root / result_id / name
        if not p.is_file():
            return None
        os.utime(p.parent)  # recently used
        return p

    def meta(self, result_id: str) -> dict[str, Any] | None:
        p = self.path(result_id, META)
        return json.loads(p.read_text()) if p else None

    def put(self, result_id: str, files: Mapping[str, bytes], meta: Mapping[str, Any]) -> Path:
        if not _ID.match(result_id):
            raise ValueError(f"result id must be 64 hex characters, got {result_id!r}")
        final = self.root / result_id
        if (final / META).is_file():
            os.utime(final)
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            for name, data in files.items():
                if not _NAME.match(name) or name == META:
                    raise ValueError(f"bad result file name {name!r}")
                (tmp / name).write_bytes(data)
            (tmp / META).write_text(json.dumps(dict(meta), sort_keys=True))
            try:
                os.replace(tmp, final)
            except OSError:  # another worker stored the same result first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict()
        return final

    def add(self, result_id: str, name: str, data: bytes) -> Path | None:
        """Add a derived file to an existing result atomically (None if the result is gone)."""
        folder = self.root / result_id
        if not (_ID.match(result_id) and _NAME.match(name) and name != META and (folder / META).is_file()):
            return None
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
        return folder / name

    def files(self, result_id: str) -> dict[str, bytes]:
        """Every file of a result except its metadata."""
        folder = self.root / result_id
        if not _ID.match(result_id) or not folder.is_dir():
            return {}
        return {
            p.name: p.read_bytes()
            for p in folder.iterdir()
            if p.is_file() and p.name != META and not p.name.startswith(".")
        }

    def evict(self) -> None:
        with self._lock:
            now = time.time()
            entries = []
            for d in self.root.iterdir():
                if not d.is_dir():
                    continue
                try:
                    mtime = d.stat().st_mtime
                except FileNotFoundError:
                    continue
                if d.name.startswith(".tmp-"):
                    if now - mtime > 3600:  # abandoned by a crashed writer
                        shutil.rmtree(d, ignore_errors=True)
                    continue
                if now - mtime > self.ttl_s:
                    shutil.rmtree(d, ignore_errors=True)
                    continue
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                entries.append((mtime, size, d))
            total = sum(size for _, size, _ in entries)
            for _, size, d in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                shutil.rmtree(d, ignore_errors=True)
                total -= size
                logger.info("evicted result %s", d.name)
