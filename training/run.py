"""Training entry point: ``python -m training.run STAGE [--config FILE] [--out DIR] [--set key=value …]``.

Stages (each a function ``run(cfg: dict, out: Path) -> None`` of a module): ``recipe`` (the paper's StyleGAN2 shape
data, only with a ``recipe`` section), ``extract`` (texture extraction), ``albedo`` (AlbedoGAN pretraining),
``grow`` (that generator grown to a higher resolution, with a ``grow`` section), ``shape`` and ``alternate`` (shape
model, alternate descent), ``identity`` (identity head on face-recognition features), ``localiser`` (the landmark
network /reconstruct frames its crops with), ``export`` (model bundle: the trained networks, then what the other
stages made goes in) and ``all`` (every stage in order, each resuming from its own checkpoints). The resolved
configuration is written into the output folder, each stage's wall time into ``stage_times.jsonl`` there.

Real data instead of the synthetic source (applied on top of ``--config``):

* ``--images DIR``: a folder of face photos (e.g. FFHQ): textures are extracted from them (AlbedoGAN's
  training maps) and the shape model trains on them (``shape.data.kind=photos``);
* ``--data DIR``: AlbedoGAN (stage ``albedo``) on a folder of UV albedo PNGs, e.g. another run's extracted maps;
* ``--stylegan2 PKL``: the paper's recipe: a StyleGAN2 (e.g. NVlabs' FFHQ pickle) generates identities × pose and
  expression edits (the ``recipe`` stage, paper numbers by default, ``--set recipe.n_identities=…``); textures
  are extracted from the identities' images and the shape model trains on the edits
  (``shape.data.kind=stylegan2_recipe``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from training.config import ConfigError, load_config, save_resolved

logger = logging.getLogger("training")

# stage → ``module`` (its ``run(cfg, out)``) or ``module:function``; the config section of a stage is ``cfg[stage]``.
STAGES: dict[str, str] = {
    "recipe": "training.data.stylegan_recipe",
    "extract": "training.texture",
    "albedo": "training.albedo",
    "grow": "training.albedo:run_grow",
    "shape": "training.alternate:run_shape",
    "alternate": "training.alternate",
    "export": "training.bundle_stage",
    "identity": "training.identity",
    "localiser": "training.localiser",
}
ORDER = ("recipe", "extract", "albedo", "grow", "shape", "alternate", "identity", "localiser", "export")
SECTION_STAGES = ("identity",)  # stages `all` runs only when the config has their section
TIMES_FILE = "stage_times.jsonl"
"""One line per stage a ``training.run`` command ran in the run folder: stage, wall seconds, finished (UTC)."""


class StageUnavailable(RuntimeError):
    """The stage's module is not part of this version."""


def stage_runner(stage: str):
    """The ``run`` function of a stage; raises :class:`StageUnavailable` if its module does not exist."""
    module_name, _, function = STAGES[stage].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a real missing dependency inside the stage: let it surface
        raise StageUnavailable(f"stage '{stage}' is not available in this version ({module_name} is missing)") from exc
    return getattr(module, function or "run")


def real_data(
    cfg: dict, out: Path, images: Path | None, stylegan2: Path | None, albedo_maps: Path | None = None
) -> dict:
    """``cfg`` with its data sources switched to ``--images DIR``, ``--stylegan2 PKL`` or ``--data DIR`` (see
    the module doc); the given ``cfg`` is not modified."""
    if albedo_maps is not None:
        if not albedo_maps.is_dir():
            raise FileNotFoundError(f"--data: {albedo_maps} is not a folder")
        albedo = dict(cfg.get("albedo") or {})
        albedo["data"] = {**(albedo.get("data") or {}), "kind": "folder", "path": str(albedo_maps)}
        cfg = {**cfg, "albedo": albedo}
    if images is None and stylegan2 is None:
        return cfg
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    extract = {k: v for k, v in (cfg.get("extract") or {}).items() if k not in ("images", "synthetic")}
    shape = cfg.setdefault("shape", {})
    data = {k: v for k, v in (shape.get("data") or {}).items() if k in ("seed", "groups", "views", "detector")}
    if images is not None:
        if not images.is_dir():
            raise FileNotFoundError(f"--images: {images} is not a folder")
        extract["images"] = str(images)
        data.update(kind="photos", path=str(images))
    else:
        if not stylegan2.is_file():
            raise FileNotFoundError(f"--stylegan2: no file {stylegan2}")
        cfg["recipe"] = {**(cfg.get("recipe") or {}), "stylegan2": str(stylegan2)}
        extract["images"] = str(out / "recipe" / "images")
        data.update(kind="stylegan2_recipe", path=str(out / "recipe"))
    # the grow stage trains on the same extracted maps: extract them at its resolution, or it only upsamples
    grow = cfg.get("grow") or {}
    if int(grow.get("resolution", 0)) > int(extract.get("resolution", 0)):
        extract["resolution"] = int(grow["resolution"])
    cfg["extract"] = extract
    shape["data"] = data
    albedo = cfg.setdefault("albedo", {})
    if (albedo.get("data") or {}).get("kind", "synthetic") == "synthetic":  # a folder of ~1 k maps, not a stream
        albedo["data"] = {**albedo.get("data", {}), "holdout": 64, "mirror": True}
        albedo["augment"] = {**(albedo.get("augment") or {}), "policy": ["color"]}
    albedo["data"] = {**(albedo.get("data") or {}), "kind": "folder", "path": "auto"}
    return cfg


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _times_line(out: Path, record: dict) -> None:
    with (out / TIMES_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--config", type=Path, help="YAML configuration")
    parser.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder (resumed if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, metavar="DIR", help="train on a folder of face photos")
    source.add_argument("--stylegan2", type=Path, metavar="PKL", help="train on the paper's StyleGAN2 recipe")
    source.add_argument("--data", type=Path, metavar="DIR", help="AlbedoGAN on a folder of UV albedo PNGs")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = real_data(load_config(args.config, args.overrides), args.out, args.images, args.stylegan2, args.data)
        # in `all`, the identity stage runs where the config has its section (a recipe without one: no head)
        stages = [s for s in ORDER if s not in SECTION_STAGES or s in cfg] if args.stage == "all" else [args.stage]
        runners = [(stage, stage_runner(stage)) for stage in stages]  # fail before any work starts
        args.out.mkdir(parents=True, exist_ok=True)
        save_resolved(args.out, cfg)
        for stage, run in runners:
            logger.info("stage %s → %s", stage, args.out / stage)
            # a `started` line, then a `seconds` line when it finishes: a run killed in between leaves only the
            # first (its time is lost, its work up to the last checkpoint is resumed); a rerun adds lines, the
            # stage's cost is the sum of its finished runs (benchmarks/bundle_card.py)
            _times_line(args.out, {"stage": stage, "started": _now()})
            t0 = time.perf_counter()
            run(cfg, args.out / stage)
            seconds = time.perf_counter() - t0
            logger.info("stage %s: %.1f min", stage, seconds / 60)
            _times_line(args.out, {"stage": stage, "seconds": round(seconds, 1), "finished": _now()})
    except (ConfigError, StageUnavailable, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume from the last checkpoint")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
