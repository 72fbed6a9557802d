"""StyleGAN2 speed on this machine: generator ms/image (256², 512²) and training images/s of one G+D step.

python benchmarks/stylegan2_speed.py [--channel-base 16384] [--resolutions 256 512] [--batch-sizes 1 4]
                                     [--onnx] [--threads N]

Widths default to channel_base 16384 / channel_max 512 (NVlabs 'paper256', half of the FFHQ-1024 widths), the
configuration recommended here for UV albedo maps at 256–512 px; pass --channel-base 32768 for FFHQ widths.
Noise is 'const' for inference. Both modulated-convolution forms are timed (fused = grouped conv,
non-fused = the ONNX-exportable form). With --onnx, the non-fused synthesis is also exported and timed in
onnxruntime (CPU EP), as the service would run it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import best_seconds

from models.stylegan2 import Discriminator, Generator


def best_s(fn, repeat: int) -> float:
    return best_seconds(fn, repeat, warmup=True)


def bench_inference(args: argparse.Namespace) -> None:
    for res in args.resolutions:
        torch.manual_seed(0)
        G = Generator(512, 0, 512, res, 3, {"num_layers": 8}, {"channel_base": args.channel_base}).eval()
        n_params = sum(p.numel() for p in G.parameters()) / 1e6
        widths = {r: getattr(G.synthesis, f"b{r}").conv1.weight.shape[0] for r in G.synthesis.block_resolutions}
        print(f"\nG {res}²: {n_params:.1f} M parameters, widths {widths}, num_ws {G.num_ws}")
        for batch in args.batch_sizes:
            z = torch.randn(batch, 512)
            for fused in (True, False):
                with torch.inference_mode():
                    s = best_s(lambda G=G, z=z, fused=fused: G(z, noise_mode="const", fused_modconv=fused), args.repeat)
                form = "fused    " if fused else "non-fused"
                print(f"  torch  {form} batch {batch}: {1000 * s / batch:8.1f} ms/image ({1000 * s:.0f} ms/batch)")
        if args.onnx:
            bench_onnx(G, args)


def bench_onnx(G: Generator, args: argparse.Namespace) -> None:
    import onnxruntime as ort

    class Synthesis(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.synthesis = G.synthesis

        def forward(self, ws: torch.Tensor) -> torch.Tensor:
            return self.synthesis(ws, noise_mode="const", fused_modconv=False)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthesis.onnx"
        ws = torch.randn(2, G.num_ws, G.w_dim)
        torch.onnx.export(Synthesis().eval(), (ws,), path, dynamo=True, opset_version=18, input_names=["ws"],
                          output_names=["img"], dynamic_shapes={"ws": {0: torch.export.Dim("batch")}})  # fmt: skip
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for batch in args.batch_sizes:
            feed = {"ws": torch.randn(batch, G.num_ws, G.w_dim).numpy()}
            s = best_s(lambda feed=feed: session.run(None, feed), args.repeat)
            print(f"  onnxruntime synthesis batch {batch}: {1000 * s / batch:8.1f} ms/image")


def bench_training(args: argparse.Namespace) -> None:
    res, batch = args.train_resolution, args.train_batch
    synthesis = {"channel_base": args.train_channel_base, "channel_max": args.train_channel_max}
    print(f"\ntraining step: {res}² images, batch {batch}, z/w 512, 8 mapping layers, {synthesis}, D 'resnet' same "
          "widths, non-saturating loss, Adam; one step = D update + G update (no R1/path-length/EMA)")  # fmt: skip
    for fused in (True, False):
        s = time_training_step(args, synthesis, fused)
        form = "fused    " if fused else "non-fused"
        print(f"  {form}: {batch / s:6.1f} images/s ({1000 * s:.0f} ms/step)")


def time_training_step(args: argparse.Namespace, synthesis: dict[str, int], fused: bool) -> float:
    res, batch = args.train_resolution, args.train_batch
    torch.manual_seed(0)
    G = Generator(512, 0, 512, res, 3, {"num_layers": 8}, synthesis).train().set_fused_modconv(fused)
    D = Discriminator(0, res, 3, channel_base=args.train_channel_base, channel_max=args.train_channel_max)
    opt_g = torch.optim.Adam(G.parameters(), lr=2.5e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2.5e-3, betas=(0.0, 0.99))
    reals = torch.rand(batch, 3, res, res) * 2 - 1
    rng = torch.Generator().manual_seed(0)

    def step() -> None:
        z = torch.randn(batch, 512, generator=rng)
        fake = G(z, update_emas=True, noise_mode="random", generator=rng)
        d_loss = F.softplus(D(fake.detach())).mean() + F.softplus(-D(reals)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-D(G(z, noise_mode="random", generator=rng))).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return best_s(step, args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channel-base", type=int, default=16384)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train-resolution", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-channel-base", type=int, default=4096)
    parser.add_argument("--train-channel-max", type=int, default=256)
    parser.add_argument("--onnx", action="store_true", help="also time the exported synthesis in onnxruntime")
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = default)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"generator config: z_dim 512, w_dim 512, 8 mapping layers, channel_base {args.channel_base}, "
          "channel_max 512, 'skip', noise 'const', float32")  # fmt: skip
    bench_inference(args)
    if not args.skip_training:
        bench_training(args)


if __name__ == "__main__":
    main()
