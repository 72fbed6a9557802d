"""Calibrate a bundle's mouth opening on held-out synthetic renders with known truth (:mod:`facecore.mouth`).

    python -m training.calibration --bundle DIR [--samples 200] [--seed 5550001] [--dry-run]

Each render (``training.data.synthetic``, stream ``--seed``: the training draws from 0 and 7, its evaluation from
1000003 and ``benchmarks/bundle_metrics.py`` from 20261125, so none of those) goes through the service's own
front half — dlib detection, alignment (on the bundle's landmark localiser when it has one), the ONNX encoder,
the identity head when the bundle has one — and the lip gap of the codes is set against the truth's. The line
``truth ≈ slope · encoder + intercept`` (least absolute deviations: the median) is written to
``manifest.json["mouth"]`` with the errors before and after (``--dry-run``: printed only). Renders the detector
misses are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

import numpy as np

from facecore import color, mouth
from facecore.bundle import Bundle, load_bundle

DEFAULT_SEED = 5550001
logger = logging.getLogger(__name__)


def measure(bundle: Bundle, samples: int, seed: int) -> np.ndarray:
    """(N, 2) lip gaps in metres, (truth, encoder), of the renders the detector finds."""
    from service import pipeline as P
    from service.engine.sessions import inline_runner, open_sessions
    from training.data.synthetic import SyntheticConfig, SyntheticFaces

    model = bundle.face_model
    sessions = open_sessions(bundle, ["CPUExecutionProvider"], 0)
    encoder = sessions["encoder"]
    run_graph = inline_runner(sessions)

    faces = SyntheticFaces(SyntheticConfig(image_size=224, albedo_size=64, seed=seed))
    if faces.face_model.arrays.expr_names != model.expr_names:
        raise SystemExit("the synthetic source's face model is not the bundle's: no common truth to calibrate on")
    rows = []
    for i in range(samples):
        item = faces.batch([i])
        image = color.to_uint8(item.image_srgb[0].permute(1, 2, 0).numpy())
        try:
            face = asyncio.run(P.locate_face(bundle, run_graph, P.in_thread, image, "auto"))
        except P.PhotoError:
            continue
        out = encoder.run({"image": (face.crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]})
        codes = {k: v[0].astype(np.float64) for k, v in out.items() if k != "ws"}
        expression = np.clip(codes["expression"], 0.0, 1.0)
        if bundle.identity_head is not None:  # the head's features as /reconstruct computes them
            features = asyncio.run(P.identity_features(bundle, run_graph, P.in_thread, image, face.points))
            codes["shape"], _ = P.identity_shape(bundle, features, codes, expression)
        c = item.codes
        truth = mouth.lip_gap(
            model, c.shape[0].double().numpy(), c.expression[0].double().numpy(), c.pose[0].double().numpy()
        )
        rows.append((truth, mouth.lip_gap(model, codes["shape"], expression, codes["pose"])))
    if len(rows) < 10:
        raise SystemExit(f"only {len(rows)} of {samples} renders were detected: too few to calibrate on")
    return np.array(rows)


def fit(rows: np.ndarray, data: str) -> mouth.MouthCalibration:
    """The least-absolute-deviation line through (encoder, truth) (the conditional *median*: with a weakly
    informative encoder the mean would part every mouth halfway, between the many closed and the few open
    ones), by iteratively reweighted least squares; the slope is kept in [0, 1] (never amplify the encoder)."""
    truth, encoder = rows[:, 0], rows[:, 1]
    A = np.stack([encoder, np.ones_like(encoder)], 1)
    w = np.ones_like(truth)
    for _ in range(50):
        slope, intercept = np.linalg.lstsq(A * w[:, None], truth * w, rcond=None)[0]
        slope = float(np.clip(slope, 0.0, 1.0))
        intercept = float(np.median(truth - slope * encoder))
        w = 1.0 / np.sqrt(np.maximum(np.abs(truth - slope * encoder - intercept), 1e-4))
    return mouth.MouthCalibration(
        slope=slope,
        intercept=intercept,
        samples=len(rows),
        rmse_encoder_m=float(np.sqrt(((encoder - truth) ** 2).mean())),
        rmse_calibrated_m=float(np.sqrt(((slope * encoder + intercept - truth) ** 2).mean())),
        data=data,
    )


def calibrate_bundle(bundle_dir: Path, samples: int = 200, seed: int = DEFAULT_SEED, write: bool = True):
    """Measure, fit and (``write``) store the calibration in ``bundle_dir``'s manifest; returns it."""
    if not (bundle_dir / "manifest.json").is_file():
        raise SystemExit(f"--bundle: {bundle_dir} is not a bundle folder (no manifest.json)")
    rows = measure(load_bundle(bundle_dir), samples, seed)
    cal = fit(rows, f"training.data.synthetic stream {seed}, {samples} renders at 224 px, the service's detection")
    truth, encoder = 1000 * rows[:, 0], 1000 * rows[:, 1]
    logger.info(
        "%d of %d renders detected; lip gap truth median %.1f mm, encoder %.1f mm, correlation %.2f",
        len(rows), samples, np.median(truth), np.median(encoder), np.corrcoef(truth, encoder)[0, 1],
    )  # fmt: skip
    logger.info(
        "truth ≈ %.3f · encoder + %.2f mm; RMSE %.2f mm → %.2f mm (a constant: %.2f mm)",
        cal.slope, 1000 * cal.intercept, 1000 * cal.rmse_encoder_m, 1000 * cal.rmse_calibrated_m, truth.std(),
    )  # fmt: skip
    if write:
        path = bundle_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["mouth"] = cal.model_dump()
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        load_bundle(bundle_dir)  # still valid
        logger.info("wrote %s field 'mouth'", path)
    return cal


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle folder (its manifest is rewritten)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--dry-run", action="store_true", help="print the calibration, write nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    calibrate_bundle(args.bundle, args.samples, args.seed, write=not args.dry_run)


if __name__ == "__main__":
    main()
