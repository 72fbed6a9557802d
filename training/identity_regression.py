"""Regressions from face-recognition features to identity, and the face-region metric they are judged by.

* :class:`RegionMetric`: identity codes → the face region's vertices, centred on their centroid, in mm, and a
  coordinate change ``z`` of the codes in which Euclidean distance *is* the region's RMS vertex displacement
  (``‖z₁ − z₂‖² = Σ_vertices ‖Δv‖²``), so a least-squares fit in ``z`` minimises the region's squared error.
  :meth:`RegionMetric.error_mm` gives the mean vertex distance (mm) after centring, after rigid alignment or after
  a similarity alignment (:data:`ALIGNMENTS`).
* :func:`mean_vertex_distance`: the same for any (N, R, 3) point sets.
* :func:`fit_ridge` (closed form, λ chosen on a validation split) and :func:`fit_mlp` (a small torch MLP with
  early stopping) map (N, D) features to (N, T) targets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facecore.geometry import FaceModelArrays
from training.evaluation import mirror_vertex_index


class RegionMetric:
    """Face-region geometry of identity codes (neutral face, rest pose, model frame), in mm.

    Args:
        model: the face model arrays.
        region: (V,) bool vertex mask (e.g. :func:`training.evaluation.identity_region`).
        tol: singular values of the centred region basis below ``tol × the largest`` are dropped from ``z``
            (components that do not move the region's shape).
    """

    def __init__(self, model: FaceModelArrays, region: np.ndarray, tol: float = 1e-6):
        region = np.asarray(region, bool)
        if region.shape != (model.n_verts,) or region.sum() < 3:
            raise ValueError(f"region: expected a (V,) bool mask with ≥ 3 vertices, got {region.shape}")
        mean = 1000.0 * np.asarray(model.mean, np.float64)[region]  # (R, 3)
        basis = 1000.0 * np.asarray(model.shape_basis, np.float64)[:, region]  # (K, R, 3)
        self.n_vertices = int(region.sum())
        self.mean_centred = mean - mean.mean(0)
        flat = (basis - basis.mean(1, keepdims=True)).reshape(len(basis), -1)  # (K, 3R): β → centred offsets
        U, S, Vt = np.linalg.svd(flat.T, full_matrices=False)  # flat.T = U S Vt
        keep = S > tol * S[0]
        self._U = U[:, keep]  # (3R, k)
        self._to_z = Vt[keep].T * S[keep]  # (K, k): z = β · V · S

    @property
    def dim(self) -> int:
        """Number of ``z`` coordinates."""
        return self._to_z.shape[1]

    def to_z(self, shapes: np.ndarray) -> np.ndarray:
        """(N, K) codes → (N, k) region coordinates (mm·√R scale: ‖Δz‖ is the root of the summed squared offsets)."""
        return np.asarray(shapes, np.float64) @ self._to_z

    def vertices(self, z: np.ndarray) -> np.ndarray:
        """(N, k) region coordinates → (N, R, 3) centred region vertices, mm."""
        z = np.atleast_2d(np.asarray(z, np.float64))
        return self.mean_centred[None] + (z @ self._U.T).reshape(len(z), self.n_vertices, 3)

    def error_mm(self, z_pred: np.ndarray, z_true: np.ndarray, rigid: bool = False, scale: bool = False) -> np.ndarray:
        """(N,) mean vertex distance (mm) between predicted and true region shapes: centred, rigidly aligned when
        ``rigid``, and also scaled when ``scale`` (:func:`mean_vertex_distance`)."""
        return mean_vertex_distance(self.vertices(z_pred), self.vertices(z_true), rigid, scale)


#: the alignments a face-region error is reported after: (label, rigid, scale). "similarity" is the NoW protocol's
#: (its evaluation aligns the prediction to the scan by a similarity, scale included): a single photo does not show
#: the head's size in millimetres, and a third of the adult prior's spread over the face region is size alone
#: (centred 4.50 mm, after the best scale 2.99 mm; the scale's std 8 %).
ALIGNMENTS: tuple[tuple[str, bool, bool], ...] = (
    ("centred", False, False),
    ("rigid", True, False),
    ("similarity", True, True),
)


def mean_vertex_distance(a: np.ndarray, b: np.ndarray, rigid: bool = False, scale: bool = False) -> np.ndarray:
    """(N,) mean distance between corresponding vertices of (N, R, 3) point sets, after removing each pair's
    centroid difference, with ``rigid`` also the rotation of ``a`` that best fits ``b`` (Kabsch), and with ``scale``
    (needs ``rigid``) also the best scale of ``a`` (least squares, Umeyama)."""
    if scale and not rigid:
        raise ValueError("scale: needs rigid (the similarity alignment is a rotation and a scale)")
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    if rigid:
        U, S, Vt = np.linalg.svd(np.einsum("nri,nrj->nij", b, a))  # Σ b aᵀ = U S Vᵀ; R = U D Vᵀ maps a onto b
        D = np.ones((len(a), 3))
        D[:, 2] = np.sign(np.linalg.det(U @ Vt))
        a = np.einsum("nij,nrj->nri", U @ (D[:, :, None] * Vt), a)
        if scale:  # s = tr(D S) / ‖a‖²
            a = a * ((S * D).sum(1) / np.maximum((a * a).sum((1, 2)), 1e-30))[:, None, None]
    return np.linalg.norm(a - b, axis=-1).mean(-1)


@dataclass
class LinearMap:
    """``y = ((x − x_mean) / x_std) · W + y_mean``."""

    x_mean: np.ndarray
    x_std: np.ndarray
    W: np.ndarray
    y_mean: np.ndarray
    alpha: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.x_mean) / self.x_std) @ self.W + self.y_mean


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _ridge_solve(xs: np.ndarray, yc: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
    U, S, Vt = np.linalg.svd(xs, full_matrices=False)
    uty = U.T @ yc
    return [Vt.T @ ((S / (S**2 + a))[:, None] * uty) for a in alphas]


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    alphas: Sequence[float] = tuple(10.0 ** np.arange(-3, 5.01, 0.5)),
    val_error: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> LinearMap:
    """Ridge regression on standardised features; λ (relative to N) chosen by the validation error, then refitted
    on train ∪ validation.

    The predictions of every target column share one smoother, so they transform with the targets: ridge on
    codes β and on any linear change of them (e.g. :meth:`RegionMetric.to_z`) predicts the same for the same λ;
    only the choice of λ depends on how the validation error is measured.

    Args:
        x, y: (N, D) features, (N, T) targets.
        x_val, y_val: the validation split (rows of *other* identities than ``x``'s).
        alphas: candidate penalties, multiplied by the number of training rows.
        val_error: ``(predicted, true) → error`` on the validation rows; None: the mean squared error.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_val, y_val = np.asarray(x_val, np.float64), np.asarray(y_val, np.float64)
    xm, xs = _standardise(x)
    ym = y.mean(0)
    Ws = _ridge_solve((x - xm) / xs, y - ym, [a * len(x) for a in alphas])
    score = val_error or (lambda pred, true: float(np.mean((pred - true) ** 2)))
    errs = [score(((x_val - xm) / xs) @ W + ym, y_val) for W in Ws]
    best = float(alphas[int(np.argmin(errs))])
    xa, ya = np.concatenate([x, x_val]), np.concatenate([y, y_val])
    xm, xs = _standardise(xa)
    ym = ya.mean(0)
    (W,) = _ridge_solve((xa - xm) / xs, ya - ym, [best * len(xa)])
    return LinearMap(xm, xs, W, ym, best)


class MLPMap(nn.Module):
    """A small MLP on standardised features: ``y = net((x − x_mean) / x_std) · y_scale + y_mean``."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 512, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        blocks: list[nn.Module] = []
        d = d_in
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout)]
            d = hidden
        blocks.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*blocks)
        self.register_buffer("x_mean", torch.zeros(d_in))
        self.register_buffer("x_std", torch.ones(d_in))
        self.register_buffer("y_mean", torch.zeros(d_out))
        self.register_buffer("y_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std) * self.y_scale + self.y_mean

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self.eval()
        return self(torch.as_tensor(np.asarray(x), dtype=torch.float32)).double().numpy()


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    hidden: int = 512,
    layers: int = 2,
    dropout: float = 0.1,
    weight_decay: float = 1e-2,
    lr: float = 2e-3,
    batch_size: int = 128,
    max_epochs: int = 400,
    patience: int = 40,
    max_seconds: float = 60.0,
    seed: int = 0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> tuple[MLPMap, dict[str, float]]:
    """Train an :class:`MLPMap` with AdamW (cosine schedule) on the MSE of ``y``; keep the epoch with the lowest
    validation MSE (early stopping after ``patience`` epochs without improvement or ``max_seconds``).

    Returns:
        (the model at its best epoch, {"epochs", "best_epoch", "val_mse", "seconds"}).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.float32)
    model = MLPMap(xt.shape[1], yt.shape[1], hidden, layers, dropout)
    xm, xs = _standardise(xt.double().numpy())
    model.x_mean.copy_(torch.from_numpy(xm))
    model.x_std.copy_(torch.from_numpy(xs))
    model.y_mean.copy_(yt.mean(0))
    model.y_scale.fill_(float((yt - yt.mean(0)).square().mean().sqrt()))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max_epochs * steps_per_epoch, pct_start=0.05)
    best, best_state, best_epoch, epoch = math.inf, None, -1, 0
    start = time.perf_counter()
    for epoch in range(max_epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            idx = order[i : i + batch_size]
            xb = xt[idx] if augment is None else augment(xt[idx], g)
            loss = ((model(xb) - yt[idx]) / model.y_scale).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            val = float((model(xv) - yv).square().mean())
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if epoch - best_epoch >= patience or time.perf_counter() - start > max_seconds:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, {
        "epochs": epoch + 1,
        "best_epoch": best_epoch + 1,
        "val_mse": best,
        "seconds": time.perf_counter() - start,
    }


def code_mirror(model: FaceModelArrays) -> tuple[np.ndarray, np.ndarray]:
    """(K, K) M and (K,) c such that ``code · M + c`` is the code of ``code``'s head mirrored left–right (x → −x,
    vertices swapped with their mirror partners), least squares over every vertex. The default face model's
    basis holds its mirror images to 1 % (relative residual)."""
    index = mirror_vertex_index(model)
    flip = np.array([-1.0, 1.0, 1.0])
    basis = np.asarray(model.shape_basis, np.float64)
    mean = np.asarray(model.mean, np.float64)
    flat = basis.reshape(len(basis), -1)
    targets = np.concatenate(
        [(basis[:, index] * flip).reshape(len(basis), -1), (mean[index] * flip - mean).reshape(1, -1)]
    )
    solution = np.linalg.lstsq(flat.T, targets.T, rcond=None)[0].T  # (K + 1, K): rows · flat ≈ targets
    return solution[:-1], solution[-1]
