"""Optional visibility backend on pytorch3d's rasteriser (used only where pytorch3d is installed).

Only the z-buffer pass is delegated; barycentrics, interpolation, texturing and shading stay the shared pure
PyTorch code, so both backends produce the same :class:`~.rasterizer.Fragments` contract and gradients.
pytorch3d's screen conventions differ from ours (its NDC +x points left, the shorter image side spans
[-1, 1], and the *smallest* z wins), so vertices are converted before the call.
"""

from __future__ import annotations

import importlib.util

import torch

from .rasterizer import Fragments, _check_mesh, _image_size, fragments_from_face_id


def is_available() -> bool:
    """Whether pytorch3d can be imported (checked without importing it)."""
    return importlib.util.find_spec("pytorch3d") is not None


def _require() -> None:
    if not is_available():
        raise ImportError(
            "backend='pytorch3d' needs the pytorch3d package (not a dependency of this project; install it "
            "for your torch/CUDA build), or use the default backend='torch'"
        )


@torch.no_grad()
def zbuffer_pytorch3d(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`.rasterizer.zbuffer`, computed by ``pytorch3d.renderer.mesh.rasterize_meshes``."""
    _require()
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    _check_mesh(verts_ndc, faces)
    H, W = _image_size(image_size)
    B, F = verts_ndc.shape[0], faces.shape[0]
    v = verts_ndc.detach().to(torch.float32)
    short = min(H, W)
    x = -v[..., 0] * (W / short)
    y = v[..., 1] * (H / short)
    if perspective_correct:
        z = -v[..., 2]  # distance in front of the camera; pytorch3d skips faces behind z = 0
    else:
        z = v[..., 2].amax(1, keepdim=True) + 1.0 - v[..., 2]  # positive, smaller is closer
    verts_p3d = torch.stack([x, y, z], -1)

    keep = torch.ones(B, F, dtype=torch.bool, device=v.device)
    if cull_backfaces:  # counter-clockwise in our NDC = front-facing
        a, b, c = v[:, faces, :2].unbind(2)
        ab, ac = b - a, c - a
        keep &= ab[..., 0] * ac[..., 1] - ac[..., 0] * ab[..., 1] > 0
    if perspective_correct:
        keep &= (v[..., 2][:, faces] < 0).all(-1)
    face_lists = [faces[keep[b]] for b in range(B)]
    index_lists = [keep[b].nonzero().squeeze(1) for b in range(B)]
    meshes = Meshes(verts=list(verts_p3d.unbind(0)), faces=face_lists)
    pix_to_face, _, _, _ = rasterize_meshes(
        meshes,
        image_size=(H, W),
        blur_radius=0.0,
        faces_per_pixel=1,
        bin_size=0,
        perspective_correct=perspective_correct,
        cull_backfaces=False,
    )
    packed = pix_to_face[..., 0]  # (B, H, W) into the concatenation of the per-mesh face lists
    original = torch.cat(index_lists)
    out = torch.full_like(packed, -1)
    hit = packed >= 0
    if bool(hit.any()):
        out[hit] = original[packed[hit]]
    return out


def rasterize_pytorch3d(
    verts_ndc: torch.Tensor,
    faces: torch.Tensor,
    image_size: int | tuple[int, int],
    *,
    perspective_correct: bool = False,
    cull_backfaces: bool = False,
) -> Fragments:
    """Same contract as :func:`.rasterizer.rasterize`, with pytorch3d's z-buffer."""
    face_id = zbuffer_pytorch3d(
        verts_ndc, faces, image_size, perspective_correct=perspective_correct, cull_backfaces=cull_backfaces
    )
    return fragments_from_face_id(verts_ndc, faces, face_id, perspective_correct=perspective_correct)
