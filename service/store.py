"""Bounded, content-addressed on-disk result store with atomic writes, a size cap and a TTL."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
META = "meta.json"
SECRET = ".secret"
TMP = ".tmp-"
STALE_TMP_S = 600.0  # a write takes seconds; an older temporary folder belongs to a dead writer
#: deletions are remembered this long, so that work begun before one cannot store its result again (a request
#: is answered within FACE_REQUEST_TIMEOUT_S, seconds to a minute)
TOMBSTONE_S = 600.0
#: a pass over every result (TTL, and the writes of other replicas sharing the folder) at least this often
PASS_S = 60.0


class ResultTooLarge(ValueError):
    """The result alone is larger than the store's cap: it is answered directly and never stored."""


def _tmp_prefix() -> str:
    # host and pid in the name let a restarted worker remove what its previous life left behind, while
    # replicas sharing the volume leave each other's writes in progress alone
    return f"{TMP}{socket.gethostname()[:32]}-{os.getpid()}-"


def _open_nofollow(path: Path) -> BinaryIO | None:
    """``path`` opened for reading if it is a regular file reached without following a symlink; else None."""
    try:
        if stat.S_ISLNK(os.lstat(path.parent).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        return None
    return f


def load_or_create_secret(root: str | Path) -> bytes:
    """The server secret of the result ids: ``root/.secret``, created (0600, 32 random bytes) if absent.

    Created atomically (O_EXCL), so replicas sharing one results volume agree on it, and restarts keep it.
    """
    path = Path(root) / SECRET
    Path(root).mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        f = _open_nofollow(path)
        if f is not None:
            with f:
                data = f.read()
            if len(data) >= 32:
                return data
            time.sleep(0.01)  # another process is writing it right now
            continue
        if path.is_symlink():
            raise OSError(f"{path}: is a symlink; refusing to use it as the result-id secret")
        tmp = path.with_name(f"{TMP}secret-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode())
        try:
            os.link(tmp, path)  # atomic, fails if another process won
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    raise OSError(f"{path}: could not read or create the result-id secret")


class ResultStore:
    """``root/{id}/{file}``; ids are 64 hex characters chosen by the caller (a keyed hash of the request).

    Writes go to a temporary folder that is renamed into place, so readers never see a partial result.
    After a write that may exceed the cap, and at least every :data:`PASS_S`, results older than ``ttl_s`` and
    then the least recently used ones beyond ``max_bytes`` are deleted; the cap counts every byte under ``root``
    (temporary folders included; other processes' writes at the next pass).
    Symlinks are never followed: a planted link is neither read, touched, counted nor deleted through.
    Readers open files (:meth:`open`) and keep the handle, so eviction never truncates a download.
    A deleted result stays deleted: files made later (:meth:`add`) and work begun before the deletion
    (:meth:`put` with ``since``) do not bring it back.
    """

    def __init__(self, root: str | Path, max_bytes: int, ttl_s: float):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()  # serialises removals (delete, evict) with additions to a stored result
        self._deleted: dict[str, float] = {}  # result id → time.monotonic() of its deletion (tombstones)
        # bytes under root at most: the last pass's total plus what this process wrote since (see _wrote)
        self._bound = math.inf
        self._passed = 0.0  # time.monotonic() of the last pass
        self.removed_tmp = self.clean_tmp(startup=True)

    @staticmethod
    def valid_id(result_id: str) -> bool:
        return bool(_ID.match(result_id))

    def _touch(self, folder: Path) -> None:
        try:
            os.utime(folder, follow_symlinks=False)  # recently used
        except OSError:
            pass  # evicted meanwhile, or read-only: the read itself still succeeds

    def open(self, result_id: str, name: str) -> tuple[BinaryIO, int] | None:
        """A stored file opened for reading and its size, or None (unknown, evicted, malformed, a symlink)."""
        if not (_ID.match(result_id) and _NAME.match(name)):
            return None
        f = _open_nofollow(self.root / result_id / name)
        if f is None:
            return None
        self._touch(self.root / result_id)
        return f, os.fstat(f.fileno()).st_size

    def path(self, result_id: str, name: str) -> Path | None:
        """The file of a stored result, or None (also for malformed ids/names: never a path escape)."""
        opened = self.open(result_id, name)
        if opened is None:
            return None
        opened[0].close()
        return self.root / result_id / name

    def read(self, result_id: str, name: str) -> bytes | None:
        opened = self.open(result_id, name)
        if opened is None:
            return None
        with opened[0] as f:
            return f.read()

    def meta(self, result_id: str) -> dict[str, Any] | None:
        """The metadata of a stored result, or None (also when it is unreadable or not a JSON object)."""
        data = self.read(result_id, META)
        try:
            meta = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return meta if isinstance(meta, dict) else None

    def put(
        self, result_id: str, files: Mapping[str, bytes], meta: Mapping[str, Any], since: float | None = None
    ) -> Path | None:
        """Store a result atomically; :class:`ResultTooLarge` when it alone exceeds the cap, OSError when the
        folder is not writable. ``since``: the ``time.monotonic()`` at which the work that made it began; a
        result deleted after that is not stored again (None is returned)."""
        if not _ID.match(result_id):
            raise ValueError(f"result id must be 64 hex characters, got {result_id!r}")
        for name in files:
            if not _NAME.match(name) or name == META:
                raise ValueError(f"bad result file name {name!r}")
        size = sum(len(v) for v in files.values())
        if size > self.max_bytes:
            raise ResultTooLarge(f"result of {size} bytes exceeds the store's cap of {self.max_bytes} bytes")
        final = self.root / result_id
        if self.meta(result_id) is not None:
            self._touch(final)
            return final
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(), dir=self.root))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            (tmp / META).write_text(json.dumps(dict(meta), sort_keys=True))
            with self._lock:  # no deletion between the check and the rename
                deleted = self._deleted.get(result_id)
                if since is not None and deleted is not None and deleted >= since:
                    return None
                try:
                    os.replace(tmp, final)
                except OSError as exc:  # another worker stored the same result first (or a broken entry is there)
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # still there when it was not renamed into place
        self._wrote(size)
        return final

    def add(self, result_id: str, name: str, data: bytes) -> Path | None:
        """Add a derived file to an existing result atomically (None if the result is gone or it would not fit)."""
        folder = self.root / result_id
        if not (_ID.match(result_id) and _NAME.match(name) and name != META) or self.meta(result_id) is None:
            return None
        if self._size(folder) + len(data) > self.max_bytes:
            return None
        try:  # written beside the results, not inside one: a deletion then never races with a file being created
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=self.root)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            with self._lock:  # the result cannot be deleted or evicted between the check and the rename
                if self.meta(result_id) is None:
                    return None
                os.replace(tmp, folder / name)
        except OSError:
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)  # still there when it was not renamed into place
        self._wrote(len(data))
        return folder / name

    def files(self, result_id: str) -> dict[str, bytes]:
        """Every file of a result except its metadata (regular files only)."""
        folder = self.root / result_id
        if not _ID.match(result_id):
            return {}
        try:
            names = [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
        except OSError:
            return {}
        out = {}
        for name in names:
            if name == META or name.startswith(".") or not _NAME.match(name):
                continue
            data = self.read(result_id, name)
            if data is not None:
                out[name] = data
        return out

    def delete(self, result_id: str) -> bool:
        """Remove a result now (atomically: renamed away, then removed); False when there was none.

        Its id is remembered for :data:`TOMBSTONE_S`, so that work begun before now cannot store it again.
        """
        folder = self.root / result_id
        if not _ID.match(result_id):
            return False
        doomed = self.root / f"{_tmp_prefix()}deleted-{secrets.token_hex(4)}"
        with self._lock:
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    return False
                os.rename(folder, doomed)
            except OSError:
                return False
            now = time.monotonic()
            self._deleted.pop(result_id, None)  # re-inserted last: the dict stays in deletion order
            self._deleted[result_id] = now
            for old, at in list(self._deleted.items()):  # forget the deletions no running work can predate
                if now - at <= TOMBSTONE_S:
                    break
                del self._deleted[old]
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def writable(self) -> bool:
        """Whether a result could be written now (a probe file is created and removed)."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix() + "probe-", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
            return True
        except OSError:
            return False

    @staticmethod
    def _size(folder: Path) -> int:
        """Bytes of the regular files in ``folder`` (not following symlinks)."""
        total = 0
        try:
            for e in os.scandir(folder):
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                    elif e.is_dir(follow_symlinks=False):
                        total += ResultStore._size(Path(e.path))
                except OSError:
                    continue
        except OSError:
            pass
        return total

    def clean_tmp(self, startup: bool = False) -> int:
        """Remove temporary folders/files of dead writers: stale ones (older than ``STALE_TMP_S``), and at
        startup those this host's previous process lives left (same host, pid not running or our own)."""
        now = time.time()
        mine = f"{TMP}{socket.gethostname()[:32]}-"
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return 0
        for e in entries:
            if not e.name.startswith(TMP) or e.is_symlink():
                continue
            try:
                stale = now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_S
            except OSError:
                continue
            if not stale and startup and e.name.startswith(mine):
                pid = e.name[len(mine) :].split("-", 1)[0]
                stale = pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid)))
            if stale:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    Path(e.path).unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("removed %d abandoned temporary entries from %s", removed, self.root)
        return removed

    def _wrote(self, nbytes: int) -> None:
        """After writing ``nbytes`` (the metadata's few hundred aside): a pass of :meth:`evict` only when the cap
        may be exceeded or the last pass is older than :data:`PASS_S`. A pass lists every result; on every write
        of a busy store that cost O(results) of Python per write (30 ms at 600 results), all of it competing
        with the event loop for the interpreter."""
        with self._lock:
            self._bound += nbytes
            due = self._bound > self.max_bytes or time.monotonic() - self._passed > PASS_S
        if due:
            self.evict()

    def evict(self) -> None:
        """A pass over the results: expired ones, then the least recently used beyond the cap, are removed."""
        with self._lock:
            now = time.time()
            entries = []
            other = 0  # temporary folders in progress: counted, never evicted here
            try:
                listing = list(os.scandir(self.root))
            except OSError:
                return
            for d in listing:
                try:
                    if not d.is_dir(follow_symlinks=False):
                        continue
                    mtime = d.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if d.name.startswith(TMP):
                    if now - mtime > STALE_TMP_S:  # abandoned by a crashed writer
                        shutil.rmtree(d.path, ignore_errors=True)
                    else:
                        other += self._size(Path(d.path))
                    continue
                if now - mtime > self.ttl_s:
                    shutil.rmtree(d.path, ignore_errors=True)
                    continue
                entries.append((mtime, self._size(Path(d.path)), Path(d.path)))
            total = other + sum(size for _, size, _ in entries)
            for _, size, d in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                shutil.rmtree(d, ignore_errors=True)
                total -= size
                logger.info("evicted result %s", d.name)
            self._bound, self._passed = total, time.monotonic()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
