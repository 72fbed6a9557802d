"""The model card's blocks that come from the training run and the bundle's own manifest, never typed by hand:
``recipe`` (the "How it was made" table: what each ``training.run`` stage did and its wall time, also stored as
``manifest.json["training"]``) and ``components`` (the held-out numbers each fitted part of the bundle recorded
in the manifest when it was made, and every graph's ONNX parity).

    python benchmarks/bundle_card.py --run runs/default --bundle service/bundled/default
    python benchmarks/bundle_card.py --components-only --bundle service/bundled/default

``--components-only``: the ``components`` block alone, from the manifest (for a bundle edited after its run: a graph
re-fitted or re-exported by its own command, which records its numbers in the manifest; the run may be gone).

Reads ``RUN/stage_times.jsonl`` and ``RUN/config.yaml`` (the sizes each row states). ``training.run`` writes a
stage's time when the stage finishes, so a run of it that was killed is not in the sum: its work up to its last
checkpoint was resumed, not counted (since ``started`` lines exist, the table says how many runs were cut short).
The bundle must be the run's export (``manifest.json["training"]["final_dir"]`` inside ``--run``), and the card
must have both blocks; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from readme import table, write_block

from training.run import ORDER, TIMES_FILE


def stage_seconds(run_dir: Path) -> dict[str, dict[str, float | int]]:
    """Per stage, in ``training.run``'s order: wall seconds summed over its finished runs, and how many of its
    runs started and never finished (killed; only counted where the run wrote ``started`` lines)."""
    path = run_dir / TIMES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage times (is {run_dir} a training.run output folder?)")
    totals: dict[str, dict[str, float | int]] = {}
    open_run: str | None = None  # the stage whose `started` line has no `finished` line yet
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            stage = str(row["stage"])
            seconds = None if "started" in row else float(row["seconds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a stage-time line ({exc})") from exc
        entry = totals.setdefault(stage, {"seconds": 0.0, "interrupted": 0})
        if open_run is not None and (seconds is None or open_run != stage):
            totals[open_run]["interrupted"] = int(totals[open_run]["interrupted"]) + 1
        if seconds is None:
            open_run = stage
        else:
            entry["seconds"] = round(float(entry["seconds"]) + seconds, 1)
            open_run = None
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
        mean_image = ", learned mean image" if ((c.get("G") or {}).get("synthesis") or {}).get("mean_image") else ""
        source = (
            f"{data.get('num_samples')} procedural true albedo maps ({data.get('holdout')} more held out)"
            if data.get("kind") == "synthetic"
            else "the extracted maps"
        )
        return (
            f"AlbedoGAN (StyleGAN2, {c.get('resolution')}²{mean_image}) on {source}: "
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
            f"ONNX bundle {c.get('name')} {c.get('version')} ({'float16' if c.get('fp16') else 'float32'} weights, "
            "parity checked), mean-map, mouth, "
            "latent → head and photo albedo → latent calibrations"
        )
    if stage == "recipe":
        return "the paper's StyleGAN2 shape data (only with --stylegan2)"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def card_block(training: Mapping[str, Any]) -> str:
    """The model card's ``recipe`` block from ``manifest.json["training"]``."""
    rows = []
    for stage, entry in training["stages"].items():
        cut = int(entry.get("interrupted", 0))
        note = f" (+ {cut} run{'s' * (cut > 1)} killed and resumed, not counted)" if cut else ""
        rows.append((stage, entry["what"], _duration(float(entry["seconds"])) + note))
    total = sum(float(e["seconds"]) for e in training["stages"].values())
    rows.append(("**all**", "", f"**{_duration(total)}**"))
    return "\n".join(
        [
            f"`{training['command']}` on {training['machine']}. Wall time per stage: the sum over its runs that "
            "finished (a run killed before the stage's end is not counted: its work up to its last checkpoint was "
            "resumed; other work on the same cores stretches every number). Written by "
            "`python benchmarks/bundle_card.py`.",
            "",
            table(("stage", "what", "wall time"), rows),
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
        rows.append(
            (
                f"after {stage} (step {e.get('step')})",
                f"{_num(now.get('median'), '.2f')} / {_num(now.get('mean'), '.2f')}",
                _num(e.get("landmark_nme"), ".3f"),
                _num(e.get("gt_shape_mm"), ".2f"),
                _num(e.get("albedo_mae"), ".3f"),
            )
        )
    first = next(iter(evaluation.values()))
    header = (
        "",
        "NoW coarse, median / mean (mm)",
        "landmark error / eye distance",
        "identity code vs truth (mm)",
        "AlbedoGAN albedo at the predicted latent, MAE",
    )
    return [
        "",
        f"Training-time evaluation (PyTorch, {first.get('samples')} {first.get('data')}, crops on the true "
        "landmarks; the exported bundle through the service: the metrics below):",
        "",
        table(header, rows),
    ]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


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
                    f"{loc['renders']} held-out renders ({loc['no_face']} without a face found)"
                    + (f"; **kept from {kept}**" if (kept := manifest["localiser"].get("kept_from")) else ""),
                )
            )
    mouth = manifest.get("mouth")
    if mouth:
        rows.append(
            (
                'mouth calibration (`manifest.json["mouth"]`)',
                f"lip-gap RMSE {1000 * mouth['rmse_encoder_m']:.1f} mm (encoder) → "
                f"{1000 * mouth['rmse_calibrated_m']:.1f} mm",
                f"**not held out**: the {mouth['samples']} renders its slope and intercept were fitted on "
                f"({mouth.get('data', '')})",
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
                f"its spread); cue readers: sex {_pct(readers.get('male_accuracy'))}, "
                f"log melanin R² {_num(readers.get('log_melanin_r2'), '.2f')}",
                f"{codes['validation_samples']} of {codes['samples']} generated maps held out",
            )
        )
    mean = manifest.get("albedo_mean")
    if mean:
        rows.append(
            (
                "AlbedoGAN mean map (`albedo.onnx`)",
                f"mean map set to the training maps' (mean absolute change {mean['shift_mean_abs']:.3f})",
                f"a calibration, not an evaluation: {mean['samples']} generated vs {mean['training_maps']} "
                "training maps",
            )
        )
    graphs = manifest.get("graphs") or {}
    parity = [f"{name} {g['parity_max_abs']:.1e}" for name, g in graphs.items() if g.get("parity_max_abs") is not None]
    dtypes = sorted({str(g.get("weights_dtype", "float32")) for g in graphs.values()})
    lines = [
        "Each part's numbers as its fit recorded them in `manifest.json` (written by "
        "`python benchmarks/bundle_card.py`):",
        "",
        table(("part", "number", "measured on"), rows),
    ]
    if parity:
        lines += [
            "",
            "ONNX parity, each graph's largest absolute difference from the model it was exported from "
            f"(weights stored as {' / '.join(dtypes)}): " + ", ".join(parity),
        ]
    return "\n".join(lines)


def record(run_dir: Path, bundle_dir: Path, machine: str, config: str = "training/configs/default.yaml") -> dict:
    """The run's stage times and sizes into ``bundle_dir``'s manifest and card; returns the manifest's entry.

    Raises (before writing anything): FileNotFoundError / ValueError for a run folder without readable stage
    times, ValueError when the bundle is not that run's export, SystemExit when the card lacks a block."""
    stages = stage_seconds(run_dir)
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    final = (manifest.get("training") or {}).get("final_dir")
    if final is None or not Path(final).resolve().is_relative_to(run_dir.resolve()):
        raise ValueError(f"{bundle_dir} was exported from {final}, not from the run {run_dir}")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    training = {
        "command": f"python -m training.run all --config {config} --out {run_dir}",
        "machine": machine,
        "stages": {s: {**v, "what": describe(s, cfg)} for s, v in stages.items() if float(v["seconds"]) > 0},
        "evaluation": stage_evaluation(run_dir),
    }
    manifest["training"] = {**(manifest.get("training") or {}), **training}  # beside what the export recorded
    blocks = {"recipe": card_block(training), "components": components_block(manifest)}
    card = bundle_dir / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text()
        missing = [name for name in blocks if f"<!-- {name}:begin -->" not in text]
        if missing:
            raise SystemExit(f"{card}: no block {', '.join(missing)} (add <!-- NAME:begin --> / <!-- NAME:end -->)")
        for name, block in blocks.items():
            write_block(name, block, card)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return training


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", type=Path, help="a training.run output folder")
    what.add_argument("--components-only", action="store_true", help="only the components block, from the manifest")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle folder its export stage wrote")
    ap.add_argument("--machine", default="a 2-core CPU (no GPU)", help="what the run ran on, for the card")
    ap.add_argument("--config", default="training/configs/default.yaml", help="the config the run was started with")
    args = ap.parse_args(argv)
    if args.components_only:
        card = args.bundle / "MODEL_CARD.md"
        try:
            block = components_block(json.loads((args.bundle / "manifest.json").read_text()))
            write_block("components", block, card)
        except (OSError, KeyError, ValueError, SystemExit) as exc:
            print(f"error: {args.bundle}: {exc} (nothing written)", file=sys.stderr)
            return 2
        print(block)
        return 0
    try:
        training = record(args.run, args.bundle, args.machine, args.config)
    except (FileNotFoundError, ValueError, SystemExit) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {args.bundle}/manifest.json lacks {exc} (nothing written)", file=sys.stderr)
        return 2
    print(card_block(training))
    return 0


if __name__ == "__main__":
    sys.exit(main())
