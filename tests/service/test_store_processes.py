"""The result store shared by several processes (API replicas on one volume): concurrent writers of the same
content address, and readers racing them, never see a mixed or partial result."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

from service.store import META, ResultStore

WRITERS = 6
IDS = 12
FILES = ("albedo.png", "mesh.glb", "mesh.obj", "normal.png")


def _rid(i: int) -> str:
    return hashlib.sha256(f"result {i}".encode()).hexdigest()


def _payload(writer: int, name: str) -> bytes:
    # every writer writes different bytes, so a result mixed from two writers is detectable
    return f"{writer}:{name}:".encode() * 20_000


def _writer(root: str, writer: int, barrier, errors) -> None:
    store = ResultStore(root, max_bytes=1 << 40, ttl_s=3600)
    for i in range(IDS):
        barrier.wait()  # every writer puts result i at the same moment
        try:
            final = store.put(_rid(i), {n: _payload(writer, n) for n in FILES}, {"writer": writer})
            if final != Path(root) / _rid(i) or store.meta(_rid(i)) is None:
                errors.put(f"writer {writer}: result {i} not readable after put")
        except Exception as exc:  # reported to the parent, which fails the test
            errors.put(f"writer {writer}: result {i}: {exc!r}")


def _reader(root: str, stop, errors, seen) -> None:
    store = ResultStore(root, max_bytes=1 << 40, ttl_s=3600)
    complete = 0
    while not stop.is_set():
        for i in range(IDS):
            meta = store.meta(_rid(i))
            if meta is None:
                continue
            files = store.files(_rid(i))
            if set(files) != set(FILES):
                errors.put(f"reader: result {i} visible with files {sorted(files)}")
            elif any(data != _payload(meta["writer"], n) for n, data in files.items()):
                errors.put(f"reader: result {i} mixes writers")
            complete += 1
    seen.put(complete)


def test_concurrent_writers_of_one_id_in_separate_processes(tmp_path):
    ctx = mp.get_context("spawn")  # separate interpreters, like replicas
    barrier, errors, seen, stop = ctx.Barrier(WRITERS), ctx.Queue(), ctx.Queue(), ctx.Event()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier, errors)) for w in range(WRITERS)]
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, errors, seen))
    reader.start()
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
    stop.set()
    reader.join(60)
    assert all(p.exitcode == 0 for p in [*writers, reader])
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems[:5]
    assert seen.get(timeout=5) > 0  # the reader did look at finished results while writers raced
    store = ResultStore(tmp_path, max_bytes=1 << 40, ttl_s=3600)
    for i in range(IDS):
        folder = tmp_path / _rid(i)
        assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, META])
        writer = store.meta(_rid(i))["writer"]  # exactly one writer's result won, whole
        assert store.files(_rid(i)) == {n: _payload(writer, n) for n in FILES}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # losers cleaned up
