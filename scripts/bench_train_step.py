"""Tokens per second of one full SAE training step (forward, AuxK, backward, decoder-gradient
projection, clipping, Adam, renormalisation) on this machine: the fused Top-K forward
(``saeseeds.sae.fused_topk``) vs plain autograd, each with the decoder picked by size (auto),
forced sparse and forced dense (``sae.sparse_decoder``), in float32 and under bf16 autocast;
30% of latents dead, so AuxK runs.

    python scripts/bench_train_step.py                      # the issue's size: 576 x 16384, k=32
    python scripts/bench_train_step.py --n-features 512 4096 16384 --encoders fused \\
        --decoders auto --precisions fp32 bf16 --steps 15   # where bf16 autocast pays
    python scripts/bench_train_step.py --encoders fused --decoders auto --profile
    python scripts/bench_train_step.py --encoders fused --decoders auto --phases --steps 10
    python scripts/bench_train_step.py --architecture batchtopk   # any registered architecture

The variants (fused/plain/auto encoder, auto/sparse/dense decoder) are Top-K's; other
architectures are timed as they are (auto). ``scripts/bench_peers.py`` compares with sparsify and
SAELens.

All variants' steps (precisions included) are timed round-robin in one process, so load from
other jobs on a shared machine falls on all of them alike; speeds (tokens/s from the median
step) are reported with their ratios. On a loaded machine, ``--threads 1`` avoids
thread-barrier stalls that swamp small sizes. ``--phases`` then times the first variant's step
phase by phase (forward, backward, projection and clipping, Adam, renormalisation), and
``--profile`` shows where it goes operator by operator (torch.profiler, by self time; the
profiler's own cost inflates small operators).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeseeds.sae import REGISTRY, architecture
from saeseeds.training.module import ADAM_OPTIONS

# auto: what a job does (the fused function, except under bf16 autocast on a CUDA GPU up to
# 16,384 latents: plain autograd; saeseeds.sae.fused_topk.fused_pays).
ENCODERS = {"fused": True, "plain": False, "auto": None}
DECODERS = {"auto": None, "sparse": True, "dense": False}  # sae.sparse_decoder
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # autocast dtype


def train_step(sae, optimizer, x, dead_mask, autocast_dtype, phases=None):
    """One step; ``phases`` (a dict), when given, gets each phase's seconds appended."""
    clock = PhaseClock(phases, x.device)
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = sae(x, dead_mask)
        loss = sum(output.losses.values())
    clock.mark("forward (encoder, top-k, AuxK selection, decode, losses)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.mark("backward")
    sae.before_optimizer_step()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    clock.mark("decoder-gradient projection and clipping")
    optimizer.step()
    clock.mark("Adam")
    sae.after_optimizer_step()
    clock.mark("decoder renormalisation")


class PhaseClock:
    """Seconds since the previous mark, appended to ``phases[name]``; a no-op without phases."""

    def __init__(self, phases: dict | None, device: torch.device):
        self.phases, self.device = phases, device
        self.last = time.perf_counter() if phases is not None else 0.0

    def mark(self, name: str) -> None:
        if self.phases is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.phases.setdefault(name, []).append(now - self.last)
        self.last = now


def build(args, n_features: int, fused_encoder: bool | None, sparse_decoder: bool | None):
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    config_class = architecture(args.architecture).Config
    fields = config_class.__dataclass_fields__
    options = {"n_features": n_features, "k": args.k, "sparse_decoder": sparse_decoder}
    config = config_class(**{name: value for name, value in options.items() if name in fields})
    sae = architecture(args.architecture)(args.d_in, config)
    if hasattr(sae, "fused_encoder"):
        sae.fused_encoder = fused_encoder
    sae.initialize(torch.randn(4096, args.d_in, generator=generator), generator)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, **ADAM_OPTIONS)
    x = torch.randn(args.batch_size, args.d_in, generator=generator).to(device)
    dead_mask = torch.zeros(n_features, dtype=torch.bool, device=device)
    dead_mask[: int(n_features * 0.3)] = True  # AuxK active, as in a run with dead latents
    return sae, optimizer, x, dead_mask


def timed_step(setup, autocast_dtype, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_step(*setup, autocast_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def variants(args) -> list[tuple[str, str, str]]:
    if args.architecture != "topk":
        return [(precision, "-", "-") for precision in args.precisions]
    return [
        (precision, encoder, decoder)
        for precision in args.precisions
        for encoder in args.encoders
        for decoder in args.decoders
    ]


def measure(args, n_features: int) -> dict[tuple[str, str, str], list[float]]:
    """Seconds of each step per (precision, encoder, decoder), one step of each in turn."""
    device = torch.device(args.device)
    setups = {
        variant: build(args, n_features, ENCODERS.get(variant[1]), DECODERS.get(variant[2]))
        for variant in variants(args)
    }
    for (precision, *_), setup in setups.items():
        for _ in range(args.warmup):
            train_step(*setup, PRECISIONS[precision])
    seconds = {variant: [] for variant in setups}
    for _ in range(args.steps):
        for variant, setup in setups.items():
            seconds[variant].append(timed_step(setup, PRECISIONS[variant[0]], device))
    if args.phases:
        phases(args, next(iter(setups.items())))
    if args.profile:
        profile(args, next(iter(setups.items())))
    return seconds


def phases(args, variant_and_setup) -> None:
    """Where one variant's step goes, timed phase by phase (no profiler overhead)."""
    (precision, encoder, decoder), setup = variant_and_setup
    times: dict[str, list[float]] = {}
    for _ in range(args.steps):
        train_step(*setup, PRECISIONS[precision], phases=times)
    print(f"phases of {precision} {encoder} encoder, {decoder} decoder, {args.steps} steps:")
    for name, seconds in times.items():
        print(
            f"  {name:58s} best {min(seconds) * 1e3:8.1f} ms, "
            f"median {statistics.median(seconds) * 1e3:8.1f} ms"
        )


def profile(args, variant_and_setup) -> None:
    """Where one variant's step goes: operators by self time over a few steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    (precision, encoder, decoder), setup = variant_and_setup
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with torch_profile(activities=activities) as profiler:
        for _ in range(args.profile_steps):
            train_step(*setup, PRECISIONS[precision])
    sort_by = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(
        f"profile of {precision} {encoder} encoder, {decoder} decoder, {args.profile_steps} steps:"
    )
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows))


def report(args, n_features: int, seconds: dict) -> None:
    # The median step shrugs off the spikes other jobs cause; the best shows the ceiling.
    speeds = {v: args.batch_size / statistics.median(s) for v, s in seconds.items()}
    for (precision, encoder, decoder), speed in speeds.items():
        best = args.batch_size / min(seconds[precision, encoder, decoder])
        print(
            f"n={n_features} {precision} {encoder} encoder, {decoder} decoder: "
            f"{speed:>10,.0f} tokens/s (best step {best:,.0f})"
        )

    def ratio(label: str, a: tuple, b: tuple) -> None:
        if a in speeds and b in speeds:
            print(f"n={n_features} {label}: {speeds[a] / speeds[b]:.2f}x")

    for precision in args.precisions:
        for decoder in DECODERS:
            ratio(
                f"{precision} fused/plain ({decoder} decoder)",
                (precision, "fused", decoder),
                (precision, "plain", decoder),
            )
        for encoder in ENCODERS:
            ratio(
                f"{precision} sparse/dense decoder ({encoder} encoder)",
                (precision, encoder, "sparse"),
                (precision, encoder, "dense"),
            )
        ratio(
            f"{precision} fused+auto vs plain+dense",
            (precision, "fused", "auto"),
            (precision, "plain", "dense"),
        )
    for encoder in ENCODERS:
        for decoder in DECODERS:
            ratio(
                f"bf16/fp32 ({encoder} encoder, {decoder} decoder)",
                ("bf16", encoder, decoder),
                ("fp32", encoder, decoder),
            )
    ratio("bf16/fp32", ("bf16", "-", "-"), ("fp32", "-", "-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="topk", choices=sorted(REGISTRY))
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--n-features", type=int, nargs="+", default=[16384])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoders", nargs="+", default=["fused", "plain"], choices=ENCODERS)
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=PRECISIONS)
    parser.add_argument("--bf16", action="store_true", help="same as --precisions fp32 bf16")
    parser.add_argument("--phases", action="store_true", help="time the first variant's phases")
    parser.add_argument("--profile", action="store_true", help="profile the first variant")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.bf16:
        args.precisions = ["fp32", "bf16"]
    if args.threads:
        torch.set_num_threads(args.threads)
    capability = torch.backends.cpu.get_cpu_capability() if args.device == "cpu" else args.device
    print(
        f"{args.architecture}: d_in={args.d_in} k={args.k} batch={args.batch_size} "
        f"device={args.device} ({capability}) threads={torch.get_num_threads()} "
        f"torch={torch.__version__}"
    )
    for n_features in args.n_features:
        report(args, n_features, measure(args, n_features))


if __name__ == "__main__":
    main()
