"""Load official NVlabs StyleGAN2 / StyleGAN2-ADA network pickles into :mod:`models.stylegan2`.

The file is read as data by :func:`models.stylegan2.nvlabs_pickle.read_stylegan2_pickle` (the restricted
unpickler: no code from it runs).

Conversion: the config (:class:`models.stylegan2.GeneratorConfig` / ``DiscriminatorConfig``) comes from the
captured constructor arguments (both the stylegan2-ada-pytorch layout with nested ``synthesis_kwargs`` and the
StyleGAN3 repo's flat one); an argument left at its class default is read from the attribute the module
stored (defaults differ between NVlabs versions), and arguments that cannot change the weights or the fp32
output (``num_fp16_res``, ``fp16_channels_last``, ``freeze_layers``…) are reported in ``info.ignored``. The
built network's scalar attributes (``weight_gain``, ``bias_gain``, ``conv_clamp``, ``activation``…) are then
compared with the stored ones, module by module, so a wrongly derived config fails loudly instead of giving
wrong images. Finally the captured tree is flattened to ``{dotted.name: tensor}`` (parameters plus persistent
buffers, the keys ``state_dict()`` would give), renamed with :data:`NAME_MAP` (identity: this project's
modules mirror NVlabs' names) and loaded with ``load_state_dict(strict=True)``; a missing, unexpected or
mis-shaped key raises :class:`StyleGAN2PickleError` naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.stylegan2.config import DiscriminatorConfig, EpilogueConfig, GeneratorConfig, MappingConfig, SynthesisConfig
from models.stylegan2.discriminator import Discriminator
from models.stylegan2.generator import Generator
from models.stylegan2.nvlabs_pickle import (
    CapturedModule,
    NVlabsPickle,
    StyleGAN2PickleError,
    _plain,
    read_stylegan2_pickle,
)

logger = logging.getLogger(__name__)

__all__ = [
    "NAME_MAP",
    "StyleGAN2PickleInfo",
    "load_stylegan2_pickle",
]

WHICH = ("G_ema", "G", "D")

# ============================================================================================ conversion
NAME_MAP: tuple[tuple[str, str], ...] = ()
"""Source-key renames, ``(regex, replacement)`` applied in order to every flattened NVlabs key before loading.

Empty: :mod:`models.stylegan2` mirrors NVlabs ``training/networks.py`` (and the StyleGAN3 repo's
``networks_stylegan2.py``) name for name, so every key maps to itself, e.g.
``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b{res}.conv0.affine.weight``,
``synthesis.b{res}.conv1.noise_const``, ``synthesis.b{res}.torgb.weight``, ``synthesis.b{res}.resample_filter``;
``b{res}.fromrgb/conv0/conv1/skip.*``, ``b4.conv/fc/out.*`` for the discriminator. Parameters that NVlabs
stores as buffers (Freeze-D's frozen discriminator layers) have the same ``state_dict`` key either way.
"""

_G_SIGNATURE = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_D_SIGNATURE = (
    "c_dim",
    "img_resolution",
    "img_channels",
    "architecture",
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "conv_clamp",
    "cmap_dim",
    "block_kwargs",
    "mapping_kwargs",
    "epilogue_kwargs",
)
# NVlabs constructor arguments that change speed, memory layout or training only, never the stored weights
# or the fp32 output; dropped (and reported in ``info.ignored``).
_WEIGHT_NEUTRAL_KWARGS = {
    "fp16_channels_last": "memory layout of fp16 activations",
    "channels_last": "memory layout",
    "fused_modconv_default": "choice of the fused/non-fused modulated convolution (same result)",
    "freeze_layers": "Freeze-D/-M training option (frozen weights load the same)",
    "freeze_embed": "Freeze-E training option (frozen weights load the same)",
}
# Config field → (captured module path, attribute) that holds the value actually used (see _fill_from_stored).
_G_MAPPING_STORED = {
    "num_layers": ("mapping", "num_layers"),
    "w_avg_beta": ("mapping", "w_avg_beta"),
    "lr_multiplier": ("mapping.fc0", "bias_gain"),
    "activation": ("mapping.fc0", "activation"),
}
_G_SYNTHESIS_STORED = {
    "conv_clamp": ("synthesis.b4.conv1", "conv_clamp"),
    "use_noise": ("synthesis.b4.conv1", "use_noise"),
    "activation": ("synthesis.b4.conv1", "activation"),
    "architecture": ("synthesis.b4", "architecture"),
}
_D_EPILOGUE_STORED = {
    "mbstd_group_size": ("b4.mbstd", "group_size"),
    "mbstd_num_channels": ("b4.mbstd", "num_channels"),
    "activation": ("b4.conv", "activation"),
}
# Attributes compared between each captured NVlabs module and the module built here, where both have them:
# they catch a config derived wrongly from the init kwargs (learning-rate multiplier, clamp, activation…),
# which shape checks cannot see.
_CHECKED_ATTRIBUTES = (
    "z_dim",
    "c_dim",
    "w_dim",
    "num_ws",
    "img_resolution",
    "img_channels",
    "cmap_dim",
    "in_channels",
    "resolution",
    "is_last",
    "architecture",
    "num_conv",
    "num_torgb",
    "activation",
    "up",
    "down",
    "padding",
    "use_noise",
    "conv_clamp",
    "weight_gain",
    "bias_gain",
    "act_gain",
    "w_avg_beta",
    "num_layers",
    "group_size",
    "num_channels",
)


@dataclass(frozen=True)
class StyleGAN2PickleInfo:
    """What :func:`load_stylegan2_pickle` loaded, and what it left out.

    Attributes:
        path: the file.
        which: the entry loaded (``'G_ema'``, ``'G'`` or ``'D'``).
        container: ``'pickle'``, ``'torch-zip'`` or ``'torch-legacy'``.
        class_name: source class of the loaded network (``'Generator'`` / ``'Discriminator'``).
        source: where that class came from (``'torch_utils.persistence'`` or a dotted class path).
        source_classes: every top-level entry → its type (``{'G': 'Generator', 'augment_pipe': 'AugmentPipe',
            'training_set_kwargs': 'dict', …}``).
        img_resolution: R of the (B, img_channels, R, R) images.
        img_channels: image channels.
        z_dim: latent size (``None`` for a discriminator).
        w_dim: W size (``None`` for a discriminator).
        c_dim: label size, 0 = unconditional.
        init_kwargs: the NVlabs constructor arguments as captured (plain data).
        config: the :class:`~models.stylegan2.GeneratorConfig` / ``DiscriminatorConfig`` built from them.
        ignored: entries, constructor arguments and state left unused, each with the reason.
        renamed: ``(source key, our key)`` for every key :data:`NAME_MAP` changed (empty: identity).
        num_tensors: number of tensors loaded.
        module_src_sha256: SHA-256 of the embedded (never executed) ``training/networks.py`` source.
    """

    path: Path
    which: str
    container: str
    class_name: str
    source: str
    source_classes: dict[str, str]
    img_resolution: int
    img_channels: int
    z_dim: int | None
    w_dim: int | None
    c_dim: int
    init_kwargs: dict[str, Any]
    config: Any
    ignored: tuple[str, ...]
    renamed: tuple[tuple[str, str], ...]
    num_tensors: int
    module_src_sha256: str | None


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    return value.class_name if isinstance(value, CapturedModule) else type(value).__name__


def _bind(net: CapturedModule, signature: tuple[str, ...]) -> dict[str, Any]:
    """Positional + keyword constructor arguments as one dict (NVlabs passes keywords; positionals are rare)."""
    args, kwargs = net.init_args, net.init_kwargs
    if len(args) > len(signature):
        raise StyleGAN2PickleError(f"{net.class_name}: {len(args)} positional init args, expected <= {len(signature)}")
    bound = dict(zip(signature, args, strict=False))
    clash = sorted(set(bound) & set(kwargs))
    if clash:
        raise StyleGAN2PickleError(f"{net.class_name}: init args given twice: {clash}")
    return bound | kwargs


def _take(kwargs: dict[str, Any], name: str, net: CapturedModule, default: Any = ...) -> Any:
    if name in kwargs:
        return kwargs.pop(name)
    if default is ...:
        raise StyleGAN2PickleError(
            f"{net.class_name}: init kwargs lack {name!r} (have {sorted(kwargs)}); not an NVlabs network pickle?"
        )
    return default


def _sub_kwargs(kwargs: dict[str, Any], name: str, net: CapturedModule) -> dict[str, Any]:
    value = kwargs.pop(name, None) or {}
    if not isinstance(value, Mapping):
        raise StyleGAN2PickleError(f"{net.class_name}: {name} is a {type(value).__name__}, not a dict")
    return dict(value)


def _drop_neutral(kwargs: dict[str, Any], where: str, ignored: list[str]) -> dict[str, Any]:
    for key in sorted(set(kwargs) & set(_WEIGHT_NEUTRAL_KWARGS)):
        ignored.append(f"init kwarg {where}{key}={kwargs.pop(key)!r} ({_WEIGHT_NEUTRAL_KWARGS[key]})")
    return kwargs


def _make_config(factory: Callable[..., Any], kwargs: dict[str, Any], where: str) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as exc:  # an NVlabs argument this implementation has no field for
        raise StyleGAN2PickleError(f"{where}: unsupported NVlabs init kwargs {sorted(kwargs)} ({exc})") from exc
    except ValueError as exc:  # e.g. an architecture other than 'skip' / 'resnet'
        raise StyleGAN2PickleError(f"{where}: {exc}") from exc


def _stored(net: CapturedModule, path: str, attr: str) -> tuple[bool, Any]:
    """``(found, value)`` of attribute ``attr`` of the captured submodule at dotted ``path``."""
    node = net
    for name in path.split(".") if path else ():
        node = node.children.get(name)
        if node is None:
            return False, None
    return (attr in node.state), _plain(node.state.get(attr))


def _fill_from_stored(kwargs: dict[str, Any], net: CapturedModule, table: dict[str, tuple[str, str]]) -> None:
    """Arguments the pickle's init kwargs leave at the class default take the value the modules stored.

    Defaults drift between NVlabs versions (``w_avg_beta`` 0.995 vs 0.998, ``conv_clamp`` None vs 256 in some
    forks), and the kwargs record only what was passed; the attributes record what was used.
    """
    for key, (path, attr) in table.items():
        if key not in kwargs:
            found, value = _stored(net, path, attr)
            if found:
                kwargs[key] = value


def _generator_config(net: CapturedModule, ignored: list[str]) -> Any:

    kwargs = _bind(net, _G_SIGNATURE)
    top = {name: _take(kwargs, name, net) for name in ("z_dim", "w_dim", "img_resolution")}
    top["c_dim"] = _take(kwargs, "c_dim", net, 0)
    top["img_channels"] = _take(kwargs, "img_channels", net, 3)
    mapping = _drop_neutral(_sub_kwargs(kwargs, "mapping_kwargs", net), "mapping_kwargs.", ignored)
    synthesis = _sub_kwargs(kwargs, "synthesis_kwargs", net)
    synthesis.update(kwargs)  # StyleGAN3 repo (networks_stylegan2): synthesis kwargs are top-level **kwargs
    _drop_neutral(synthesis, "synthesis_kwargs.", ignored)
    if "num_fp16_res" in synthesis:
        ignored.append(f"init kwarg num_fp16_res={synthesis['num_fp16_res']!r} (stored, computation stays fp32)")
    _fill_from_stored(mapping, net, _G_MAPPING_STORED)
    _fill_from_stored(synthesis, net, _G_SYNTHESIS_STORED)
    return GeneratorConfig(
        **top,
        mapping=_make_config(MappingConfig, mapping, "Generator mapping_kwargs"),
        synthesis=_make_config(SynthesisConfig, synthesis, "Generator synthesis_kwargs"),
    )


def _discriminator_config(net: CapturedModule, ignored: list[str]) -> Any:

    kwargs = _bind(net, _D_SIGNATURE)
    top = {"img_resolution": _take(kwargs, "img_resolution", net), "c_dim": _take(kwargs, "c_dim", net, 0)}
    top["img_channels"] = _take(kwargs, "img_channels", net, 3)
    block = _drop_neutral(_sub_kwargs(kwargs, "block_kwargs", net), "block_kwargs.", ignored)
    mapping = _drop_neutral(_sub_kwargs(kwargs, "mapping_kwargs", net), "mapping_kwargs.", ignored)
    epilogue = _drop_neutral(_sub_kwargs(kwargs, "epilogue_kwargs", net), "epilogue_kwargs.", ignored)
    _drop_neutral(kwargs, "", ignored)
    if "num_fp16_res" in kwargs:
        ignored.append(f"init kwarg num_fp16_res={kwargs['num_fp16_res']!r} (stored, computation stays fp32)")
    if top["c_dim"] == 0 and mapping:  # no label mapping network exists (legacy.py writes num_layers=0 here)
        ignored.append(f"init kwarg mapping_kwargs={mapping!r} (unconditional: no label mapping)")
        mapping = {}
    first = f"b{top['img_resolution']}"
    _fill_from_stored(
        kwargs, net, {"conv_clamp": (f"{first}.conv0", "conv_clamp"), "architecture": (first, "architecture")}
    )
    _fill_from_stored(block, net, {"activation": (f"{first}.conv0", "activation")})
    _fill_from_stored(epilogue, net, _D_EPILOGUE_STORED)
    return _make_config(
        DiscriminatorConfig,
        {
            **top,
            **kwargs,
            **block,
            "mapping": _make_config(MappingConfig, mapping, "Discriminator mapping_kwargs"),
            "epilogue": _make_config(EpilogueConfig, epilogue, "Discriminator epilogue_kwargs"),
        },
        "Discriminator init kwargs",
    )


def _rename(key: str) -> str:
    for pattern, replacement in NAME_MAP:
        key = re.sub(pattern, replacement, key)
    return key


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, bool | None | str) or isinstance(b, bool | None | str):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-12)
    return a == b


def _check_attributes(net: CapturedModule, model: torch.nn.Module, path: str = "") -> None:
    """Compare :data:`_CHECKED_ATTRIBUTES` of every captured module with the module at the same (renamed) path."""
    try:
        ours = model.get_submodule(_rename(path))
    except AttributeError:
        return  # reported by the key check
    for attr in _CHECKED_ATTRIBUTES:
        if attr in net.state and attr in vars(ours) and not _same(net.state[attr], vars(ours)[attr]):
            raise StyleGAN2PickleError(
                f"{path or '<root>'}.{attr}: the pickle's {net.class_name} has {_plain(net.state[attr])!r}, the "
                f"network built from its init kwargs has {vars(ours)[attr]!r}; the kwargs do not describe these "
                "weights"
            )
    for name, child in net.children.items():
        _check_attributes(child, model, f"{path}.{name}" if path else name)


def _load_weights(net: CapturedModule, model: torch.nn.Module, what: str) -> tuple[int, list[tuple[str, str]]]:
    source = net.tensors()
    renamed = [(key, _rename(key)) for key in source if _rename(key) != key]
    state = {_rename(key): tensor for key, tensor in source.items()}
    if len(state) != len(source):
        raise StyleGAN2PickleError(f"{what}: NAME_MAP maps two source keys onto one")
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    problems = [f"missing key {k!r} (the pickle has no such tensor)" for k in missing]
    problems += [f"unexpected key {k!r} (no such tensor in models.stylegan2)" for k in unexpected]
    problems += [
        f"shape mismatch for {k!r}: pickle {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if state[k].shape != target[k].shape
    ]
    if problems:
        hint = ""
        synthesis = net.children.get("synthesis")
        if synthesis is not None and "input" in synthesis.children:
            hint = " (this looks like a StyleGAN3 generator, which this loader does not support)"
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        raise StyleGAN2PickleError(f"{what}: the pickle's weights do not fit the network{hint}: {shown}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtype/copy problems the checks above did not foresee
        raise StyleGAN2PickleError(f"{what}: load_state_dict failed: {exc}") from exc
    return len(state), renamed


def _pick(pkl: NVlabsPickle, which: str) -> tuple[str, CapturedModule]:
    expected = "Discriminator" if which == "D" else "Generator"
    value = pkl.entries.get(which)
    if value is None and which == "G_ema" and "Gs" in pkl.entries:
        value = pkl.entries["Gs"]  # not produced by the PyTorch repos; accepted if someone renamed the entry
    if value is None:
        if pkl.bare_network and expected in pkl.entries:  # a file holding one network object, e.g. G alone
            return expected, pkl.entries[expected]
        available = {k: _describe(v) for k, v in pkl.entries.items()}
        raise StyleGAN2PickleError(f"{pkl.path}: no {which!r} entry (the file holds {available})")
    if not isinstance(value, CapturedModule):
        raise StyleGAN2PickleError(f"{pkl.path}: entry {which!r} is a {type(value).__name__}, not a network")
    if value.class_name != expected:
        raise StyleGAN2PickleError(f"{pkl.path}: entry {which!r} is a {value.class_name}, expected a {expected}")
    return which, value


def load_stylegan2_pickle(
    path: str | Path, *, which: str = "G_ema", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, StyleGAN2PickleInfo]:
    """Load an official NVlabs StyleGAN2 / StyleGAN2-ADA network into :mod:`models.stylegan2` modules.

    The file is read by the restricted unpickler (:func:`read_stylegan2_pickle`; no code from it runs), the
    config is derived from the captured NVlabs constructor arguments, the weights are renamed with
    :data:`NAME_MAP` and loaded with ``strict=True``.

    Args:
        path: ``ffhq.pkl``, ``stylegan2-ffhq-1024x1024.pkl``, a training snapshot, …
        which: ``'G_ema'`` (the generator to sample from), ``'G'`` (raw generator) or ``'D'``.
        device: where the returned module lives.

    Returns:
        ``(network, info)``: a :class:`~models.stylegan2.Generator` (``which`` in G_ema/G; images
        (B, 3, R, R) roughly in [-1, 1]) or :class:`~models.stylegan2.Discriminator`, in eval mode; and a
        :class:`StyleGAN2PickleInfo`.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names a global outside the allow-list (nothing from it was run).
        StyleGAN2PickleError: truncated/corrupt file, no such entry, unsupported constructor arguments, or
            weights that do not fit (the message names the key).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    pkl = read_stylegan2_pickle(path)
    name, net = _pick(pkl, which)
    ignored = [f"{k} ({_describe(v)}, not requested)" for k, v in pkl.entries.items() if k != name]
    what = f"{pkl.path}[{name!r}]"
    try:
        if which == "D":
            config = _discriminator_config(net, ignored)
            model: torch.nn.Module = Discriminator.from_config(config)
        else:
            config = _generator_config(net, ignored)
            model = Generator.from_config(config)
    except StyleGAN2PickleError as exc:
        raise StyleGAN2PickleError(f"{what}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise StyleGAN2PickleError(f"{what}: cannot build the network from its init kwargs: {exc}") from exc
    _check_attributes(net, model)
    num_tensors, renamed = _load_weights(net, model, what)
    model = model.eval().to(device)
    generator = which != "D"
    info = StyleGAN2PickleInfo(
        path=pkl.path,
        which=name,
        container=pkl.container,
        class_name=net.class_name,
        source=net.source,
        source_classes={k: _describe(v) for k, v in pkl.entries.items()},
        img_resolution=config.img_resolution,
        img_channels=config.img_channels,
        z_dim=config.z_dim if generator else None,
        w_dim=config.w_dim if generator else None,
        c_dim=config.c_dim,
        init_kwargs=_bind(net, _G_SIGNATURE if generator else _D_SIGNATURE),
        config=config,
        ignored=tuple(ignored),
        renamed=tuple(renamed),
        num_tensors=num_tensors,
        module_src_sha256=net.module_src_sha256,
    )
    logger.info(
        "loaded %s %s (%d tensors, %d² px) from %s; ignored: %s",
        name,
        net.class_name,
        num_tensors,
        config.img_resolution,
        pkl.path,
        ", ".join(ignored) or "nothing",
    )
    return model, info
