"""`python -m training.run`: config merging, overrides, resolved config, stage dispatch and errors."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from training import run as run_cli
from training.config import ConfigError, load_config


def test_overrides_merge_into_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("albedo:\n  steps: 10\n  lr: 0.002\ndata: {kind: synthetic}\n")
    cfg = load_config(path, ["albedo.steps=20", "albedo.ema.beta=0.999", "data.kind=folder", "seed=3"])
    assert cfg == {
        "albedo": {"steps": 20, "lr": 0.002, "ema": {"beta": 0.999}},
        "data": {"kind": "folder"},
        "seed": 3,
    }


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("a: [1,\n", [], "invalid YAML"),
        ("a: 1\n", ["a.b=2"], "'a' is a value, not a section"),
        ("a: 1\n", ["novalue"], "expected key.path=value"),
        ("a: 1\n", ["x..y=1"], "expected key.path=value"),
    ],
)
def test_bad_configs_are_refused(tmp_path, text, overrides, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path, overrides)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_stage_dispatch_writes_the_resolved_config(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("fake_stage")
    fake.run = lambda cfg, out: calls.append((cfg, out))
    monkeypatch.setitem(sys.modules, "fake_stage", fake)
    monkeypatch.setitem(run_cli.STAGES, "albedo", "fake_stage")
    code = run_cli.main(["albedo", "--out", str(tmp_path / "run"), "--set", "albedo.steps=7"])
    assert code == 0
    assert calls == [({"albedo": {"steps": 7}}, tmp_path / "run" / "albedo")]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == {"albedo": {"steps": 7}}


def test_unavailable_stage_fails_cleanly_before_any_work(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(run_cli.STAGES, "shape", "training.no_such_stage_module")
    assert run_cli.main(["shape", "--out", str(tmp_path / "run")]) == 2
    assert "stage 'shape' is not available" in caplog.text
    assert not (tmp_path / "run").exists()
    assert run_cli.main(["albedo", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in caplog.text


def test_images_and_stylegan2_switch_every_data_source(tmp_path):
    base = load_config(run_cli.Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml", [])
    photos = tmp_path / "photos"
    photos.mkdir()
    cfg = run_cli.real_data(base, tmp_path / "run", photos, None)
    assert cfg["extract"]["images"] == str(photos) and "synthetic" not in cfg["extract"]
    assert cfg["shape"]["data"] == {"kind": "photos", "path": str(photos), "seed": 0, "groups": 4, "views": 2}
    assert cfg["albedo"]["data"]["kind"] == "folder" and cfg["albedo"]["data"]["path"] == "auto"
    # the default trains on the synthetic stream; a folder of extracted maps gets the small-folder settings
    assert base["albedo"]["data"]["kind"] == "synthetic" and base["albedo"]["augment"]["policy"] == []
    assert cfg["albedo"]["data"]["holdout"] == 64 and cfg["albedo"]["data"]["mirror"]
    assert cfg["albedo"]["augment"]["policy"] == ["color"]
    assert "synthetic" in base["extract"]  # the loaded config is not modified
    # the grow stage trains on the same maps at 256²: they are extracted at that size, and every stage that reads
    # them (grow, the export's mean-map calibration) finds the extract stage's folder for `path: auto`
    assert cfg["extract"]["resolution"] == cfg["grow"]["resolution"] == 256
    (tmp_path / "run" / "extract" / "albedo").mkdir(parents=True)
    from training.albedo import grow_section

    assert grow_section(cfg, tmp_path / "run" / "grow")["data"]["path"] == str(tmp_path / "run" / "extract" / "albedo")
    pkl = tmp_path / "ffhq.pkl"
    pkl.write_bytes(b"x")
    cfg = run_cli.real_data(base, tmp_path / "run", None, pkl)
    assert cfg["recipe"] == {"stylegan2": str(pkl)}
    assert cfg["extract"]["images"] == str(tmp_path / "run" / "recipe" / "images")
    assert cfg["shape"]["data"]["kind"] == "stylegan2_recipe"
    assert cfg["shape"]["data"]["path"] == str(tmp_path / "run" / "recipe")
    assert run_cli.real_data(base, tmp_path, None, None) is base


def test_missing_real_data_fails_cleanly(tmp_path, caplog):
    assert run_cli.main(["extract", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "is not a folder" in caplog.text
    assert run_cli.main(["all", "--stylegan2", str(tmp_path / "ffhq.pkl"), "--out", str(tmp_path / "run")]) == 2
    assert "--stylegan2: no file" in caplog.text
    with pytest.raises(SystemExit):  # argparse: the two sources exclude each other
        run_cli.main(["all", "--images", str(tmp_path), "--stylegan2", str(tmp_path / "a.pkl")])


def test_data_flag_points_the_albedo_stage_at_a_folder(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(run_cli.STAGES, "albedo", "fake_albedo_stage")
    fake = types.ModuleType("fake_albedo_stage")
    fake.run = lambda cfg, out: seen.update(cfg=cfg, out=out)
    monkeypatch.setitem(sys.modules, "fake_albedo_stage", fake)
    maps = tmp_path / "maps"
    maps.mkdir()
    argv = ["albedo", "--data", str(maps), "--out", str(tmp_path / "run"), "--set", "albedo.data.mirror=true"]
    assert run_cli.main(argv) == 0
    assert seen["cfg"]["albedo"]["data"] == {"kind": "folder", "path": str(maps), "mirror": True}
    assert run_cli.main(["albedo", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")]) == 2
