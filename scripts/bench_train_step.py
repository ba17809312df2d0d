"""Tokens per second of one full SAE training step (forward, AuxK, backward, decoder-gradient
projection, clipping, Adam, renormalisation) on this machine: the fused Top-K forward
(``saeseeds.sae.fused_topk``) vs plain autograd, each with the decoder picked by size (auto),
forced sparse and forced dense (``sae.sparse_decoder``); 30% of latents dead, so AuxK runs.

    python scripts/bench_train_step.py                      # the issue's size: 576 x 16384, k=32
    python scripts/bench_train_step.py --n-features 4096 --batch-size 1024 --device cuda
    python scripts/bench_train_step.py --architecture batchtopk   # any registered architecture

The variants (fused/plain, auto/sparse/dense decoder) are Top-K's; other architectures are timed
as they are. ``scripts/bench_peers.py`` compares with sparsify and SAELens.

The variants' steps are timed round-robin in one process, so load from other jobs on a shared
machine falls on all of them alike; speeds (tokens/s from the median step) are reported with
their ratios. On a loaded machine, ``--threads 1`` avoids thread-barrier stalls that swamp
small sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeseeds.sae import REGISTRY, architecture

ENCODERS = {"fused": True, "plain": False}
DECODERS = {"auto": None, "sparse": True, "dense": False}  # sae.sparse_decoder


def train_step(sae, optimizer, x, dead_mask, autocast_dtype):
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = sae(x, dead_mask)
        loss = sum(output.losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sae.before_optimizer_step()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    sae.after_optimizer_step()


def build(args, fused_encoder: bool, sparse_decoder: bool):
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    config_class = architecture(args.architecture).Config
    fields = config_class.__dataclass_fields__
    options = {"n_features": args.n_features, "k": args.k, "sparse_decoder": sparse_decoder}
    config = config_class(**{name: value for name, value in options.items() if name in fields})
    sae = architecture(args.architecture)(args.d_in, config)
    if hasattr(sae, "fused_encoder"):
        sae.fused_encoder = fused_encoder
    sae.initialize(torch.randn(4096, args.d_in, generator=generator), generator)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, args.d_in, generator=generator).to(device)
    dead_mask = torch.zeros(args.n_features, dtype=torch.bool, device=device)
    dead_mask[: int(args.n_features * 0.3)] = True  # AuxK active, as in a run with dead latents
    return sae, optimizer, x, dead_mask


def timed_step(setup, autocast_dtype, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_step(*setup, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(args, autocast_dtype) -> dict[tuple[str, str], list[float]]:
    """Seconds of each step per (encoder, decoder), one step of each variant in turn."""
    device = torch.device(args.device)
    encoders, decoders = (ENCODERS, DECODERS) if args.architecture == "topk" else ({"-": True},) * 2
    setups = {
        (encoder, decoder): build(args, fused, sparse)
        for encoder, fused in encoders.items()
        for decoder, sparse in decoders.items()
    }
    for setup in setups.values():
        for _ in range(args.warmup):
            train_step(*setup, autocast_dtype)
    seconds = {variant: [] for variant in setups}
    for _ in range(args.steps):
        for variant, setup in setups.items():
            seconds[variant].append(timed_step(setup, autocast_dtype, device))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="topk", choices=sorted(REGISTRY))
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--n-features", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{args.architecture}: d_in={args.d_in} n_features={args.n_features} k={args.k} "
        f"batch={args.batch_size} "
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    precisions = [("fp32", None)] + ([("bf16-autocast", torch.bfloat16)] if args.bf16 else [])
    results = {}
    for label, dtype in precisions:
        for (encoder, decoder), seconds in measure(args, dtype).items():
            # The median step shrugs off the spikes other jobs cause; the best shows the ceiling.
            speed, best = (
                args.batch_size / statistics.median(seconds),
                args.batch_size / min(seconds),
            )
            results[label, encoder, decoder] = speed
            print(
                f"{label} {encoder} encoder, {decoder} decoder: {speed:>10,.0f} tokens/s "
                f"(best step {best:,.0f})"
            )
    if args.architecture != "topk":
        return
    for label, _ in precisions:
        for decoder in DECODERS:
            ratio = results[label, "fused", decoder] / results[label, "plain", decoder]
            print(f"{label}: fused/plain encoder speed ratio ({decoder} decoder) {ratio:.2f}x")
        for encoder in ENCODERS:
            ratio = results[label, encoder, "sparse"] / results[label, encoder, "dense"]
            print(f"{label}: sparse/dense decoder speed ratio ({encoder} encoder) {ratio:.2f}x")
            ratio = results[label, encoder, "auto"] / max(
                results[label, encoder, "sparse"], results[label, encoder, "dense"]
            )
            print(f"{label}: auto vs the faster forced decoder ({encoder} encoder) {ratio:.2f}x")
        ratio = results[label, "fused", "auto"] / results[label, "plain", "dense"]
        print(f"{label}: fused+auto vs plain+dense speed ratio {ratio:.2f}x")
    if args.bf16:
        ratio = results["bf16-autocast", "fused", "auto"] / results["fp32", "fused", "auto"]
        print(f"bf16/fp32 speed ratio (fused, auto decoder): {ratio:.2f}x")


if __name__ == "__main__":
    main()
