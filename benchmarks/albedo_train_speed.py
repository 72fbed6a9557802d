"""AlbedoGAN pretraining speed on this machine, and the metric of a run's checkpoints.

python benchmarks/albedo_train_speed.py [--config training/configs/albedo_default.yaml] [--steps 20]
                                        [--set albedo.batch=32 …] [--threads N] [--run RUN_DIR]

Prints, for the configuration's networks and batch: training images/s of full steps as ``training/albedo.py``
runs them (Gmain + Dmain every step, lazy R1 / path length at their intervals, EMA; the maps are pre-loaded,
so data synthesis is timed separately), the synthetic albedo source's ms/map, G_ema inference ms/image at the
training resolution, and the projected wall time of the configured number of steps. Generator ms/image at
256² / 512² with paper widths: ``benchmarks/stylegan2_speed.py``.

With ``--run RUN_DIR`` (a run folder, i.e. ``OUT/albedo``) it also prints the run's metric history
(``metrics.jsonl``) and evaluates KID of G_ema of every checkpoint still on disk against the run's reference set.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from training.albedo import AlbedoTrainConfig, AlbedoTrainer, DistInfo, iter_checkpoints
from training.config import load_config
from training.weights import load_checkpoint_generator

REPO = Path(__file__).resolve().parents[1]


def bench_training(cfg: AlbedoTrainConfig, steps: int, warmup: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = AlbedoTrainer(cfg, Path(tmp), DistInfo(0, 1, torch.device("cpu"), False))
        n_maps = min(len(trainer.train_set), (warmup + steps) * cfg.batch)
        t0 = time.perf_counter()
        for i in range(0, n_maps, 64):  # pre-load (cache) the maps the timed steps use
            trainer.train_set.batch(trainer.sampler.indices(i, min(64, n_maps - i)))
        data_s = (time.perf_counter() - t0) / max(n_maps, 1)
        g_params = sum(p.numel() for p in trainer.G.parameters()) / 1e6
        d_params = sum(p.numel() for p in trainer.D.parameters()) / 1e6
        print(f"G {g_params:.2f} M parameters, D {d_params:.2f} M; num_ws {trainer.G.num_ws}")
        print(f"data ({cfg.data.kind}): {1000 * data_s:.1f} ms/map to synthesise/decode (once per map, cached)")
        for _ in range(warmup):
            trainer.train_step()
            trainer.step += 1
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step()
            trainer.step += 1
        dt = (time.perf_counter() - t0) / steps
        cpu = (time.process_time() - c0) / steps
        ips = cfg.batch / dt
        print(f"training: {ips:.1f} images/s wall ({1000 * dt:.0f} ms/step of {cfg.batch}; "
              f"R1 every {cfg.r1_interval}, PL {'every ' + str(cfg.pl_interval) if cfg.pl_weight else 'off'}, "
              f"aug {list(cfg.augment.policy) or 'off'})")  # fmt: skip
        print(f"          {cfg.batch / cpu:.1f} images per CPU-second ({torch.get_num_threads()} threads; on a shared "
              "machine wall time includes other processes' load, CPU time does not)")  # fmt: skip
        z = torch.randn(16, trainer.G.z_dim)
        with torch.inference_mode():
            trainer.G_ema(z, noise_mode="const")
            t0 = time.perf_counter()
            trainer.G_ema(z, noise_mode="const")
            g_ms = 1000 * (time.perf_counter() - t0) / 16
        print(f"G_ema inference at {cfg.resolution}²: {g_ms:.2f} ms/image (batch 16)")
        unique = min(len(trainer.train_set), cfg.steps * cfg.batch)
        total = cfg.steps * dt + unique * data_s
        print(f"projected: {cfg.steps} steps ({cfg.steps * cfg.batch / 1000:.0f} kimg) ≈ {total / 60:.0f} min "
              f"(+ metric evaluations, checkpoints)")  # fmt: skip


def bench_run(run_dir: Path) -> None:
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        print(f"\nmetric history of {run_dir} (KID vs the reference set, G_ema):")
        for line in metrics.read_text().splitlines():
            m = json.loads(line)
            print(f"  step {m['step']:6d}  {m['kimg']:7.1f} kimg  KID {m['kid']:10.4f} ± {m['kid_std']:.4f}")
    ckpts = list(iter_checkpoints(run_dir))
    if not ckpts:
        print(f"no checkpoints in {run_dir}/checkpoints")
        return
    cfg = AlbedoTrainConfig.from_dict(json.loads((run_dir / "albedo_config.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = AlbedoTrainer(cfg, Path(tmp), DistInfo(0, 1, torch.device("cpu"), False))
        ref = trainer._reference()
    from training.evaluation import evaluate_generator

    m = cfg.metric
    size = m.subset_size or max(2, min(m.num_generated, len(ref)) // 2)
    print(f"checkpoints on disk (reference: {len(ref)} maps):")
    for path in ckpts:
        G = load_checkpoint_generator(path)
        kid = evaluate_generator(G, ref, m.num_generated, seed=m.seed, num_subsets=m.num_subsets, subset_size=size)
        print(f"  {path.name}: KID {kid.mean:.4f} ± {kid.std:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "albedo_default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--run", type=Path, help="a run folder (OUT/albedo): print and evaluate its metric")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if not args.skip_training:
        raw = load_config(args.config, args.overrides).get("albedo", {})
        cfg = AlbedoTrainConfig.from_dict(raw)
        print(f"config {args.config.name}: {cfg.resolution}², batch {cfg.batch}, G {cfg.G.synthesis.channel_base}/"
              f"{cfg.G.synthesis.channel_max} z/w {cfg.G.z_dim}/{cfg.G.w_dim} mapping {cfg.G.mapping.num_layers}, "
              f"D {cfg.D.channel_base}/{cfg.D.channel_max}")  # fmt: skip
        bench_training(cfg, args.steps, args.warmup)
    if args.run:
        bench_run(args.run)


if __name__ == "__main__":
    main()
