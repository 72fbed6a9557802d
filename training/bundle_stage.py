"""The ``export`` stage of ``training.run``: the bundle (:func:`training.export.run`), then the graphs fitted to its
final generator.

``export.latent_identity_samples`` > 0 fits /generate's latent → head graph on that many generated maps
(``export.latent_identity_truth`` procedural truth maps for its cue readers, 3,000 by default;
:mod:`training.latent_identity`). It runs after :func:`training.export.run`, whose generator mean-map calibration
would drop it, and lives here because :mod:`training.latent_identity` builds on :mod:`training.export`.

A finished ``localiser`` stage of the same run (``RUN/localiser``) goes in as the ``landmarks`` graph
(:func:`training.localiser.add_localiser`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training import export
from training.calibration import calibrate_bundle
from training.latent_identity import add_codes_graph
from training.localiser import METRICS_FILE, add_localiser


def run(cfg: Mapping[str, Any], out: Path) -> None:
    section = dict(cfg.get("export", {}))
    export.run(cfg, out, calibrate_mouth=False)
    if section.get("untrained"):
        return
    localiser = out.parent / "localiser"
    if (localiser / METRICS_FILE).is_file():  # before the mouth calibration: it moves the encoder's crops
        add_localiser(out, localiser, out)
    if int(section.get("mouth_calibration_samples", 0)) > 0:  # the encoder's lip gap vs held-out truth
        calibrate_bundle(out, int(section["mouth_calibration_samples"]))
    if int(section.get("latent_identity_samples", 0)) > 0:
        truth = int(section.get("latent_identity_truth", 3000))
        add_codes_graph(out, out, int(section["latent_identity_samples"]), truth)
