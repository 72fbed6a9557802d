"""The model card's blocks that come from the training run and the bundle's own manifest, never typed by hand:
``recipe`` (the "How it was made" table: what each ``training.run`` stage did and its wall time, also stored as
``manifest.json["training"]``) and ``components`` (the held-out numbers each fitted part of the bundle recorded
in the manifest when it was made, and every graph's ONNX parity).

    python benchmarks/bundle_card.py --run runs/default --bundle service/bundled/default

Reads ``RUN/stage_times.jsonl`` (one line per stage a ``training.run`` command ran; a stage resumed after a kill
adds a line, so a stage's cost is the sum of its lines) and ``RUN/config.yaml`` (the sizes each row states).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from readme import write_block

from training.run import ORDER, TIMES_FILE


def stage_seconds(run_dir: Path) -> dict[str, dict[str, float | int]]:
    """Per stage, in ``training.run``'s order: wall seconds summed over its lines and how many lines (parts)."""
    path = run_dir / TIMES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage times (is {run_dir} a training.run output folder?)")
    totals: dict[str, dict[str, float | int]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            stage, seconds = str(row["stage"]), float(row["seconds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a stage-time line ({exc})") from exc
        entry = totals.setdefault(stage, {"seconds": 0.0, "parts": 0})
        entry["seconds"] = round(float(entry["seconds"]) + seconds, 1)
        entry["parts"] = int(entry["parts"]) + 1
    order = {s: i for i, s in enumerate(ORDER)}
    return dict(sorted(totals.items(), key=lambda kv: order.get(kv[0], len(order))))


def describe(stage: str, cfg: Mapping[str, Any]) -> str:
    """One line on what the stage did, from the run's configuration (the sizes are the config's values)."""
    c = cfg.get(stage) or {}
    if stage == "extract":
        syn = c.get("synthetic") or {}
        if c.get("images"):
            return f"texture extraction from the photos of `{c['images']}` ({c.get('landmarks', 'dlib')} landmarks)"
        return (
            f"texture extraction on {syn.get('count')} synthetic renders (stream seed {syn.get('seed')}, "
            f"{syn.get('resolution')} px, {c.get('landmarks', 'dlib')} landmarks): shows the stage at work"
        )
    if stage == "albedo":
        data = c.get("data") or {}
        kimg = int(c.get("steps", 0)) * int(c.get("batch", 0)) / 1000
        source = (
            f"{data.get('num_samples')} procedural true albedo maps ({data.get('holdout')} more held out)"
            if data.get("kind") == "synthetic"
            else "the extracted maps"
        )
        return (
            f"AlbedoGAN (StyleGAN2, {c.get('resolution')}², learned mean image) on {source}: "
            f"{c.get('steps')} steps × {c.get('batch')} = {kimg:g} kimg"
        )
    if stage == "grow":
        return f"that generator grown to {c.get('resolution')}² native: {c.get('steps')} step(s) (D only first)"
    if stage in ("shape", "alternate"):
        sched = c.get("schedule") or {}
        what = (
            "encoder + displacement decoder, AlbedoGAN frozen"
            if stage == "shape"
            else "alternate descent: shape steps, then AlbedoGAN fine-tuning through the renderer"
        )
        albedo = f" + {sched.get('albedo_steps')} albedo" if sched.get("albedo_steps") else ""
        return f"{what}: {sched.get('cycles', 1)} × ({sched.get('shape_steps')} shape{albedo}) steps"
    if stage == "identity":
        return (
            f"identity head: {c.get('identities')} synthetic identities × {c.get('views')} views through dlib's "
            f"recognition features ({c.get('features_graph', 'descriptor')}), ridge (penalty {c.get('ridge_alpha')})"
        )
    if stage == "localiser":
        return f"landmark localiser: {c.get('renders')} synthetic renders, {c.get('steps')} steps"
    if stage == "export":
        return (
            f"ONNX bundle {c.get('name')} {c.get('version')} (fp16 weights, parity checked), mean-map, mouth, "
            "latent → head and photo albedo → latent calibrations"
        )
    if stage == "recipe":
        return "the paper's StyleGAN2 shape data (only with --stylegan2)"
    return ""


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {minutes % 60:02.0f} min"


def card_block(training: Mapping[str, Any]) -> str:
    """The model card's ``recipe`` block from ``manifest.json["training"]``."""
    rows = []
    for stage, entry in training["stages"].items():
        parts = int(entry["parts"])
        resumed = f" ({parts} parts)" if parts > 1 else ""
        rows.append(f"| {stage} | {entry['what']} | {_duration(float(entry['seconds']))}{resumed} |")
    total = sum(float(e["seconds"]) for e in training["stages"].values())
    return "\n".join(
        [
            f"`{training['command']}` on {training['machine']}; wall time per stage summed over the run's parts "
            "(a stage killed and resumed adds a part; other work on the same cores stretches it). "
            "Written by `python benchmarks/bundle_card.py`.",
            "",
            "| stage | what | wall time |",
            "|---|---|---|",
            *rows,
            f"| **all** | | **{_duration(total)}** |",
            *evaluation_lines(training.get("evaluation") or {}),
        ]
    )


EVAL_STAGES = ("shape", "alternate")
"""The stages whose ``eval.json`` (held-out renders, torch, crops on the true landmarks) the card reports."""


def stage_evaluation(run_dir: Path) -> dict[str, dict]:
    """Per training stage with an ``eval.json``: its final held-out evaluation and the samples it was measured on."""
    out = {}
    for stage in EVAL_STAGES:
        path = run_dir / stage / "eval.json"
        if path.is_file():
            data = json.loads(path.read_text())
            final = data.get("final") or {}
            out[stage] = {
                "step": final.get("step"),
                "samples": final.get("num_samples"),
                "data": (data.get("protocol") or {}).get("samples", ""),
                **{k: final[k] for k in ("now_coarse_mm", "landmark_nme", "gt_shape_mm", "albedo_mae") if k in final},
            }
    return out


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def evaluation_lines(evaluation: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The training-time evaluation table (torch, before export) under the stage table; none without one."""
    if not evaluation:
        return []
    rows = []
    for stage, e in evaluation.items():
        now = e.get("now_coarse_mm") or {}
        cells = [
            f"{_num(now.get('median'), '.2f')} / {_num(now.get('mean'), '.2f')}",
            _num(e.get("landmark_nme"), ".3f"),
            _num(e.get("gt_shape_mm"), ".2f"),
            _num(e.get("albedo_mae"), ".3f"),
        ]
        rows.append(f"| after {stage} (step {e.get('step')}) | " + " | ".join(cells) + " |")
    first = next(iter(evaluation.values()))
    return [
        "",
        f"Training-time evaluation (PyTorch, {first.get('samples')} {first.get('data')}, crops on the true "
        "landmarks; the exported bundle through the service: the metrics below):",
        "",
        "| | NoW coarse, median / mean (mm) | landmark error / eye distance | identity code vs truth (mm) "
        "| AlbedoGAN albedo at the predicted latent, MAE |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def components_block(manifest: Mapping[str, Any]) -> str:
    """The ``components`` block: each fitted part's held-out numbers as its fit recorded them in the manifest."""
    rows = []
    ident = (manifest.get("identity") or {}).get("metrics") or {}
    held = ident.get("held_out_prior")
    if held:
        rows.append(
            (
                "identity head (`identity_head.npz`, `identity_features.onnx`)",
                f"face-region error / the prior's spread: {held['centred_ratio']:.3f} centred, "
                f"{held['rigid_ratio']:.3f} rigid, {held['similarity_ratio']:.3f} similarity-aligned "
                f"(1.0 = the mean face)",
                f"{held['rows']:.0f} adult-prior identities no fit saw; ridge penalty {ident.get('ridge_alpha')}, "
                f"{ident.get('train_identities')} training identities",
            )
        )
    loc = ((manifest.get("localiser") or {}).get("metrics") or {}).get("held_out")
    if loc:
        e = loc["errors"]
        last = max((k for k in e if k.startswith("pass ") and k.endswith(" anchors")), default=None)
        passes = manifest["localiser"].get("passes", 2)
        served = e.get(f"pass {passes} anchors") or (e[last] if last else None)
        if served and "dlib anchors" in e:
            rows.append(
                (
                    "landmark localiser (`landmarks.onnx`)",
                    f"anchor error / eye distance: dlib's 5 points {e['dlib anchors']['mean']:.3f} "
                    f"(p90 {e['dlib anchors']['p90']:.3f}) → {served['mean']:.3f} (p90 {served['p90']:.3f}) "
                    f"after {passes} passes",
                    f"{loc['renders']} held-out renders ({loc['no_face']} without a face found)",
                )
            )
    mouth = manifest.get("mouth")
    if mouth:
        rows.append(
            (
                'mouth calibration (`manifest.json["mouth"]`)',
                f"lip-gap RMSE {1000 * mouth['rmse_encoder_m']:.1f} mm (encoder) → "
                f"{1000 * mouth['rmse_calibrated_m']:.1f} mm",
                f"{mouth['samples']} renders: {mouth.get('data', '')}",
            )
        )
    lat = manifest.get("albedo_latent")
    if lat:
        rows.append(
            (
                "photo albedo → latent (`albedo_latent.onnx`)",
                f"generator at the predicted latent vs at the true one: {lat['psnr_db']:.2f} dB "
                f"(at the mean latent {lat['psnr_db_mean_latent']:.2f} dB)",
                f"last {lat['validation_pairs']} of {lat['pairs']} rendered faces (penalty {lat['penalty']:g})",
            )
        )
    codes = manifest.get("latent_identity")
    if codes:
        readers = codes.get("readers") or {}
        rows.append(
            (
                "/generate's latent → head (`codes.onnx`)",
                f"heads {codes['face_region_error_mm']:.2f} mm from the teacher's ({_pct(codes['error_ratio'])} of "
                f"its spread); cue readers: sex {_pct(readers.get('male_accuracy', float('nan')))}, "
                f"log melanin R² {readers.get('log_melanin_r2', float('nan')):.2f}",
                f"{codes['validation_samples']} of {codes['samples']} generated maps held out",
            )
        )
    mean = manifest.get("albedo_mean")
    if mean:
        rows.append(
            (
                "AlbedoGAN mean map (`albedo.onnx`)",
                f"mean map set to the training maps' (mean absolute change {mean['shift_mean_abs']:.3f})",
                f"{mean['samples']} generated vs {mean['training_maps']} training maps",
            )
        )
    parity = [
        f"{name} {g['parity_max_abs']:.1e}"
        for name, g in (manifest.get("graphs") or {}).items()
        if g.get("parity_max_abs") is not None
    ]
    lines = [
        "Each part's held-out numbers as its fit recorded them in `manifest.json` (written by "
        "`python benchmarks/bundle_card.py`):",
        "",
        "| part | held out | on |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    if parity:
        lines += [
            "",
            "ONNX parity, each graph's largest absolute difference from the model it was exported from "
            "(float16 weights): " + ", ".join(parity),
        ]
    return "\n".join(lines)


def record(run_dir: Path, bundle_dir: Path, machine: str, config: str = "training/configs/default.yaml") -> dict:
    """The run's stage times and sizes into ``bundle_dir``'s manifest and card; returns the manifest's entry."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    stages = stage_seconds(run_dir)
    training = {
        "command": f"python -m training.run all --config {config} --out {run_dir.name}",
        "machine": machine,
        "stages": {s: {**v, "what": describe(s, cfg)} for s, v in stages.items() if float(v["seconds"]) > 0},
        "evaluation": stage_evaluation(run_dir),
    }
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training"] = {**(manifest.get("training") or {}), **training}  # beside what the export recorded
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    card = bundle_dir / "MODEL_CARD.md"
    if card.is_file():
        write_block("recipe", card_block(training), card)
        write_block("components", components_block(manifest), card)
    return training


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a training.run output folder")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle folder its export stage wrote")
    ap.add_argument("--machine", default="a 2-core CPU (no GPU)", help="what the run ran on, for the card")
    ap.add_argument("--config", default="training/configs/default.yaml", help="the config the run was started with")
    args = ap.parse_args(argv)
    try:
        training = record(args.run, args.bundle, args.machine, args.config)
    except (FileNotFoundError, ValueError, SystemExit) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(card_block(training))
    return 0


if __name__ == "__main__":
    sys.exit(main())
