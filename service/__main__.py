"""``python -m service [--host H] [--port P] [--bundle PATH]``: run the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from facecore.bundle import BundleError, load_bundle
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="AlbedoGAN 3D face service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--bundle", type=Path, help="model bundle folder or zip (default: the embedded bundle)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"bundle": args.bundle} if args.bundle else {}
    try:
        settings = Settings(**overrides)
    except (ValidationError, SettingsError) as exc:  # e.g. FACE_MAX_BATCH=abc: the variable named, no traceback
        # (never the value: it may be an API key or the result secret)
        problems = (
            "; ".join(f"FACE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc).split(" from ")[0]
        )
        logging.getLogger("service").error("cannot serve: invalid settings: %s", problems)
        return 2
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
