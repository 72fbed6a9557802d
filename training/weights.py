"""Trained weights on disk: the exported generator and the shape model's final folder (safetensors + JSON).

The albedo stage writes ``generator.safetensors`` + ``generator.json``; the shape and alternate stages write
their ``final/`` folder (:func:`save_final`); the export stage and later stages read both back strictly (a
missing or mismatched file raises; nothing falls back to random weights).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from facecore.bundle import sha256_file
from models.albedo_head import AlbedoHead, AlbedoHeadConfig
from models.displacement import DisplacementConfig, DisplacementDecoder
from models.encoder import Encoder, EncoderConfig
from models.shape_model import ShapeModel
from models.stylegan2 import Generator, GeneratorConfig
from training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


EXPORT_WEIGHTS = "generator.safetensors"


EXPORT_CONFIG = "generator.json"


def save_generator(G: Generator, directory: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``generator.safetensors`` (state dict, incl. ``mapping.w_avg``) + ``generator.json`` atomically.

    The JSON is :meth:`GeneratorConfig.to_dict` plus ``training`` (step, kimg, metric…).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, config = directory / EXPORT_WEIGHTS, directory / EXPORT_CONFIG
    tmp_w = weights.with_name(f".{weights.name}.tmp-{os.getpid()}")
    tmp_c = config.with_name(f".{config.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in G.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps({**G.config.to_dict(), "training": dict(info or {})}, indent=1))
    os.replace(tmp_w, weights)
    os.replace(tmp_c, config)
    logger.info("exported %s (+ %s)", weights, config.name)
    return weights


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> Generator:
    """Load an exported generator (a run folder or its ``generator.safetensors``); strict, never random weights.

    Raises:
        FileNotFoundError: the weights or the JSON config are missing.
        ValueError: the config is invalid or does not match the weights.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights, config = folder / EXPORT_WEIGHTS, folder / EXPORT_CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(f"exported generator incomplete: {f} is missing")
    data = json.loads(config.read_text())
    data.pop("training", None)
    G = Generator.from_config(GeneratorConfig.from_dict(data))
    try:
        G.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match {config}: {exc}") from exc
    return G.to(device).eval()


def load_checkpoint_generator(path: str | Path, which: str = "G_ema", device: str = "cpu") -> Generator:
    """The generator (``G_ema`` or ``G``) of a training checkpoint folder, with its config from ``meta.json``."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    extra = json.loads(meta_file.read_text())["extra"]
    G = Generator.from_config(GeneratorConfig.from_dict(extra["G_config"]))
    load_checkpoint(path, {which: G}, restore_rng=False)
    return G.to(device).eval()


def _save_module(module: nn.Module, config: Mapping[str, Any], folder: Path, name: str) -> None:

    tmp_w, tmp_c = folder / f".{name}.safetensors.tmp", folder / f".{name}.json.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps(dict(config), indent=1))
    tmp_w.replace(folder / f"{name}.safetensors")
    tmp_c.replace(folder / f"{name}.json")


def save_final(
    folder: Path,
    model: ShapeModel,
    generator: nn.Module,
    face_model_path: Path,
    info: Mapping[str, Any],
) -> Path:
    """Write the trained networks where the export stage picks them up.

    ``folder`` gets ``encoder``, ``displacement``, ``albedo_head`` and ``generator`` (each ``.safetensors`` + ``.json``
    config with a format version; the generator in the albedo stage's export format, loadable with
    :func:`training.albedo.load_generator`) and ``shape_model.json`` (face model path and sha256, the jaw joint,
    the crop scale, the training info).
    """

    folder.mkdir(parents=True, exist_ok=True)
    _save_module(model.encoder, model.encoder.config.to_dict(), folder, "encoder")
    _save_module(model.displacement, model.displacement.config.to_dict(), folder, "displacement")
    _save_module(model.albedo_head, model.albedo_head.config.to_dict(), folder, "albedo_head")
    save_generator(generator, folder, info)
    meta = {
        "format_version": 1,
        "kind": "shape.ShapeModel",
        "face_model": {"path": str(face_model_path), "sha256": sha256_file(face_model_path)},
        "jaw_index": model.jaw_index,
        "detach_head_features": model.detach_head_features,
        "training": dict(info),
    }
    (folder / "shape_model.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_final(folder: str | Path, device: str | torch.device = "cpu") -> tuple[ShapeModel, nn.Module]:
    """Inverse of :func:`save_final`: (shape model, generator), strict; missing files raise FileNotFoundError."""

    folder = Path(folder)
    for name in ("encoder", "displacement", "albedo_head", "shape_model"):
        if not (folder / f"{name}.json").is_file():
            raise FileNotFoundError(f"{folder}: {name}.json is missing (not a shape-model folder)")
    meta = json.loads((folder / "shape_model.json").read_text())
    if meta.get("kind") != "shape.ShapeModel" or meta.get("format_version") != 1:
        raise ValueError(f"{folder}/shape_model.json: not a shape.ShapeModel of format version 1")

    def load(module: nn.Module, name: str) -> nn.Module:
        try:
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder}/{name}.safetensors does not match its config: {exc}") from exc
        return module

    enc = load(
        Encoder.from_config(EncoderConfig.from_dict(json.loads((folder / "encoder.json").read_text()))), "encoder"
    )
    disp = load(
        DisplacementDecoder.from_config(
            DisplacementConfig.from_dict(json.loads((folder / "displacement.json").read_text()))
        ),
        "displacement",
    )
    head = load(
        AlbedoHead.from_config(AlbedoHeadConfig.from_dict(json.loads((folder / "albedo_head.json").read_text()))),
        "albedo_head",
    )
    model = ShapeModel(enc, disp, head, meta["jaw_index"], meta["detach_head_features"])  # type: ignore[arg-type]
    return model.to(device), load_generator(folder, device)
