"""Official-checkpoint loader: pickles written here in the NVlabs layout, at tiny size, read back safely.

The pickles reproduce what stylegan2-ada-pytorch's ``torch_utils/persistence.py`` writes: every network object
reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with the module source (here: a
payload that would create a marker file if anything executed it), the class name and the module
``__dict__``; constructor kwargs are ``dnnlib.util.EasyDict``; tensors are pickled by torch itself. The
NVlabs module tree and shapes are written out below from the reference architecture rules, independently of
``models.stylegan2``; only the weight values come from an instance of our modules.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.stylegan2 import Discriminator, Generator
from models.stylegan2.nvlabs_load import NAME_MAP, load_stylegan2_pickle
from models.stylegan2.nvlabs_pickle import (
    CapturedModule,
    StyleGAN2PickleError,
    UnsafePickleError,
    read_stylegan2_pickle,
)

Z_DIM = W_DIM = 32
RES = 16
CHANNEL_BASE, CHANNEL_MAX = 256, 32  # channels: 4² → 32, 8² → 32, 16² → 16
MAP_LAYERS = 2
CONV_CLAMP = 256


# ------------------------------------------------------------------------------- the NVlabs pickling layout
class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict``, like the real init kwargs."""


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:  # pickled by reference only, never called
    raise AssertionError("the loader must not call the original reconstruction function")


class NVlabsModules:
    """Registers fake ``torch_utils.persistence`` / ``dnnlib.util`` / ``training.networks`` so pickle can name them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
        self.marker = marker
        # What persistence.py would exec() on load: it would leave the marker file behind.
        self.module_src = (
            "import numpy as np\nimport torch\n"
            f"open({str(marker)!r}, 'w').write('pwned')\n"
            "class Generator(torch.nn.Module):\n    pass\n"
        )
        persistence = types.ModuleType("torch_utils.persistence")
        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        dnnlib_util = types.ModuleType("dnnlib.util")
        EasyDict.__module__ = "dnnlib.util"
        dnnlib_util.EasyDict = EasyDict
        self.networks = types.ModuleType("training.networks")
        for name, module in [
            ("torch_utils", types.ModuleType("torch_utils")),
            ("torch_utils.persistence", persistence),
            ("dnnlib", types.ModuleType("dnnlib")),
            ("dnnlib.util", dnnlib_util),
            ("training.networks", self.networks),
        ]:
            monkeypatch.setitem(sys.modules, name, module)

    def direct_class(self, class_name: str) -> type:
        """A class ``training.networks.<class_name>`` pickled the default way (NEWOBJ + BUILD of __dict__)."""
        if not hasattr(self.networks, class_name):
            cls = type(class_name, (), {"__module__": "training.networks"})
            setattr(self.networks, class_name, cls)
        return getattr(self.networks, class_name)


class Persistent:
    """Pickles exactly like an object of an NVlabs ``@persistence.persistent_class`` (version 6)."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str) -> None:
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self) -> tuple[Any, ...]:
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


class Tree:
    """Writes the NVlabs module tree for a tiny network, taking tensors from a state dict by NVlabs key."""

    def __init__(self, env: NVlabsModules, tensors: dict[str, torch.Tensor], direct: bool = False) -> None:
        self.env, self.tensors, self.direct = env, dict(tensors), direct
        self.used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = self.tensors[key]  # KeyError: our modules lack an NVlabs tensor
        assert tuple(tensor.shape) == shape, f"{key}: {tuple(tensor.shape)} vs NVlabs {shape}"
        self.used.add(key)
        if tensor.ndim == 4 and key.startswith(f"synthesis.b{RES}."):  # fp16 blocks with fp16_channels_last
            return tensor.detach().clone().contiguous(memory_format=torch.channels_last)
        return tensor.detach().clone()

    def node(
        self,
        class_name: str,
        prefix: str,
        params: dict,
        buffers: dict,
        children: dict,
        attrs: dict,
        init_kwargs: dict,
        frozen: bool = False,
    ) -> Any:
        """One module: parameters/buffers as NVlabs registers them, plus its plain attributes and init kwargs."""
        p = OrderedDict(
            (n, torch.nn.Parameter(self.take(prefix + n, s), requires_grad=False)) for n, s in params.items()
        )
        b = OrderedDict((n, self.take(prefix + n, s)) for n, s in buffers.items())
        if frozen:  # Freeze-D: trainable=False registers weight and bias as buffers
            b.update((n, t.detach()) for n, t in p.items())
            p = OrderedDict()
        state = {
            "training": False,
            "_parameters": p,
            "_buffers": b,
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(children),
            **attrs,
            "_init_args": (),
            "_init_kwargs": init_kwargs,
        }
        if self.direct:
            obj = self.env.direct_class(class_name).__new__(self.env.direct_class(class_name))
            obj.__dict__.update(state)
            return obj
        return Persistent(class_name, state, self.env.module_src)

    # --- layers ---------------------------------------------------------------------------------------
    def fc(self, prefix: str, fin: int, fout: int, activation: str = "linear", lr: float = 1, bias_init: float = 0):
        attrs = {"activation": activation, "weight_gain": np.float64(lr / np.sqrt(fin)), "bias_gain": lr}
        kwargs = dict(in_features=fin, out_features=fout, activation=activation, lr_multiplier=lr, bias_init=bias_init)
        return self.node("FullyConnectedLayer", prefix, {"weight": (fout, fin), "bias": (fout,)}, {}, {}, attrs, kwargs)

    def conv(
        self,
        prefix: str,
        cin: int,
        cout: int,
        k: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        clamp: Any = None,
        frozen: bool = False,
    ):
        params = {"weight": (cout, cin, k, k), **({"bias": (cout,)} if bias else {})}
        gain = np.sqrt(2) if activation == "lrelu" else 1
        attrs = {
            "activation": activation,
            "up": 1,
            "down": down,
            "conv_clamp": clamp,
            "padding": k // 2,
            "weight_gain": np.float64(1 / np.sqrt(cin * k * k)),
            "act_gain": gain,
        }
        kwargs = dict(in_channels=cin, out_channels=cout, kernel_size=k, bias=bias, activation=activation, down=down)
        buffers = {"resample_filter": (4, 4)}
        return self.node("Conv2dLayer", prefix, params, buffers, {}, attrs, kwargs, frozen=frozen)

    def synthesis_layer(self, prefix: str, cin: int, cout: int, res: int, up: int):
        params = {"weight": (cout, cin, 3, 3), "noise_strength": (), "bias": (cout,)}
        buffers = {"resample_filter": (4, 4), "noise_const": (res, res)}
        attrs = {
            "resolution": res,
            "up": up,
            "use_noise": True,
            "activation": "lrelu",
            "conv_clamp": CONV_CLAMP,
            "padding": 1,
            "act_gain": np.sqrt(2),
        }
        children = {"affine": self.fc(prefix + "affine.", W_DIM, cin, bias_init=1)}
        kwargs = dict(in_channels=cin, out_channels=cout, w_dim=W_DIM, resolution=res, up=up, conv_clamp=CONV_CLAMP)
        return self.node("SynthesisLayer", prefix, params, buffers, children, attrs, kwargs)

    # --- networks ---------------------------------------------------------------------------------------
    def generator(self, init_kwargs: dict[str, Any]) -> Any:
        ch = {r: min(CHANNEL_BASE // r, CHANNEL_MAX) for r in (4, 8, 16)}
        resolutions = [4, 8, 16]
        blocks, num_ws = {}, 0
        for res in resolutions:
            pre = f"synthesis.b{res}."
            cin, cout, first = ch.get(res // 2, 0), ch[res], res == 4
            children = {} if first else {"conv0": self.synthesis_layer(pre + "conv0.", cin, cout, res, up=2)}
            children["conv1"] = self.synthesis_layer(pre + "conv1.", cout, cout, res, up=1)
            rgb_attrs = {"conv_clamp": CONV_CLAMP, "weight_gain": np.float64(1 / np.sqrt(cout))}
            children["torgb"] = self.node(
                "ToRGBLayer",
                pre + "torgb.",
                {"weight": (3, cout, 1, 1), "bias": (3,)},
                {},
                {"affine": self.fc(pre + "torgb.affine.", W_DIM, cout, bias_init=1)},
                rgb_attrs,
                dict(in_channels=cout, out_channels=3, w_dim=W_DIM, conv_clamp=CONV_CLAMP),
            )
            num_conv = 1 if first else 2
            num_ws += num_conv + (1 if res == RES else 0)
            attrs = {
                "in_channels": cin,
                "w_dim": W_DIM,
                "resolution": res,
                "img_channels": 3,
                "is_last": res == RES,
                "architecture": "skip",
                "use_fp16": res >= 8,
                "channels_last": False,
                "num_conv": num_conv,
                "num_torgb": 1,
            }
            blocks[f"b{res}"] = self.node(
                "SynthesisBlock",
                pre,
                {"const": (cout, 4, 4)} if first else {},
                {"resample_filter": (4, 4)},
                children,
                attrs,
                dict(in_channels=cin, out_channels=cout, w_dim=W_DIM, resolution=res),
            )
        synthesis = self.node(
            "SynthesisNetwork",
            "synthesis.",
            {},
            {},
            blocks,
            {
                "w_dim": W_DIM,
                "img_resolution": RES,
                "img_resolution_log2": 4,
                "img_channels": 3,
                "block_resolutions": resolutions,
                "num_ws": num_ws,
            },
            dict(w_dim=W_DIM, img_resolution=RES, img_channels=3, **init_kwargs.get("synthesis_kwargs", {})),
        )
        fcs = {
            f"fc{i}": self.fc(f"mapping.fc{i}.", Z_DIM if i == 0 else W_DIM, W_DIM, "lrelu", lr=0.01)
            for i in range(MAP_LAYERS)
        }
        mapping = self.node(
            "MappingNetwork",
            "mapping.",
            {},
            {"w_avg": (W_DIM,)},
            fcs,
            {
                "z_dim": Z_DIM,
                "c_dim": 0,
                "w_dim": W_DIM,
                "num_ws": num_ws,
                "num_layers": MAP_LAYERS,
                "w_avg_beta": 0.995,
            },
            dict(z_dim=Z_DIM, c_dim=0, w_dim=W_DIM, num_ws=num_ws, **init_kwargs["mapping_kwargs"]),
        )
        attrs = {"z_dim": Z_DIM, "c_dim": 0, "w_dim": W_DIM, "img_resolution": RES, "img_channels": 3, "num_ws": num_ws}
        net = self.node("Generator", "", {}, {}, {"synthesis": synthesis, "mapping": mapping}, attrs, init_kwargs)
        assert self.used == set(self.tensors), f"our modules have extra tensors: {set(self.tensors) - self.used}"
        return net

    def discriminator(self, init_kwargs: dict[str, Any]) -> Any:
        ch = {r: min(CHANNEL_BASE // r, CHANNEL_MAX) for r in (4, 8, 16)}
        freeze = init_kwargs["block_kwargs"].get("freeze_layers", 0)
        clamp, group = init_kwargs.get("conv_clamp"), init_kwargs["epilogue_kwargs"].get("mbstd_group_size", 4)
        children, layer_idx = {}, 0
        for res in (16, 8):
            pre, tmp, out = f"b{res}.", ch[res], ch[res // 2]
            block: dict[str, Any] = {}
            if res == RES:
                block["fromrgb"] = self.conv(
                    pre + "fromrgb.", 3, tmp, 1, activation="lrelu", clamp=clamp, frozen=layer_idx < freeze
                )
                layer_idx += 1
            block["conv0"] = self.conv(pre + "conv0.", tmp, tmp, 3, activation="lrelu", clamp=clamp)
            block["conv1"] = self.conv(pre + "conv1.", tmp, out, 3, activation="lrelu", down=2, clamp=clamp)
            block["skip"] = self.conv(pre + "skip.", tmp, out, 1, bias=False, down=2)
            attrs = {
                "in_channels": 0 if res == RES else tmp,
                "resolution": res,
                "img_channels": 3,
                "architecture": "resnet",
                "use_fp16": True,
                "channels_last": False,
            }
            children[f"b{res}"] = self.node(
                "DiscriminatorBlock", pre, {}, {"resample_filter": (4, 4)}, block, attrs, dict(resolution=res)
            )
        c4 = ch[4]
        mbstd = self.node("MinibatchStdLayer", "b4.mbstd.", {}, {}, {}, {"group_size": group, "num_channels": 1}, {})
        epilogue = {
            "mbstd": mbstd,
            "conv": self.conv("b4.conv.", c4 + 1, c4, 3, activation="lrelu", clamp=clamp),
            "fc": self.fc("b4.fc.", c4 * 16, c4, "lrelu"),
            "out": self.fc("b4.out.", c4, 1),
        }
        children["b4"] = self.node(
            "DiscriminatorEpilogue",
            "b4.",
            {},
            {},
            epilogue,
            {"in_channels": c4, "cmap_dim": 0, "resolution": 4, "img_channels": 3, "architecture": "resnet"},
            dict(in_channels=c4, cmap_dim=0, resolution=4),
        )
        attrs = {
            "c_dim": 0,
            "img_resolution": RES,
            "img_resolution_log2": 4,
            "img_channels": 3,
            "block_resolutions": [16, 8],
        }
        net = self.node("Discriminator", "", {}, {}, children, attrs, init_kwargs)
        assert self.used == set(self.tensors), f"our modules have extra tensors: {set(self.tensors) - self.used}"
        return net


def g_kwargs(**synthesis: Any) -> EasyDict:
    """Generator init kwargs as stylegan2-ada-pytorch's train.py passes them (EasyDicts, FFHQ-style settings)."""
    synthesis_kwargs = EasyDict(
        channel_base=CHANNEL_BASE, channel_max=CHANNEL_MAX, num_fp16_res=4, conv_clamp=CONV_CLAMP
    )
    synthesis_kwargs.update(synthesis)
    return EasyDict(
        z_dim=Z_DIM,
        w_dim=W_DIM,
        mapping_kwargs=EasyDict(num_layers=MAP_LAYERS),
        synthesis_kwargs=synthesis_kwargs,
        c_dim=0,
        img_resolution=RES,
        img_channels=3,
    )


def d_kwargs(converted: bool = False) -> EasyDict:
    if converted:  # what legacy.py writes for a TensorFlow StyleGAN2 discriminator (no clamp, whole-batch mbstd)
        return EasyDict(
            c_dim=0,
            img_resolution=RES,
            img_channels=3,
            architecture="resnet",
            channel_base=CHANNEL_BASE,
            channel_max=CHANNEL_MAX,
            num_fp16_res=0,
            conv_clamp=None,
            cmap_dim=None,
            block_kwargs=EasyDict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=0),
            mapping_kwargs=EasyDict(
                num_layers=0, embed_features=None, layer_features=None, activation="lrelu", lr_multiplier=0.1
            ),
            epilogue_kwargs=EasyDict(mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu"),
        )
    return EasyDict(
        block_kwargs=EasyDict(freeze_layers=1),
        mapping_kwargs=EasyDict(),
        epilogue_kwargs=EasyDict(mbstd_group_size=4),
        channel_base=CHANNEL_BASE,
        channel_max=CHANNEL_MAX,
        num_fp16_res=4,
        conv_clamp=CONV_CLAMP,
        c_dim=0,
        img_resolution=RES,
        img_channels=3,
    )


def make_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    g = Generator(
        Z_DIM,
        0,
        W_DIM,
        RES,
        3,
        mapping_kwargs={"num_layers": MAP_LAYERS},
        synthesis_kwargs={
            "channel_base": CHANNEL_BASE,
            "channel_max": CHANNEL_MAX,
            "num_fp16_res": 4,
            "conv_clamp": CONV_CLAMP,
        },
    )
    with torch.no_grad():  # trained-looking non-zero values everywhere (fresh init has zero biases / noise)
        for t in g.state_dict().values():
            if t.dtype.is_floating_point and t.ndim <= 1 and t.numel() > 1 or t.ndim == 0:
                t.add_(0.1 * torch.randn_like(t))
    return g.eval()


def make_discriminator(seed: int, converted: bool = False) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(
        0,
        RES,
        3,
        channel_base=CHANNEL_BASE,
        channel_max=CHANNEL_MAX,
        conv_clamp=None if converted else CONV_CLAMP,
        epilogue_kwargs={"mbstd_group_size": None if converted else 4},
    ).eval()


def nvlabs_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict under NVlabs names (inverse of NAME_MAP, which is the identity)."""
    assert NAME_MAP == ()
    return model.state_dict()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> NVlabsModules:
    return NVlabsModules(monkeypatch, tmp_path / "pwned")


@pytest.fixture
def sources() -> dict[str, torch.nn.Module]:
    return {"G": make_generator(1), "G_ema": make_generator(2), "D": make_discriminator(3)}


def write_snapshot(
    env: NVlabsModules,
    sources: dict[str, torch.nn.Module],
    path: Path,
    protocol: int = 3,
    direct: bool = False,
    augment_pipe: Any = None,
    g_overrides: dict | None = None,
    g_init: dict | None = None,
) -> Path:
    """A training snapshot the way stylegan2-ada-pytorch writes it (``pickle.dump`` of this dict)."""
    g_ema = Tree(env, nvlabs_state(sources["G_ema"]), direct).generator(g_init or g_kwargs())
    for key, tensor in (g_overrides or {}).items():  # after the layout check, which asserts NVlabs shapes
        *mods, leaf = key.split(".")
        node = g_ema
        for m in mods:
            node = (node.state if isinstance(node, Persistent) else vars(node))["_modules"][m]
        state = node.state if isinstance(node, Persistent) else vars(node)
        state["_parameters" if leaf in state["_parameters"] else "_buffers"][leaf] = tensor
    data = {
        "training_set_kwargs": dict(
            class_name="training.dataset.ImageFolderDataset",
            path="ffhq-16.zip",
            use_labels=False,
            max_size=70000,
            xflip=True,
            resolution=RES,
        ),
        "G": Tree(env, nvlabs_state(sources["G"]), direct).generator(g_kwargs()),
        "D": Tree(env, nvlabs_state(sources["D"]), direct).discriminator(d_kwargs()),
        "G_ema": g_ema,
        "augment_pipe": augment_pipe,
    }
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def assert_same_state(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    a, b = loaded.state_dict(), source.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------- tests
def test_g_ema_loads_exact_weights_and_output(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    path = write_snapshot(env, sources, tmp_path / "network-snapshot.pkl")
    g, info = load_stylegan2_pickle(path)  # which='G_ema' by default

    assert isinstance(g, Generator) and not g.training
    assert_same_state(g, sources["G_ema"])
    z = torch.randn([3, Z_DIM], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = sources["G_ema"](z, noise_mode="const")
        got = g(z, noise_mode="const")
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    assert (info.which, info.class_name, info.source, info.container) == (
        "G_ema",
        "Generator",
        "torch_utils.persistence",
        "pickle",
    )
    assert (info.img_resolution, info.img_channels, info.z_dim, info.w_dim, info.c_dim) == (RES, 3, Z_DIM, W_DIM, 0)
    assert info.source_classes == {
        "training_set_kwargs": "dict",
        "G": "Generator",
        "D": "Discriminator",
        "G_ema": "Generator",
        "augment_pipe": "None",
    }
    assert any(s.startswith("augment_pipe") for s in info.ignored)
    assert any("num_fp16_res=4" in s for s in info.ignored)
    assert info.init_kwargs["synthesis_kwargs"]["conv_clamp"] == CONV_CLAMP
    assert info.config.synthesis.conv_clamp == CONV_CLAMP and info.config.mapping.num_layers == MAP_LAYERS
    assert info.renamed == () and info.num_tensors == len(sources["G_ema"].state_dict())
    assert info.module_src_sha256 is not None and len(info.module_src_sha256) == 64
    assert not env.marker.exists(), "module_src was executed"


def test_g_ema_is_a_2d_face_image_generator(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    """The use in shape training: z → (B, 3, R, R) float images around [-1, 1]; G and G_ema are distinct."""
    path = write_snapshot(env, sources, tmp_path / "ffhq.pkl")
    g_ema, _ = load_stylegan2_pickle(path, which="G_ema")
    g_raw, info = load_stylegan2_pickle(path, which="G")
    assert info.which == "G"
    assert_same_state(g_raw, sources["G"])
    z = torch.randn([4, Z_DIM], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = g_ema(z, truncation_psi=0.7, noise_mode="const")
    assert img.shape == (4, 3, RES, RES) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.abs().max() < 8 and 0.05 < img.std() < 4, "not image-like magnitudes"
    assert not torch.equal(img, g_raw(z, truncation_psi=0.7).detach())


def test_discriminator_loads_with_frozen_layers(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    pipe = Persistent(
        "AugmentPipe",
        {
            "_parameters": OrderedDict(),
            "_modules": OrderedDict(),
            "_buffers": OrderedDict(p=torch.tensor(0.3)),
            "xflip": 1.0,
        },
        env.module_src,
    )
    path = write_snapshot(env, sources, tmp_path / "snap.pkl", augment_pipe=pipe)
    d, info = load_stylegan2_pickle(path, which="D")
    assert isinstance(d, Discriminator)
    assert_same_state(d, sources["D"])
    img = torch.randn([4, 3, RES, RES], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(d(img), sources["D"](img), rtol=0, atol=0)
    assert (info.class_name, info.z_dim, info.w_dim, info.img_resolution) == ("Discriminator", None, None, RES)
    assert info.source_classes["augment_pipe"] == "AugmentPipe"
    assert "augment_pipe (AugmentPipe, not requested)" in info.ignored
    assert any("freeze_layers=1" in s for s in info.ignored)
    assert not env.marker.exists()


def test_discriminator_converted_from_tensorflow(env: NVlabsModules, tmp_path: Path) -> None:
    """legacy.py's kwargs: num_layers=0 label mapping (unused when unconditional), mbstd over the whole batch."""
    source = make_discriminator(4, converted=True)
    path = tmp_path / "converted.pkl"
    path.write_bytes(pickle.dumps({"D": Tree(env, nvlabs_state(source)).discriminator(d_kwargs(converted=True))}))
    d, info = load_stylegan2_pickle(path, which="D")
    assert_same_state(d, source)
    assert info.config.epilogue.mbstd_group_size is None and info.config.conv_clamp is None
    assert any(s.startswith("init kwarg mapping_kwargs=") for s in info.ignored)
    img = torch.randn([3, 3, RES, RES], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(d(img), source(img), rtol=0, atol=0)


def test_kwargs_left_at_defaults_take_the_stored_values(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    """Defaults drift between NVlabs versions; a kwarg not passed is read from the modules' stored attributes."""
    kwargs = g_kwargs()
    del kwargs["synthesis_kwargs"]["conv_clamp"]  # the layers still store 256 (a fork whose default is 256)
    path = tmp_path / "fork.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Tree(env, nvlabs_state(sources["G_ema"])).generator(kwargs)}))
    g, info = load_stylegan2_pickle(path)
    assert info.config.synthesis.conv_clamp == CONV_CLAMP
    assert info.config.mapping.lr_multiplier == pytest.approx(0.01) and info.config.mapping.w_avg_beta == 0.995
    z = torch.randn([2, Z_DIM], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(g(z), sources["G_ema"](z), rtol=0, atol=0)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols_and_direct_class_references(
    env: NVlabsModules, sources: dict, tmp_path: Path, protocol: int
) -> None:
    """Other protocols (2 writes bytes via _codecs.encode) and classes named as ``training.networks.X``."""
    path = write_snapshot(env, sources, tmp_path / "snap.pkl", protocol=protocol, direct=protocol == 4)
    pkl = read_stylegan2_pickle(path)
    g_ema = pkl.entries["G_ema"]
    assert isinstance(g_ema, CapturedModule) and g_ema.class_name == "Generator"
    assert g_ema.source == ("training.networks.Generator" if protocol == 4 else "torch_utils.persistence")
    assert g_ema.init_kwargs["mapping_kwargs"] == {"num_layers": MAP_LAYERS}
    assert isinstance(g_ema.children["mapping"].children["fc0"].state["weight_gain"], np.floating)
    g, _ = load_stylegan2_pickle(path)
    assert_same_state(g, sources["G_ema"])
    assert not env.marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_files(env: NVlabsModules, sources: dict, tmp_path: Path, zip_format: bool) -> None:
    """The same objects written by torch.save (storages as persistent ids), zip and legacy format."""
    path = tmp_path / "snap.pt"
    data = {"G_ema": Tree(env, nvlabs_state(sources["G_ema"])).generator(g_kwargs())}
    torch.save(data, path, _use_new_zipfile_serialization=zip_format)
    g, info = load_stylegan2_pickle(path)
    assert info.container == ("torch-zip" if zip_format else "torch-legacy")
    assert_same_state(g, sources["G_ema"])


def test_bare_network_file(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    """A file holding one pickled generator (not a snapshot dict) loads as G / G_ema, not as D."""
    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps(Tree(env, nvlabs_state(sources["G"])).generator(g_kwargs())))
    g, info = load_stylegan2_pickle(path, which="G")
    assert_same_state(g, sources["G"])
    assert info.source_classes == {"Generator": "Generator"}
    with pytest.raises(StyleGAN2PickleError, match="no 'D' entry"):
        load_stylegan2_pickle(path, which="D")


def test_stylegan3_repo_layout_flat_synthesis_kwargs(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    """networks_stylegan2.Generator takes the synthesis kwargs as top-level **kwargs (+ fused_modconv_default)."""
    kwargs = g_kwargs()
    flat = EasyDict({k: v for k, v in kwargs.items() if k != "synthesis_kwargs"})
    flat.update(kwargs["synthesis_kwargs"], fused_modconv_default="inference_only")
    path = tmp_path / "sg3.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Tree(env, nvlabs_state(sources["G_ema"])).generator(flat)}))
    g, info = load_stylegan2_pickle(path)
    assert_same_state(g, sources["G_ema"])
    assert info.config.synthesis.conv_clamp == CONV_CLAMP
    assert any("fused_modconv_default" in s for s in info.ignored)


# ------------------------------------------------------------------------------------------------ refusals
class _Reduce:
    """Pickles as the call ``func(*args)``."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


class _Evil(_Reduce):
    def __init__(self, func: Any, arg: Any) -> None:
        super().__init__(func, (arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "nested", "embedded-storage"])
def test_refuses_code_execution(env: NVlabsModules, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / f"pwned-{kind}"
    command = f"touch {marker}"
    if kind == "os.system":  # written by hand, as an attacker would: GLOBAL 'os system'
        payload = b"cos\nsystem\n(" + pickle.dumps(command, protocol=0)[:-1] + b"tR."
        expected = "os.system"
    elif kind == "builtins.eval":
        payload = pickle.dumps(_Evil(eval, f"__import__('os').system({command!r})"))
        expected = "builtins.eval"
    elif kind == "nested":  # hidden inside an otherwise well-formed snapshot
        payload = pickle.dumps({"G_ema": None, "training_set_kwargs": {"x": _Evil(os.system, command)}})
        expected = f"{os.system.__module__}.system"
    else:  # a storage blob that itself carries the payload
        blob = pickle.dumps(_Evil(os.system, command))
        payload = pickle.dumps({"G_ema": _Evil(torch.storage._load_from_bytes, blob)})  # type: ignore[arg-type]
        expected = f"{os.system.__module__}.system"
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=expected.replace(".", r"\.")):
        load_stylegan2_pickle(path)
    assert not marker.exists()


def test_refuses_build_on_an_allowed_global(tmp_path: Path) -> None:
    """BUILD on a whitelisted function would let a pickle patch it; the stand-ins refuse."""
    payload = b"ctorch._utils\n_rebuild_tensor_v2\n}(S'x'\nI1\nub."
    path = tmp_path / "build.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="modify the global"):
        read_stylegan2_pickle(path)


def test_truncated_file_raises_clear_error(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    path = write_snapshot(env, sources, tmp_path / "full.pkl")
    data = path.read_bytes()
    for cut in (0, 7, len(data) // 3, len(data) // 2, len(data) - 1):
        short = tmp_path / f"cut{cut}.pkl"
        short.write_bytes(data[:cut])
        with pytest.raises(StyleGAN2PickleError, match="truncated|corrupt|cannot read"):
            load_stylegan2_pickle(short)
    assert not env.marker.exists()


def _legacy_storage_blob(numel: int, data: bytes) -> bytes:
    """A legacy-format torch.save of one float storage, written by hand so its declared size can lie."""

    class Storage:  # stands for the storage object; persistent_id turns it into the legacy storage id
        pass

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if isinstance(obj, Storage) else None

    f = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, f, protocol=2)
    Writer(f, protocol=2).dump(Storage())
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", numel) + data)
    return f.getvalue()


def test_embedded_storages_are_bounded_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "blob.pkl"

    def write(blob: bytes) -> None:  # a tensor the way torch pickles one: _rebuild_tensor_v2(storage blob, …)
        args = (_Evil(torch.storage._load_from_bytes, blob), 0, (2,), (1,), False, OrderedDict())
        path.write_bytes(pickle.dumps({"x": _Reduce(torch._utils._rebuild_tensor_v2, args)}))

    write(_legacy_storage_blob(2, struct.pack("<2f", 1.5, -2.0)))
    assert torch.equal(read_stylegan2_pickle(path).entries["x"], torch.tensor([1.5, -2.0]))

    write(_legacy_storage_blob(10**12, struct.pack("<2f", 1.5, -2.0)))  # 4 TB declared: refused, not allocated
    with pytest.raises(StyleGAN2PickleError, match="does not fit"):
        read_stylegan2_pickle(path)

    write(_legacy_storage_blob(4, struct.pack("<2f", 1.5, -2.0)))  # declares 4 floats, carries 2
    with pytest.raises(StyleGAN2PickleError, match="truncated inside storage"):
        read_stylegan2_pickle(path)


def test_shape_mismatch_names_the_key(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    bad = {"synthesis.b8.conv1.bias": torch.zeros(CHANNEL_MAX + 1)}
    path = write_snapshot(env, sources, tmp_path / "bad.pkl", g_overrides=bad)
    with pytest.raises(StyleGAN2PickleError, match=r"shape mismatch for 'synthesis\.b8\.conv1\.bias'.*\(33,\)"):
        load_stylegan2_pickle(path)


def test_missing_key_and_wrong_kwargs_are_reported(env: NVlabsModules, sources: dict, tmp_path: Path) -> None:
    path = write_snapshot(env, sources, tmp_path / "a.pkl")
    pkl_missing = tmp_path / "missing.pkl"
    data = Tree(env, nvlabs_state(sources["G_ema"])).generator(g_kwargs())
    del data.state["_modules"]["mapping"].state["_buffers"]["w_avg"]
    pkl_missing.write_bytes(pickle.dumps({"G_ema": data}))
    with pytest.raises(StyleGAN2PickleError, match=r"missing key 'mapping\.w_avg'"):
        load_stylegan2_pickle(pkl_missing)

    # kwargs that contradict the stored layers (no clamp claimed, layers store 256): caught by the attribute check
    lying = tmp_path / "lying.pkl"
    data = Tree(env, nvlabs_state(sources["G_ema"])).generator(g_kwargs(conv_clamp=None))
    lying.write_bytes(pickle.dumps({"G_ema": data}))
    with pytest.raises(StyleGAN2PickleError, match=r"conv_clamp.*256"):
        load_stylegan2_pickle(lying)

    unknown = tmp_path / "unknown.pkl"
    data = Tree(env, nvlabs_state(sources["G_ema"])).generator(g_kwargs(architecture="resnet"))
    unknown.write_bytes(pickle.dumps({"G_ema": data}))
    with pytest.raises(StyleGAN2PickleError, match="resnet"):
        load_stylegan2_pickle(unknown)

    with pytest.raises(StyleGAN2PickleError, match="no 'G' entry"):
        load_stylegan2_pickle(pkl_missing, which="G")
    with pytest.raises(ValueError, match="which must be one of"):
        load_stylegan2_pickle(path, which="Gs")
    with pytest.raises(FileNotFoundError):
        load_stylegan2_pickle(tmp_path / "nope.pkl")
