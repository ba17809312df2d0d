"""Tokens per second of one full SAE training step (forward, AuxK, backward, decoder-gradient
projection, clipping, Adam, renormalisation), sparse vs dense decoder, on this machine.

    python scripts/bench_train_step.py                      # the issue's size: 576 x 16384, k=32
    python scripts/bench_train_step.py --n-features 4096 --batch-size 1024 --device cuda

Speeds are reported as tokens/s and as the sparse/dense ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from saeseeds.sae import AUXK_ALPHA, TopKSAE


def train_step(sae, optimizer, x, dead_mask, autocast_dtype):
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = sae(x, dead_mask)
        loss = output.mse + AUXK_ALPHA * output.aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_parallel_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    sae.normalize_decoder_rows()


def measure(args, sparse: bool, autocast_dtype) -> float:
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    sae = TopKSAE(args.d_in, args.n_features, args.k, sparse_decoder=sparse)
    sae.initialize(torch.randn(4096, args.d_in, generator=generator), generator)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, args.d_in, generator=generator).to(device)
    dead_mask = torch.zeros(args.n_features, dtype=torch.bool, device=device)
    dead_mask[: args.n_features // 10] = True  # AuxK active, as in a real run with dead latents
    for _ in range(args.warmup):
        train_step(sae, optimizer, x, dead_mask, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        train_step(sae, optimizer, x, dead_mask, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--n-features", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    print(
        f"d_in={args.d_in} n_features={args.n_features} k={args.k} batch={args.batch_size} "
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    precisions = [("fp32", None)] + ([("bf16-autocast", torch.bfloat16)] if args.bf16 else [])
    results = {}
    for label, dtype in precisions:
        for sparse in (True, False):
            name = f"{label} {'sparse' if sparse else 'dense '} decoder"
            results[name] = measure(args, sparse, dtype)
            print(f"{name}: {results[name]:>12,.0f} tokens/s")
    for label, _ in precisions:
        ratio = results[f"{label} sparse decoder"] / results[f"{label} dense  decoder"]
        print(f"{label}: sparse/dense speed ratio {ratio:.2f}x")
    if args.bf16:
        ratio = results["bf16-autocast sparse decoder"] / results["fp32 sparse decoder"]
        print(f"bf16/fp32 speed ratio (sparse): {ratio:.2f}x")


if __name__ == "__main__":
    main()
