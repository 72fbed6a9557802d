"""Does /generate's head go with its face? Face length by the sex its albedo map shows, through the service.

    python benchmarks/generate_identity.py [--bundle service/bundled/default] [--baseline BUNDLE] [--seeds 300]
        [--write]   (the table into the bundle's MODEL_CARD.md block ``generate-identity``)

Each bundle answers ``/generate`` for seeds 0…N−1 (``service.pipeline.generate``, onnxruntime, truncation 0.7, as
the API's default); the returned albedo map is read by cue readers fitted here on procedural truth maps of their
own stream (:func:`training.latent_identity.fit_readers`; not the readers that fitted the bundle's ``codes``
graph), and the returned head's brow-to-chin length (landmarks 27–8, neutral) is averaged over the maps read as a
man's and as a woman's. Without a ``codes`` graph the head is the prior's whatever the face (gap ≈ 0); the
face model's phenotype prior puts men's faces ~7.5 mm longer than women's at equal age and ancestry. Also printed:
the correlation of the read skin melanin with the head's nose width (landmarks 31–35), which ancestry moves too.

The card's numbers: ``--baseline`` 1.6.0, extracted with ``git archive c34c71a service/bundled/default | tar -x -C
/tmp/b160``, ``--write``. Measured (300 seeds, 165 read male; judging readers: sex 0.84, grey hair 0.97 held out):
bundle 1.7.0 (codes graph) men 109.6 mm, women 104.6 mm, gap 5.0 ± 1.2 mm, corr(melanin, nose width) 0.41;
1.6.0 (prior head) 108.1 / 107.9 mm, gap 0.2 ± 1.3 mm, corr −0.03.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from readme import table, write_block

from facecore.bundle import Bundle, load_bundle
from service import pipeline as P
from service.engine.sessions import inline_runner, open_sessions
from service.settings import EMBEDDED_BUNDLE
from training.latent_identity import _read_features, face_length_mm, fit_readers, landmark_distance_mm, truth_maps

READER_SEED = 4_242_001  # a truth-map stream apart from training.latent_identity's


def generated(bundle: Bundle, seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 256, 256) sRGB albedo maps in [0, 1] and (N, K) head codes of /generate's seeds 0…N−1."""
    run_graph = inline_runner(open_sessions(bundle, ["CPUExecutionProvider"], 0))
    maps, shapes = [], []
    for seed in range(seeds):
        expression = np.zeros(bundle.face_model.n_expr)
        req = P.MeshRequest(seed, None, None, 0.7, expression, None, 256, 32, ("albedo",), False)
        result = asyncio.run(P.generate(bundle, run_graph, req, P.Timer()))
        image = np.asarray(Image.open(io.BytesIO(result.files["albedo.png"])).convert("RGB"), np.float64) / 255.0
        maps.append(image.transpose(2, 0, 1))
        shapes.append(result.meta["codes"]["shape"])
    return np.stack(maps), np.array(shapes, np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=EMBEDDED_BUNDLE)
    ap.add_argument("--baseline", type=Path, default=None, help="a bundle to compare (e.g. one without 'codes')")
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--truth", type=int, default=2000, help="truth maps the judging readers are fitted on")
    ap.add_argument("--write", action="store_true", help="the table into the bundle's model card")
    args = ap.parse_args()
    t0 = time.perf_counter()
    x, cues = truth_maps(args.truth, READER_SEED)
    readers, report = fit_readers(x, cues)
    print(f"judging readers, held-out truth maps: {report}")
    rows = []
    for path in [args.bundle] + ([args.baseline] if args.baseline else []):
        bundle = load_bundle(path)
        maps, shapes = generated(bundle, args.seeds)
        reading = readers.read(_read_features(maps))
        male = readers.probabilities(reading)[:, 0] > 0.5
        length = face_length_mm(bundle.face_model, shapes)
        nose = landmark_distance_mm(bundle.face_model, shapes, 31, 35)  # nose width
        gap = length[male].mean() - length[~male].mean()
        se = np.sqrt(length[male].var() / male.sum() + length[~male].var() / (~male).sum())
        r = np.corrcoef(reading[:, 2], nose)[0, 1]
        head = "codes graph" if "codes" in bundle.manifest.graphs else "prior head"
        print(
            f"{path} ({head}): {args.seeds} seeds, {male.sum()} read male | brow-chin men {length[male].mean():.1f} "
            f"mm, women {length[~male].mean():.1f} mm, gap {gap:.1f} ± {se:.1f} mm | corr(read melanin, nose width) "
            f"{r:.2f}"
        )
        rows.append((
            f"{bundle.manifest.version} ({head})", f"{male.sum()} / {args.seeds}", f"{length[male].mean():.1f}",
            f"{length[~male].mean():.1f}", f"{gap:.1f} ± {se:.1f}", f"{r:.2f}",
        ))  # fmt: skip
    print(f"[{time.perf_counter() - t0:.0f} s]")
    if args.write:
        header = (
            "bundle",
            "read male / seeds",
            "men, brow-chin mm",
            "women, mm",
            "gap, mm",
            "corr(melanin, nose width)",
        )
        text = (
            f"`/generate` seeds 0–{args.seeds - 1} through the service; maps judged by readers fitted on truth maps of "
            f"their own stream (held out: sex {report['male_accuracy']:.2f}, grey hair "
            f"{report['hair_grey_accuracy']:.2f}); `python benchmarks/generate_identity.py --write`:\n\n"
            + table(header, rows)
        )
        write_block("generate-identity", text, Path(args.bundle) / "MODEL_CARD.md")
        print("wrote the model card's generate-identity block")


if __name__ == "__main__":
    main()
