"""What one photo can tell of identity: the floors under the face-region identity error (issue 13).

    python benchmarks/identity_ceiling.py [--count 16] [--noise 0 0.02 0.046] [--prior-samples 3000]

1. **Size.** A weak-perspective photo does not show the head's size in millimetres (the camera's scale trades
   against it). A prediction with every identity's *exact* shape at the prior mean's size (its region's RMS radius)
   is scored against the truth over the face region (the NoW-like crop of ``training.evaluation.identity_region``),
   centred, rigidly aligned and similarity-aligned, relative to the prior mean face's error: the floor any
   single-photo method meets unless it reads size from cues (sex, age, build). How much of the size the face's
   *proportions* tell (the exact shape scaled to unit size → log size, a linear least-squares fit on the first
   two thirds of the draws, PCA-reduced; scored on the last third): the floor of a method whose proportions are
   exact and that reads size from them linearly.
2. **68 landmarks.** On renders of the synthetic source (stream 777011, identities from the adult prior) the
   identity is fitted to the renders' true 2-D landmarks plus Gaussian noise of ``--noise`` eye-corner distances
   (the shipped localiser's held-out error is ~0.046), by Gauss–Newton in the prior's whitened coordinates with a
   unit Gaussian prior, with everything else at its truth ("known") or free from the truth with a weak prior
   (camera, head rotation, expression and jaw: "free"). It says how much of the identity 68 points carry, at
   a given landmark accuracy, with and without the confounds a real fit has.
"""

from __future__ import annotations

import argparse

import numpy as np

from facecore import geometry as geo
from facecore.refine import landmark_model

PROPORTION_COMPONENTS = 60


def region_errors(metric, pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    from training.identity_regression import ALIGNMENTS, mean_vertex_distance

    return {name: mean_vertex_distance(pred, true, rigid, scale) for name, rigid, scale in ALIGNMENTS}


def size_floor(metric, arrays, samples: int) -> None:
    mu = np.asarray(arrays.shape_prior_mean, np.float64)
    L = np.asarray(arrays.shape_prior_chol, np.float64)
    shapes = mu + np.random.default_rng(1).standard_normal((samples, len(mu))) @ L.T
    true = metric.vertices(metric.to_z(shapes))
    mean = np.repeat(metric.vertices(metric.to_z(mu[None])), samples, 0)

    def radius(v: np.ndarray) -> np.ndarray:
        return np.sqrt((v**2).sum(-1).mean(-1))

    unit = true / radius(true)[:, None, None]  # the proportions alone
    exact = unit * radius(mean)[:, None, None]
    got, ref = region_errors(metric, exact, true), region_errors(metric, mean, true)
    print(f"1. size: {samples} adult-prior identities, region size std {np.std(radius(true) / radius(mean)):.3f}")
    print("   exact shape at the mean size vs the mean face, face-region mean vertex distance (mm):")
    for name in got:
        g, r = got[name].mean(), ref[name].mean()
        print(f"   {name:>10}: {g:5.2f} vs {r:5.2f}  ratio {g / r:.3f}")
    fit, test = slice(0, 2 * samples // 3), slice(2 * samples // 3, samples)
    flat = unit.reshape(samples, -1)
    centre = flat[fit].mean(0)
    basis = np.linalg.svd(flat[fit] - centre, full_matrices=False)[2][:PROPORTION_COMPONENTS]
    design = np.c_[(flat - centre) @ basis.T, np.ones(samples)]
    log_size = np.log(radius(true))
    coef = np.linalg.lstsq(design[fit], log_size[fit], rcond=None)[0]
    scaled = unit[test] * np.exp(design[test] @ coef)[:, None, None]
    residual = log_size[test] - design[test] @ coef
    r2 = 1.0 - residual.var() / log_size[test].var()
    got, ref = region_errors(metric, scaled, true[test]), region_errors(metric, mean[test], true[test])
    print(f"   size read linearly from the exact proportions ({PROPORTION_COMPONENTS} components, fitted on "
          f"{fit.stop}, scored on {samples - fit.stop}): R² of log size {r2:.2f}; ratio to the mean face "
          + ", ".join(f"{name} {got[name].mean() / ref[name].mean():.3f}" for name in got))  # fmt: skip


def landmark_fit(arrays, item, noise: float, free: bool, rng: np.random.Generator) -> np.ndarray:
    """Identity code fitted to an item's true landmarks + noise (see the module doc)."""
    lm = landmark_model(arrays)
    mu = np.asarray(arrays.shape_prior_mean, np.float64)
    L = np.asarray(arrays.shape_prior_chol, np.float64)
    K = len(mu)
    g, jaw = arrays.joint_names.index("global"), arrays.joint_names.index("jaw")
    expr_t = item.codes.expression[0].double().numpy()
    pose_t = item.codes.pose[0].double().numpy()
    cam_t = np.array([float(item.camera.scale[0]), *item.camera.translation[0].double().numpy()])
    size = item.image_srgb.shape[-1]
    target = item.landmarks_px[0].double().numpy()
    iod = float(np.linalg.norm(target[36] - target[45]))
    target = target + rng.normal(0.0, noise * iod, target.shape)
    E = len(expr_t)
    n = K + (3 + 3 + E + 1 if free else 0)

    def residuals(p: np.ndarray) -> np.ndarray:
        cam, pose, expr = cam_t.copy(), pose_t.copy(), expr_t
        if free:
            k = K
            cam = np.array([cam_t[0] * np.exp(p[k]), cam_t[1] + p[k + 1], cam_t[2] + p[k + 2]])
            pose[g] = pose_t[g] + p[k + 3 : k + 6]
            expr = np.clip(expr_t + p[k + 6 : k + 6 + E], 0.0, 1.0)
            pose[jaw, 0] = pose_t[jaw, 0] + p[k + 6 + E]
        pts = lm.landmarks(mu + L @ p[:K], expr, pose)
        r = (geo.project_points(pts, cam, size) - target).reshape(-1) / (max(noise, 0.01) * iod)
        return np.concatenate([r, p[:K], p[K:] / 0.3])

    p = np.zeros(n)
    for _ in range(8):
        r0 = residuals(p)
        J = np.stack([(residuals(p + 1e-5 * e) - r0) / 1e-5 for e in np.eye(n)], 1)
        jtj = J.T @ J
        p = p - np.linalg.solve(jtj + 1e-4 * np.diag(np.diag(jtj) + 1e-9), J.T @ r0)
    return mu + L @ p[:K]


def main() -> None:
    from models.face.model import FaceModel
    from training.data.synthetic import SyntheticConfig, SyntheticFaces
    from training.evaluation import identity_region
    from training.identity_regression import RegionMetric

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=16, help="renders per landmark setting")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.02, 0.046], help="eye-corner distances")
    ap.add_argument("--prior-samples", type=int, default=3000)
    args = ap.parse_args()
    fm = FaceModel.from_file()
    arrays = fm.arrays
    metric = RegionMetric(arrays, identity_region(arrays))
    size_floor(metric, arrays, args.prior_samples)
    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=777011), fm)
    items = [faces.batch([i]) for i in range(args.count)]
    mu = np.asarray(arrays.shape_prior_mean, np.float64)
    print(
        f"2. 68 landmarks: {args.count} renders (stream 777011), ratio to the mean face's error (centred / similarity):"
    )
    for noise in args.noise:
        for free in (False, True):
            rng = np.random.default_rng(0)
            preds = np.stack([landmark_fit(arrays, item, noise, free, rng) for item in items])
            truth = np.stack([item.codes.shape[0].double().numpy() for item in items])
            vp, vt = metric.vertices(metric.to_z(preds)), metric.vertices(metric.to_z(truth))
            vm = np.repeat(metric.vertices(metric.to_z(mu[None])), len(items), 0)
            got, ref = region_errors(metric, vp, vt), region_errors(metric, vm, vt)
            label = "free" if free else "known"
            print(f"   noise {noise:5.3f}, rest {label:>5}: centred {got['centred'].mean() / ref['centred'].mean():.3f}"
                  f"  similarity {got['similarity'].mean() / ref['similarity'].mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
