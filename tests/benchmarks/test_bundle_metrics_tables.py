"""The card's metric tables put the previous bundle's numbers beside this one's only when it was measured the same
way (issue 18: a new bundle is shipped when it is not worse, and the card shows both)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bundle_metrics  # noqa: E402

from facecore.bundle import load_bundle  # noqa: E402
from service.settings import EMBEDDED_BUNDLE  # noqa: E402


@pytest.fixture()
def report():
    return copy.deepcopy(load_bundle(EMBEDDED_BUNDLE).manifest.metrics)


def test_previous_column_carries_the_other_bundles_numbers(report, tmp_path):
    prev = copy.deepcopy(report)
    prev["bundle"]["version"] = "0.9.9"
    prev["synthetic"]["landmark_nme"] = 0.1234
    prev["photos"]["identity_cosine_own_render"] = 0.5678
    path = tmp_path / "prev.json"
    path.write_text(json.dumps(prev))
    s = report["synthetic"]
    photos = Path(__file__).resolve().parents[1] / "fixtures" / "photos"
    args = argparse.Namespace(seed=s["seed"], synthetic=s["num_samples"], photos=photos)
    report["previous"] = bundle_metrics.previous_report(path, args)
    assert set(report["previous"]) == {"bundle", "synthetic", "photos"}

    tables = bundle_metrics.card_tables(report)
    assert "| albedogan-default 0.9.9 |" in tables
    row = next(line for line in tables.splitlines() if line.startswith("| 68-landmark error / inter-ocular"))
    assert row.split(" | ")[1:3] == [f"{s['landmark_nme']:.3f}", "0.123"]
    row = next(line for line in tables.splitlines() if "rendered over it" in line)
    assert row.split(" | ")[2] == "0.568"
    assert bundle_metrics.card_tables({k: v for k, v in report.items() if k != "previous"}).count("0.9.9") == 0

    other = argparse.Namespace(seed=s["seed"] + 1, synthetic=s["num_samples"], photos=photos)
    with pytest.raises(SystemExit, match="measured on stream"):
        bundle_metrics.previous_report(path, other)
    (tmp_path / "one.jpg").write_bytes(b"")
    with pytest.raises(SystemExit, match="measured on the photos"):
        bundle_metrics.previous_report(path, argparse.Namespace(seed=s["seed"], synthetic=0, photos=tmp_path))
