"""Training entry point: ``python -m training.run STAGE [--config FILE] [--out DIR] [--set key=value …]``.

Stages (each a module with ``run(cfg: dict, out: Path) -> None``): ``extract`` (texture extraction),
``albedo`` (AlbedoGAN pretraining), ``shape`` and ``alternate`` (shape model, alternate descent),
``export`` (model bundle) and ``all`` (every stage in order, each resuming from its own checkpoints).
The resolved configuration is written into the output folder; runs resume from their latest checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from training.config import ConfigError, load_config, save_resolved

logger = logging.getLogger("training")

# stage → module implementing ``run(cfg, out)``; the config section of a stage is ``cfg[stage]``.
STAGES: dict[str, str] = {
    "extract": "training.texture",
    "albedo": "training.albedo",
    "shape": "training.shape",
    "alternate": "training.alternate",
    "export": "training.export",
}
ORDER = ("extract", "albedo", "shape", "alternate", "export")


class StageUnavailable(RuntimeError):
    """The stage's module is not part of this version."""


def stage_runner(stage: str):
    """The ``run`` function of a stage; raises :class:`StageUnavailable` if its module does not exist."""
    module_name = STAGES[stage]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a real missing dependency inside the stage: let it surface
        raise StageUnavailable(f"stage '{stage}' is not available in this version ({module_name} is missing)") from exc
    return module.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--config", type=Path, help="YAML configuration")
    parser.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder (resumed if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config, args.overrides)
        stages = ORDER if args.stage == "all" else (args.stage,)
        runners = [(stage, stage_runner(stage)) for stage in stages]  # fail before any work starts
        args.out.mkdir(parents=True, exist_ok=True)
        save_resolved(args.out, cfg)
        for stage, run in runners:
            logger.info("stage %s → %s", stage, args.out / stage)
            run(cfg, args.out / stage)
    except (ConfigError, StageUnavailable, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume from the last checkpoint")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
