"""The ``export`` stage of ``training.run``: the bundle (:func:`training.export.run`), then what the run's other
stages made goes in, in this order:

1. a finished ``grow`` stage (``RUN/grow``, :func:`training.albedo.run_grow`): its generator replaces the albedo
   stage's (:func:`training.export.replace_generator`) and the mean-map calibration (``export.albedo_mean_samples``)
   runs on the grown one, with the grow stage's data;
2. a finished ``identity`` stage (``RUN/identity``): its head and feature graph (:func:`training.export
   .add_identity_head`);
3. a finished ``localiser`` stage (``RUN/localiser``): the ``landmarks`` graph (:func:`training.localiser
   .add_localiser`), before the mouth calibration (``export.mouth_calibration_samples``), which it moves the
   encoder's crops for, and which is fitted on the final identity head's shapes;
4. ``export.latent_identity_samples`` > 0: /generate's latent → head graph on that many generated maps
   (``export.latent_identity_truth`` procedural truth maps for its cue readers, 3,000 by default;
   :mod:`training.latent_identity`), after the mean-map calibration, which would drop it;
5. ``export.albedo_latent_samples`` > 0: /reconstruct's photo albedo → latent graph on that many rendered faces
   through the finished bundle (:mod:`training.albedo_latent`, ``export.albedo_latent_workers`` processes), since
   it reads albedos through the final head, light and generator;
6. ``export.skin_tone_renders`` > 0: the photo's skin level and ``albedo=generated``'s tone match calibrated on
   that many held-out renders through the finished bundle (:mod:`training.skin_tone`): last, since it scores the
   photo's de-lit skin and the map at the latent that graph reads; with step 5, also before it (the graph is fitted
   on the photo's maps as /reconstruct serves them, at the calibrated level).

It lives here because :mod:`training.latent_identity` and :mod:`training.albedo_latent` build on
:mod:`training.export`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facecore.identity import IDENTITY_METRICS_FILE
from training import export
from training.albedo import grow_section
from training.albedo_latent import add_latent_graph
from training.albedo_mean import calibrate as calibrate_mean
from training.calibration import calibrate_bundle
from training.checkpoint import run_checkpoint
from training.latent_identity import add_codes_graph
from training.localiser import METRICS_FILE, add_localiser
from training.skin_tone import calibrate_bundle as calibrate_skin_tone


def finished_grow(cfg: Mapping[str, Any], run_dir: Path) -> dict | None:
    """The ``grow`` stage's section when the config has one and ``RUN/grow`` holds its last step's checkpoint;
    None without a grow section (a stale grow run of another config stays out of the bundle); raises when the
    stage is configured but not finished."""
    section = grow_section(cfg, run_dir / "grow")
    if section is None:
        return None
    ckpt = run_checkpoint(run_dir / "grow")
    step = json.loads((ckpt / "meta.json").read_text()).get("step", 0) if ckpt is not None else 0
    if step < int(section.get("steps", 0)):
        raise FileNotFoundError(f"export: the grow stage is at step {step} of {section.get('steps')} (run it first)")
    return section


def run(cfg: Mapping[str, Any], out: Path) -> None:
    section = dict(cfg.get("export", {}))
    run_dir = out.parent
    grow = None if section.get("untrained") else finished_grow(cfg, run_dir)
    export.run(cfg, out, calibrate_mouth=False, calibrate_mean=grow is None)
    if section.get("untrained"):
        return
    if grow is not None:
        export.replace_generator(out, run_dir / "grow", out)
        samples = int(section.get("albedo_mean_samples", 0))
        if samples > 0:
            calibrate_mean(out, out, grow.get("data") or {}, samples)
    if (run_dir / "identity" / IDENTITY_METRICS_FILE).is_file():
        export.add_identity_head(out, run_dir / "identity", out)
    localiser = run_dir / "localiser"
    if (localiser / METRICS_FILE).is_file():  # before the mouth calibration: it moves the encoder's crops
        add_localiser(out, localiser, out)
    if int(section.get("mouth_calibration_samples", 0)) > 0:  # the encoder's lip gap vs held-out truth
        calibrate_bundle(out, int(section["mouth_calibration_samples"]))
    if int(section.get("latent_identity_samples", 0)) > 0:
        truth = int(section.get("latent_identity_truth", 3000))
        add_codes_graph(out, out, int(section["latent_identity_samples"]), truth)
    tone_renders = int(section.get("skin_tone_renders", 0))
    if int(section.get("albedo_latent_samples", 0)) > 0:
        if tone_renders > 0:  # the photo's skin level first: the latent graph is fitted on the maps as served
            calibrate_skin_tone(out, tone_renders)
        workers = int(section.get("albedo_latent_workers", 1))
        add_latent_graph(out, out, int(section["albedo_latent_samples"]), workers=workers)
    if tone_renders > 0:
        calibrate_skin_tone(out, tone_renders)
