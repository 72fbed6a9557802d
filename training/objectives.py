"""The shape and albedo steps' objectives: the rendering machinery around the networks and the loss terms.

:class:`FacePipeline` holds the non-trainable parts (face model, renderer, UV sampling, masks);
:func:`shape_terms` computes every term of a shape step and :func:`photometric_terms` the image terms shared with
the albedo step, from the pure loss functions of :mod:`training.losses`. The formulas and weights are documented in
``training/shape.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from models.albedo_head import AlbedoHead
from models.displacement import UVGrid, uv_texel_mask
from models.encoder import EncoderOutputs
from models.face.model import FaceModel
from models.render import MeshRenderer, RenderOutputs, WeakPerspectiveCamera
from models.shape_model import ShapeOutputs
from training import losses as L
from training.data.groups import ShapeBatch, cut_chips, pixels_to_ndc
from training.data.skin import linear_to_srgb, srgb_to_linear
from training.shape import NOSE_TIP, LossSection


def albedo_from_generator(img: torch.Tensor) -> torch.Tensor:
    """AlbedoGAN output (B, 3, R, R) in [-1, 1], sRGB-encoded (as the albedo stage trains it) → linear [0, 1]."""
    return srgb_to_linear((img + 1.0) * 0.5)


class FacePipeline(nn.Module):
    """The non-trainable machinery around the networks: face model, renderer, UV sampling and masks.

    Args:
        face_model: the face model.
        image_size: rendered image side (the encoder input).
        displacement_resolution: the displacement map side (UV grid sampling of the detail normal map).
        albedo_resolution: AlbedoGAN's output side (UV mask of the albedo symmetry term).
        face_radius_mm, face_depth_mm: the ``face`` photometric region (see :class:`LossSection`).
        landmark_jaw: jaw-contour landmark weight.
    """

    def __init__(
        self,
        face_model: FaceModel,
        image_size: int,
        displacement_resolution: int,
        albedo_resolution: int,
        face_radius_mm: float = 85.0,
        face_depth_mm: float = 60.0,
        landmark_jaw: float = 0.5,
    ):
        super().__init__()
        self.face_model = face_model
        self.image_size = image_size
        self.renderer = MeshRenderer.from_face_model(face_model, image_size)
        self.sampling = UVGrid(face_model, displacement_resolution)
        self.register_buffer("disp_mask", uv_texel_mask(face_model, displacement_resolution, "any"), persistent=False)
        self.register_buffer("albedo_mask", uv_texel_mask(face_model, albedo_resolution, "any"), persistent=False)
        self.register_buffer("landmark_weights", L.ibug68_landmark_weights(landmark_jaw), persistent=False)
        region = face_region(face_model, face_radius_mm / 1000.0, face_depth_mm / 1000.0)
        self.register_buffer("face_region", region.float(), persistent=False)

    def geometry(self, codes: EncoderOutputs, displacement: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed coarse vertices (B, V, 3) and the tangent-space detail normal map (B, 3, R, R)."""
        verts = self.face_model(codes.shape, codes.expression, codes.pose)
        return verts, self.sampling.normal_map(verts, displacement)

    def render(
        self,
        verts: torch.Tensor,
        camera: torch.Tensor,
        albedo_linear: torch.Tensor,
        light: torch.Tensor,
        normal_map: torch.Tensor | None,
    ) -> RenderOutputs:
        return self.renderer(
            verts, WeakPerspectiveCamera.from_vector(camera), albedo_linear, light, normal_map_uv=normal_map
        )

    def region_mask(self, render: RenderOutputs, region: str, gt_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, S, S) photometric weights: the rendered pixels, restricted to the region."""
        mask = render.mask
        if region == "face":
            fid = render.face_id
            mask = mask * torch.where(fid >= 0, self.face_region[fid.clamp_min(0)], 0.0)[:, None]
        if gt_mask is not None:
            mask = mask * gt_mask.to(mask.dtype)
        return mask

    def landmarks_ndc(self, verts: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """(B, 68, 2) projected model landmarks in NDC."""
        lm = self.face_model.landmarks(verts)
        return WeakPerspectiveCamera.from_vector(camera).project(lm)[..., :2]


def face_region(face_model: FaceModel, radius_m: float, depth_m: float) -> torch.Tensor:
    """(F,) bool: triangles of the mean head whose centroid lies within ``radius_m`` of the nose tip and at most
    ``depth_m`` behind it (the face, without ears, neck back and scalp)."""
    with torch.no_grad():
        mean = face_model.mean
        tip = face_model.landmarks(mean[None])[0, NOSE_TIP]
        centroid = mean[face_model.faces].mean(1)
        near = (centroid - tip).norm(dim=-1) < radius_m
        front = centroid[:, 2] > tip[2] - depth_m
    return (near & front).cpu()


@dataclass(frozen=True, eq=False)
class StepOutputs:
    """Everything a step computed that logging may want (detached use only)."""

    render: RenderOutputs
    composite: torch.Tensor
    albedo_linear: torch.Tensor
    verts: torch.Tensor
    normal_map: torch.Tensor
    camera: torch.Tensor


class LossContext:
    """Per-run constants of the loss computation: pipeline, embedder, weights, region."""

    def __init__(
        self,
        pipeline: FacePipeline,
        embedder: nn.Module | None,
        loss: LossSection,
        region: str,
    ):
        self.pipeline = pipeline
        self.embedder = embedder
        self.loss = loss
        self.region = region


def photometric_terms(
    ctx: LossContext,
    batch: ShapeBatch,
    render: RenderOutputs,
    need: Mapping[str, float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Reconstruction, identity and perceptual terms of a render against the batch's images.

    Returns:
        (terms, composite): composite is the render over the image, sRGB (B, 3, S, S).
    """
    pred = linear_to_srgb(render.image)
    composite = render.mask * pred + (1.0 - render.mask) * batch.image
    mask = ctx.pipeline.region_mask(render, ctx.region, batch.mask)
    terms = {"reconstruction": L.reconstruction_loss(pred, batch.image, mask)}
    want_id, want_pc = need.get("identity", 0) > 0, need.get("perceptual", 0) > 0
    if (want_id or want_pc) and ctx.embedder is None:
        raise ValueError("identity/perceptual weights are set but no face-embedding network was loaded")
    if want_id or want_pc:
        size = ctx.loss.chip_size
        chip_pred = cut_chips(composite, batch.chip_theta, size)
        with torch.no_grad():
            chip_true = cut_chips(batch.image, batch.chip_theta, size)
        if want_id:
            with torch.no_grad():
                target = ctx.embedder(chip_true)
            terms["identity"] = L.identity_loss(ctx.embedder(chip_pred), target)
        if want_pc:
            with torch.no_grad():
                target_f = ctx.embedder.features(chip_true)
            terms["perceptual"] = L.perceptual_loss(
                ctx.embedder.features(chip_pred), target_f, ctx.loss.perceptual_layers
            )
    return terms, composite


def gt_shape_error_mm(face_model: FaceModel, shape: torch.Tensor, gt_shape: torch.Tensor) -> torch.Tensor:
    """Mean per-vertex distance (mm) between the predicted and true neutral identity meshes (model frame)."""
    pred = face_model(shape)
    true = face_model(gt_shape)
    return 1000.0 * (pred - true).norm(dim=-1).mean()


def gt_albedo_error(albedo_linear: torch.Tensor, gt_albedo: torch.Tensor, uv_mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE of a linear albedo against the true one (resized to its resolution with antialiasing)."""
    from training.data.images import resize_uv

    target = resize_uv(gt_albedo.to(albedo_linear.dtype), albedo_linear.shape[-1])
    return L.reconstruction_loss(albedo_linear, target, uv_mask)


def shape_terms(
    ctx: LossContext,
    out: ShapeOutputs,
    batch: ShapeBatch,
    generator: nn.Module,
    head: AlbedoHead,
    weights: Mapping[str, float],
) -> tuple[dict[str, torch.Tensor], StepOutputs]:
    """The shape step's loss terms (unweighted scalars keyed by :data:`SHAPE_TERMS`; see the module docstring).

    Args:
        ctx: the pipeline, embedder and loss settings.
        out: the shape model's outputs for ``batch.image``.
        batch: the batch.
        generator: AlbedoGAN (frozen: its parameters get no gradient; the head's ws do).
        head: the albedo head (its W statistics normalise ``w_latent``).
        weights: the term weights (terms with weight 0 that cost a network pass are skipped).
    """
    p = ctx.pipeline
    fm = p.face_model
    codes = out.codes
    verts, normal_map = p.geometry(codes, out.displacement)
    known_w = batch.w is not None
    ws = batch.w[:, None, :].expand(-1, generator.num_ws, -1) if known_w else out.ws
    albedo = albedo_from_generator(generator.synthesis(ws, noise_mode="const"))
    render = p.render(verts, codes.camera, albedo, codes.light, normal_map)
    terms, composite = photometric_terms(ctx, batch, render, weights)
    terms["albedo_symmetry"] = L.albedo_symmetry_loss(albedo, p.albedo_mask)
    if known_w:
        diff = head.normalise(out.ws) - head.normalise(batch.w.to(out.ws.dtype))[:, None, :]
        terms["w_latent"] = diff.square().mean()
    S = p.image_size
    terms["landmark"] = L.landmark_loss(
        p.landmarks_ndc(verts, codes.camera),
        pixels_to_ndc(batch.landmarks_px, S),
        weights=p.landmark_weights,
        visibility=batch.visibility,
    )
    terms["shape_centre"] = L.shape_centre_loss(codes.shape, batch.identity)
    if ctx.loss.shape_prior == "generation":
        terms["shape_prior"] = L.l2_prior(codes.shape, fm.shape_prior_mean, fm.shape_prior_chol)
    else:
        terms["shape_prior"] = L.l2_prior(codes.shape)
    terms["expression_prior"] = L.l2_prior(codes.expression)
    terms["detail_prior"] = L.l2_prior(codes.detail)
    disp_mm = 1000.0 * out.displacement
    terms["displacement_smoothness"] = L.displacement_smoothness(disp_mm, p.disp_mask)
    terms["displacement_magnitude"] = L.displacement_magnitude(disp_mm, p.disp_mask)
    if batch.gt is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights.get("gt_shape", 0) > 0):
            terms["gt_shape"] = gt_shape_error_mm(fm, codes.shape, batch.gt.codes.shape)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights.get("gt_albedo", 0) > 0):
            terms["gt_albedo"] = gt_albedo_error(albedo, batch.gt.albedo_uv, p.albedo_mask)
    return terms, StepOutputs(render, composite, albedo, verts, normal_map, codes.camera)
