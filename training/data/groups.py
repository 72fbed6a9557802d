"""Shape-model training batches: groups of views of one identity, aligned as ``/reconstruct`` aligns photos.

Sources (``shape.data.kind``): ``synthetic`` (:class:`SyntheticGroups`, offline, ground truth known),
``stylegan2_recipe`` (:class:`RecipeGroups`, the paper's sharded StyleGAN2 recipe) and ``photos``
(:class:`PhotoGroups`, a folder; 68 landmarks detected once and cached; identity = sub-folder). Every batch is
a deterministic function of ``(data.seed, step, rank)``, which is what makes resuming exact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.face.model import FaceCodes, FaceModel
from training.loop import derive_seed
from training.shape import DataSection

logger = logging.getLogger(__name__)


def pixels_to_ndc(points_px: torch.Tensor, size: int) -> torch.Tensor:
    """(…, 2) pixels (x right, y down, centres at integers) of a size×size image → NDC (x right, y up)."""
    x = (points_px[..., 0] + 0.5) / size * 2.0 - 1.0
    y = 1.0 - (points_px[..., 1] + 0.5) / size * 2.0
    return torch.stack([x, y], -1)


def ndc_to_pixels(points_ndc: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`pixels_to_ndc`."""
    x = (points_ndc[..., 0] + 1.0) * 0.5 * size - 0.5
    y = (1.0 - points_ndc[..., 1]) * 0.5 * size - 0.5
    return torch.stack([x, y], -1)


def affine_theta(out_to_in: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """(B, 2, 3) pixel affines (output pixels → input pixels, centres at integers) → ``F.affine_grid`` matrices
    (normalised coordinates, ``align_corners=False``): ``q = (O/I)·A·x + ((O−1)/I)·A·1 + (2t + 1)/I − 1``."""
    m = np.asarray(out_to_in, np.float64)
    a, t = m[:, :, :2], m[:, :, 2]
    size_in, size_out = float(in_size), float(out_size)
    out = np.zeros(m.shape, np.float32)
    out[:, :, :2] = size_out / size_in * a
    out[:, :, 2] = (size_out - 1.0) / size_in * a.sum(2) + (2.0 * t + 1.0) / size_in - 1.0
    return out


def chip_theta(landmarks_px: np.ndarray, image_size: int, chip_size: int) -> np.ndarray:
    """(B, 2, 3) ``F.affine_grid`` matrices that cut dlib's aligned face chip
    (:func:`models.identity.dlib_chip_matrix` of the 68 landmarks) out of image_size² images."""
    from models.identity import DLIB_CHIP_PADDING, dlib_chip_matrix

    pts = np.asarray(landmarks_px, np.float64)
    mats = [dlib_chip_matrix(p, size=int(chip_size), padding=DLIB_CHIP_PADDING) for p in pts]
    return affine_theta(np.stack(mats) if mats else np.zeros((0, 2, 3)), image_size, chip_size)


def align_to_template(
    image: torch.Tensor,
    landmarks_px: torch.Tensor,
    visibility: torch.Tensor,
    mask: torch.Tensor | None,
    out_size: int,
    crop_scale: float = 1.0,
    jitter: float = 0.0,
    seeds: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Crop and align images like the service's face alignment (:func:`facecore.detect.alignment_matrix`: eye
    centres and nose bottom onto the template, zoomed out by ``crop_scale``), in torch (bilinear, black outside).

    With ``jitter`` each anchor (eye centres, nose bottom) is moved by Gaussian noise of that standard deviation,
    in units of the eye-centre distance, before the crop is cut (drawn from ``seeds[b]``, one seed sequence per
    image): the service aligns on detected points, which miss the true ones; the landmarks returned are still
    the true ones, in the jittered crop.

    Args:
        image: (B, C, H, W) images (square).
        landmarks_px: (B, 68, 2) their landmarks, pixels.
        visibility: (B, 68) landmark weights; points that leave the crop get 0.
        mask: (B, 1, H, W) or None, warped like the images.
        out_size: the crop side.
        crop_scale: the alignment's zoom-out.

    Returns:
        (images (B, C, S, S), landmarks (B, 68, 2) in crop pixels, visibility, mask).
    """
    from facecore.detect import alignment_anchors, anchors_matrix, invert_affine

    pts = landmarks_px.detach().cpu().double().numpy()
    anchors = np.stack([alignment_anchors(p) for p in pts])
    if jitter > 0:
        if seeds is None or len(seeds) != len(pts):
            raise ValueError("align_to_template: jitter needs one seed sequence per image")
        eyes = np.linalg.norm(anchors[:, 1] - anchors[:, 0], axis=-1)[:, None, None]
        noise = np.stack([np.random.default_rng(list(s)).normal(size=(3, 2)) for s in seeds])
        anchors = anchors + jitter * eyes * noise
    to_crop = np.stack([anchors_matrix(a, out_size, crop_scale) for a in anchors])  # image → crop pixels
    to_image = np.stack([invert_affine(m) for m in to_crop])
    theta = torch.from_numpy(affine_theta(to_image, image.shape[-1], out_size)).to(image)
    grid = F.affine_grid(theta, [image.shape[0], image.shape[1], out_size, out_size], align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask is not None:
        mask = F.grid_sample(mask.to(image.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = torch.from_numpy(to_crop).to(landmarks_px)
    lm = landmarks_px @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    inside = ((lm >= -0.5) & (lm <= out_size - 0.5)).all(-1)
    return warped, lm, visibility.to(image.dtype) * inside.to(image.dtype), mask


def cut_chips(images: torch.Tensor, theta: torch.Tensor, chip_size: int) -> torch.Tensor:
    """(B, 3, S, S) images → (B, 3, C, C) face chips (bilinear, zeros outside)."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], 3, chip_size, chip_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True, eq=False)
class ShapeBatch:
    """A training batch of the shape model (channels first).

    Attributes:
        image: (B, 3, S, S) sRGB-encoded RGB in [0, 1] (the encoder's input).
        landmarks_px: (B, 68, 2) iBUG landmarks, pixels (x right, y down, centres at integers).
        visibility: (B, 68) float weights of the landmarks (0 = hidden / unknown).
        identity: (B,) long identity labels (only equality matters); images of a group are contiguous.
        chip_theta: (B, 2, 3) face-chip sampling matrices (:func:`chip_theta`).
        w: (B, w_dim) the known StyleGAN2 w of each image (recipe), else None.
        mask: (B, 1, S, S) ground-truth head mask (synthetic), else None.
        gt: the synthetic ground truth (:class:`training.data.synthetic.SyntheticBatch`), else None.
    """

    image: torch.Tensor
    landmarks_px: torch.Tensor
    visibility: torch.Tensor
    identity: torch.Tensor
    chip_theta: torch.Tensor
    w: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    gt: Any = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> ShapeBatch:
        def move(x: Any) -> Any:
            return None if x is None else x.to(device)

        return dataclasses.replace(
            self,
            image=self.image.to(device),
            landmarks_px=self.landmarks_px.to(device),
            visibility=self.visibility.to(device),
            identity=self.identity.to(device),
            chip_theta=self.chip_theta.to(device),
            w=move(self.w),
            mask=move(self.mask),
            gt=move(self.gt),
        )


class GroupSource:
    """A source of identity groups: ``batch(step, rank, world_size)`` is deterministic in its arguments.

    Step ``s`` of rank ``r`` takes the groups at stream positions ``(s·world + r)·g … + g − 1`` with
    ``g = data.groups / world``, so every rank gets whole groups and the stream position is the step.
    """

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int):
        self.cfg = cfg
        self.image_size = image_size
        self.chip_size = chip_size

    def groups_per_rank(self, world_size: int) -> int:
        if self.cfg.groups % world_size:
            raise ValueError(f"data.groups={self.cfg.groups} must be divisible by the {world_size} processes")
        return self.cfg.groups // world_size

    def positions(self, step: int, rank: int, world_size: int) -> list[int]:
        g = self.groups_per_rank(world_size)
        first = (step * world_size + rank) * g
        return list(range(first, first + g))

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> ShapeBatch:
        return self.groups_batch(self.positions(step, rank, world_size))

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        raise NotImplementedError

    def _finish(
        self,
        image: torch.Tensor,
        landmarks_px: torch.Tensor,
        visibility: torch.Tensor,
        identity: torch.Tensor,
        **extra: Any,
    ) -> ShapeBatch:
        theta = torch.from_numpy(chip_theta(landmarks_px.cpu().numpy(), self.image_size, self.chip_size))
        theta = theta.to(image.device)
        return ShapeBatch(
            image=image,
            landmarks_px=landmarks_px.float(),
            visibility=visibility.float(),
            identity=identity.long().to(image.device),
            chip_theta=theta,
            **extra,
        )


class SyntheticGroups(GroupSource):
    """Identity groups of synthetic renders with full ground truth (:mod:`training.data.synthetic`).

    Group ``p`` (stream position; modulo ``num_identities`` when set) renders samples ``p·views + v``: each keeps
    its own expression, pose, light, framing and background, and takes the identity code and the albedo of the
    group's first sample. Identity label = the group number. With ``data.align`` the renders
    (``render_scale × image_size`` pixels) are cropped like the service's face crops (:func:`align_to_template`).
    """

    def __init__(
        self,
        cfg: DataSection,
        image_size: int,
        chip_size: int,
        face_model: FaceModel,
        device: str = "cpu",
        crop_scale: float = 1.0,
    ):
        super().__init__(cfg, image_size, chip_size)
        from training.data.synthetic import SyntheticConfig, SyntheticFaces

        self.crop_scale = crop_scale
        size = int(round(image_size * cfg.render_scale)) if cfg.align else image_size
        self.faces = SyntheticFaces(
            SyntheticConfig(image_size=size, albedo_size=cfg.albedo_size, seed=cfg.seed, face_fill=cfg.fill),
            face_model,
            device,
        )

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        v = self.cfg.views
        groups = [p % self.cfg.num_identities if self.cfg.num_identities else p for p in positions]
        members = [g * v + k for g in groups for k in range(v)]
        gt = render_synthetic_groups(self.faces, members, v)
        identity = torch.tensor([g for g in groups for _ in range(v)])
        image, lm, vis, mask = gt.image_srgb, gt.landmarks_px, gt.landmarks_visible.float(), gt.mask
        if self.cfg.align:
            seeds = [(self.cfg.seed, m, 0xA119) for m in members]
            image, lm, vis, mask = align_to_template(
                image, lm, vis, mask, self.image_size, self.crop_scale, self.cfg.align_jitter, seeds
            )
        return self._finish(image, lm, vis, identity, mask=mask, gt=gt)


def render_synthetic_groups(faces: Any, indices: Sequence[int], views: int) -> Any:
    """Render ``indices`` (consecutive runs of ``views`` form a group) with each group's first identity and albedo.

    Returns:
        :class:`training.data.synthetic.SyntheticBatch` (its ``codes.shape`` and albedo are the group's).
    """
    from training.data.procedural_albedo import AlbedoParams

    albedo, scene = faces.sample_params(indices)
    anchor = torch.tensor([(i // views) * views for i in range(len(indices))])
    albedo = AlbedoParams.select(albedo, anchor)
    codes = FaceCodes(scene.codes.shape[anchor], scene.codes.expression, scene.codes.pose)
    scene = dataclasses.replace(scene, codes=codes)
    return faces.render(torch.tensor(list(indices)), albedo.to(faces.device), scene.to(faces.device))


def _epoch_order(blocks: Sequence[Sequence[int]], seed: int, epoch: int) -> list[int]:
    """A permutation of all items: the blocks in a seeded order, each block's items permuted (block-local
    shuffling keeps one shard in memory at a time)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x0DE7))
    order: list[int] = []
    for b in torch.randperm(len(blocks), generator=g).tolist():
        items = list(blocks[b])
        order += [items[i] for i in torch.randperm(len(items), generator=g).tolist()]
    return order


class _AlignedGroups(GroupSource):
    """Shared by the recipe and photo sources: epoch orders over groups, aligned crops from landmarks."""

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float):
        super().__init__(cfg, image_size, chip_size)
        self.crop_scale = crop_scale
        self.group_items: list[list[int]] = []  # group → item indices
        self.blocks: list[list[int]] = []  # block → group indices
        self._order: tuple[int, list[int]] | None = None

    def _group_at(self, position: int) -> int:
        n = len(self.group_items)
        epoch = position // n
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(self.blocks, self.cfg.seed, epoch))
        return self._order[1][position % n]

    def _views(self, group: int, position: int) -> list[int]:
        items = self.group_items[group]
        if len(items) <= self.cfg.views:
            return list(items)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, position, 0x51E7))
        return sorted(items[i] for i in torch.randperm(len(items), generator=g)[: self.cfg.views].tolist())

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(H, W, 3) uint8 image, (68, 2) landmarks, extra fields."""
        raise NotImplementedError

    def groups_batch(self, positions: Sequence[int]) -> ShapeBatch:
        from facecore.detect import align_face, transform_points

        images, points, ids, ws = [], [], [], []
        for p in positions:
            group = self._group_at(p)
            for item in self._views(group, p):
                img, pts, extra = self._load(item)
                aligned = align_face(img, pts, self.image_size, self.crop_scale)
                images.append(aligned.crop)
                points.append(transform_points(pts, aligned.matrix))
                ids.append(group)
                if "w" in extra:
                    ws.append(extra["w"])
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        lm = torch.from_numpy(np.stack(points)).float()
        w = torch.from_numpy(np.stack(ws)).float() if ws else None
        return self._finish(image, lm, torch.ones(lm.shape[:2]), torch.tensor(ids), w=w)


class RecipeGroups(_AlignedGroups):
    """The paper's StyleGAN2 recipe (:class:`training.data.stylegan_recipe.ShardDataset`): identity groups of
    up to 11 w-space edits with detected landmarks and the known w. Shards are visited in a seeded order and
    groups shuffled within a shard (one shard in memory at a time)."""

    def __init__(self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float):
        super().__init__(cfg, image_size, chip_size, crop_scale)
        from training.data.stylegan_recipe import ShardDataset

        self.dataset = ShardDataset(cfg.path)
        start = 0
        for f in self.dataset._files:
            with np.load(f) as z:
                ident = z["identity"]
            block = []
            for value in np.unique(ident):
                block.append(len(self.group_items))
                self.group_items.append((start + np.flatnonzero(ident == value)).tolist())
            self.blocks.append(block)
            start += len(ident)
        if not self.group_items:
            raise ValueError(f"{cfg.path}: the recipe dataset holds no images")
        self.w_dim = int(self.dataset[0]["w"].shape[-1])

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        row = self.dataset[item]
        return row["image"], row["landmarks"].astype(np.float64), {"w": row["w"]}


class PhotoGroups(_AlignedGroups):
    """A folder of face photos (jpg/png, recursive). Landmarks are detected once (dlib, 68 points) and cached in
    a JSON file keyed by relative path, size and modification time; photos without a face are skipped (logged).
    Identity = the photo's sub-folder (photos directly in the folder are each their own identity)."""

    SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(
        self, cfg: DataSection, image_size: int, chip_size: int, crop_scale: float, cache: Path, detect: bool = True
    ):
        super().__init__(cfg, image_size, chip_size, crop_scale)
        root = Path(cfg.path)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path: {root} is not a folder of photos")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"data.path: no .jpg/.jpeg/.png photos under {root}")
        self.root = root
        table = self.landmark_table(files, cache, detect)
        self.files: list[Path] = []
        self.points: list[np.ndarray] = []
        by_identity: dict[str, list[int]] = {}
        for f in files:
            pts = table[f.relative_to(root).as_posix()]["points"]
            if pts is None:
                continue
            rel = f.relative_to(root)
            key = rel.parent.as_posix() if rel.parent != Path(".") else rel.as_posix()
            by_identity.setdefault(key, []).append(len(self.files))
            self.files.append(f)
            self.points.append(np.asarray(pts, np.float64))
        if not self.files:
            raise ValueError(f"data.path: no face was found in any of the {len(files)} photos under {root}")
        self.group_items = [by_identity[k] for k in sorted(by_identity)]
        self.blocks = [list(range(len(self.group_items)))]
        self._cache: dict[int, np.ndarray] = {}

    def landmark_table(self, files: Sequence[Path], cache: Path, detect: bool) -> dict[str, dict[str, Any]]:
        """``{relative path: {"size", "mtime", "points": (68, 2) list or None}}``, detecting what is missing."""
        table: dict[str, dict[str, Any]] = json.loads(cache.read_text()) if cache.is_file() else {}
        missing = []
        for f in files:
            rel, st = f.relative_to(self.root).as_posix(), f.stat()
            entry = table.get(rel)
            if entry is None or entry.get("size") != st.st_size or entry.get("mtime") != st.st_mtime_ns:
                missing.append((f, rel, st))
        if missing and not detect:
            raise FileNotFoundError(f"{cache}: landmarks of {len(missing)} photos are missing (detect on rank 0)")
        if missing:
            from PIL import Image

            from models.landmarks import NoFaceError, landmarks68

            logger.info("detecting 68 landmarks in %d photos (cached in %s)", len(missing), cache)
            for f, rel, st in missing:
                with Image.open(f) as im:
                    img = np.asarray(im.convert("RGB"))
                try:
                    pts = landmarks68(img, detector=self.cfg.detector).tolist()  # type: ignore[arg-type]
                except NoFaceError:
                    logger.warning("no face in %s: skipped", f)
                    pts = None
                table[rel] = {"size": st.st_size, "mtime": st.st_mtime_ns, "points": pts}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps(table))
            tmp.replace(cache)
        return table

    def _load(self, item: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if item not in self._cache:
            from PIL import Image

            with Image.open(self.files[item]) as im:
                self._cache[item] = np.asarray(im.convert("RGB"))
        return self._cache[item], self.points[item], {}
