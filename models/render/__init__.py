"""Differentiable rendering in pure PyTorch (DESIGN §4): cameras, z-buffer rasteriser with differentiable
barycentrics, UV texture sampling, order-2 SH Lambertian shading, and the :class:`MeshRenderer` that ties
them together. An optional pytorch3d visibility backend sits behind the same interface."""

from .camera import PerspectiveCamera, WeakPerspectiveCamera
from .rasterizer import (
    Fragments,
    barycentrics,
    fragments_from_face_id,
    interpolate,
    interpolate_packed,
    rasterize,
    scatter_packed,
    zbuffer,
)
from .renderer import MeshRenderer, RenderOutputs
from .shading import (
    SH_CONSTANTS,
    face_normals,
    normal_map_to_world,
    sh_basis,
    sh_shading,
    sh_shading_packed,
    vertex_normals,
    vertex_tangents,
)
from .texture import (
    mesh_to_uv,
    sample_texture,
    sample_texture_packed,
    sample_vertex_attrs,
    uv_fragments,
    uv_to_grid,
    uv_to_ndc,
)

__all__ = [
    "SH_CONSTANTS",
    "Fragments",
    "MeshRenderer",
    "PerspectiveCamera",
    "RenderOutputs",
    "WeakPerspectiveCamera",
    "barycentrics",
    "face_normals",
    "fragments_from_face_id",
    "interpolate",
    "interpolate_packed",
    "mesh_to_uv",
    "normal_map_to_world",
    "rasterize",
    "sample_texture",
    "sample_texture_packed",
    "sample_vertex_attrs",
    "scatter_packed",
    "sh_basis",
    "sh_shading",
    "sh_shading_packed",
    "uv_fragments",
    "uv_to_grid",
    "uv_to_ndc",
    "vertex_normals",
    "vertex_tangents",
    "zbuffer",
]
