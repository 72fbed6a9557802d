"""Reads a user's insightface / ArcFace PyTorch weights (``.pth`` state dict) into our IResNet backbone.

The file is a plain state dict of insightface's ``iresnet{18,34,50,100}`` (``arcface_torch`` saves
``backbone.state_dict()``): keys such as ``conv1.weight``, ``bn1.running_mean``, ``prelu.weight``,
``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ``bn2.*``, ``fc.weight``, ``features.*``.
Accepted variations: a ``module.`` prefix (saved from DistributedDataParallel), the state dict nested under
``state_dict`` / ``model`` / ``backbone``, and missing ``num_batches_tracked`` counters (older PyTorch).
Everything else must match exactly; a mismatch raises with the offending keys and shapes, it never falls
back to random weights. Read with ``torch.load(weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from models.encoder import FC_GRID, IRESNET_LAYERS, Encoder, IResNet

logger = logging.getLogger(__name__)

_PREFIXES = ("module.",)
_NESTED = ("state_dict", "model", "backbone")


def _show(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … ({len(keys)} in all)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def _guess_depth(keys: set[str]) -> int | None:
    """The insightface depth whose blocks-per-layer match the keys' ``layerN.i`` indices, if any."""
    blocks = [0, 0, 0, 0]
    for k in keys:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            layer, block = int(m.group(1)) - 1, int(m.group(2))
            blocks[layer] = max(blocks[layer], block + 1)
    for depth, layers in IRESNET_LAYERS.items():
        if tuple(blocks) == layers:
            return depth
    return None


def read_arcface_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The insightface-named tensors of an ArcFace ``.pth`` file (prefixes stripped, nesting removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors (code objects, modules) and corrupt files alike
        raise ValueError(
            f"{path}: not a readable PyTorch state dict with weights_only=True ({type(exc).__name__}: {exc}). "
            "Save the backbone's state_dict() (tensors only), not the pickled module."
        ) from exc
    for key in _NESTED:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        out[name] = value
    return out


def load_arcface_weights(encoder: Encoder | IResNet, path: str | Path) -> None:
    """Load an insightface ArcFace backbone state dict into ``encoder.backbone`` (strict).

    Args:
        encoder: an :class:`~models.encoder.Encoder` (its backbone is loaded; the heads are untouched) or an
            :class:`~models.encoder.IResNet`.
        path: the ``.pth`` file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, missing or unexpected keys (named, with the depth the file looks like),
            or tensors of the wrong shape (named with both shapes).
    """
    backbone = encoder.backbone if isinstance(encoder, Encoder) else encoder
    if not isinstance(backbone, IResNet):
        raise TypeError(f"encoder: expected an Encoder or IResNet, got {type(encoder).__name__}")
    if backbone.fc_grid != FC_GRID:
        raise ValueError(
            f"ArcFace weights need the encoder's fc to see a {FC_GRID}x{FC_GRID} grid; this one has "
            f"fc_grid={backbone.fc_grid} (set model.encoder.fc_grid: {FC_GRID})"
        )
    state = read_arcface_state_dict(path)
    expected = backbone.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        guess = _guess_depth(set(state))
        hint = (
            f" The file looks like IResNet-{guess}; build the encoder with depth={guess}."
            if guess is not None and guess != backbone.depth
            else ""
        )
        raise ValueError(
            f"{path}: does not match IResNet-{backbone.depth}: missing keys {_show(missing)}, "
            f"unexpected keys {_show(unexpected)}.{hint}"
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape for IResNet-{backbone.depth}: " + "; ".join(wrong))
    for k in optional:
        state.setdefault(k, expected[k])
    converted = {k: state[k].to(dtype=v.dtype) for k, v in expected.items()}
    nn.Module.load_state_dict(backbone, converted, strict=True)
    logger.info("loaded ArcFace IResNet-%d weights from %s (%d tensors)", backbone.depth, path, len(converted))
