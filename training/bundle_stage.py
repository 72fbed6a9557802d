"""The ``export`` stage of ``training.run``: the bundle (:func:`training.export.run`), then the graphs fitted to its
final generator.

``export.latent_identity_samples`` > 0 fits /generate's latent → head graph on that many generated maps
(``export.latent_identity_truth`` procedural truth maps for its cue readers, 3,000 by default;
:mod:`training.latent_identity`). It runs after :func:`training.export.run`, whose generator mean-map calibration
would drop it, and lives here because :mod:`training.latent_identity` builds on :mod:`training.export`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training import export
from training.latent_identity import add_codes_graph


def run(cfg: Mapping[str, Any], out: Path) -> None:
    export.run(cfg, out)
    section = dict(cfg.get("export", {}))
    if not section.get("untrained") and int(section.get("latent_identity_samples", 0)) > 0:
        truth = int(section.get("latent_identity_truth", 3000))
        add_codes_graph(out, out, int(section["latent_identity_samples"]), truth)
