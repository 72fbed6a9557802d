"""``python -m service [--host H] [--port P] [--bundle PATH]``: run the API with uvicorn."""

from __future__ import annotations

import os

# numpy's OpenBLAS keeps its threads busy-waiting after every call; in the service, whose numpy work is small matrices
# beside onnxruntime's threads, they took the cores from everything else. On this 2-core CPU, /generate paired with
# bundle 1.0 over HTTP (p50): 48 → 21 ms with one BLAS thread (one 150² solve had taken 21 ms; the albedo graph 17 →
# 8.5 ms). Set before numpy is imported; an OPENBLAS_NUM_THREADS of your own is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from facecore.bundle import BundleError, load_bundle  # noqa: E402
from service.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="AlbedoGAN 3D face service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bundle", type=Path, help="model bundle folder or zip (default: the embedded bundle)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"bundle": args.bundle} if args.bundle else {}
    settings = Settings(**overrides)
    try:
        load_bundle(settings.bundle)  # fail fast with the file and field, before uvicorn starts
    except BundleError as exc:
        logging.getLogger("service").error("cannot serve: %s", exc)
        return 2
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
