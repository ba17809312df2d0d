"""The Adam update of a Top-K SAE's training step, as saeseeds runs it (``foreach``, all of an
SAE's tensors at once) against torch's CPU default (one tensor at a time) and torch's fused CPU
Adam: milliseconds per update, and whether each gives the same weight bytes as the default.

    python scripts/bench_optimizer.py                          # 576 x 16384, batch 4096
    python scripts/bench_optimizer.py --n-features 4096 16384 --steps 12

Each variant trains its own copy of the same SAE on the same batch (30% of latents dead, so AuxK
runs); their steps are taken round-robin in one process, so load from other work falls on all of
them alike. Each step is ``scripts/bench_train_step.py``'s, timed phase by phase: the Adam
phase (best and median) and the whole step's median are printed. The bytes are compared after
the last step: ``foreach`` runs the default's arithmetic element by element, fused Adam rounds
differently.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_train_step import train_step  # the step as timed there, phase by phase

from saeseeds.sae.topk import TopKConfig, TopKSAE
from saeseeds.training.module import ADAM_OPTIONS

VARIANTS = {
    "saeseeds (foreach)": ADAM_OPTIONS,
    "torch CPU default": {**ADAM_OPTIONS, "foreach": False},
    "fused": {**ADAM_OPTIONS, "foreach": None, "fused": True},
}


def build(args, n_features: int, options: dict):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.d_in, generator=generator)
    dead = torch.zeros(n_features, dtype=torch.bool)
    dead[: int(n_features * 0.3)] = True
    sae = TopKSAE(args.d_in, TopKConfig(n_features=n_features, k=args.k))
    sae.initialize(x, torch.Generator().manual_seed(1))
    return sae, torch.optim.Adam(sae.parameters(), lr=sae.default_lr(), **options), x, dead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--n-features", type=int, nargs="+", default=[16384])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    for n_features in args.n_features:
        built = {name: build(args, n_features, options) for name, options in VARIANTS.items()}
        phases = {name: {} for name in built}
        for round_ in range(args.warmup + args.steps):
            for name, setup in built.items():
                train_step(*setup, None, phases[name] if round_ >= args.warmup else None)
        reference = built["torch CPU default"][0].state_dict()
        for name, timed in phases.items():
            update = timed["Adam"]
            whole = [sum(parts) for parts in zip(*timed.values(), strict=True)]
            state = built[name][0].state_dict()
            same = all(torch.equal(reference[key], state[key]) for key in reference)
            print(
                f"n={n_features} {name:20s} update best {min(update) * 1e3:6.1f} ms, "
                f"median {statistics.median(update) * 1e3:6.1f} ms; whole step median "
                f"{statistics.median(whole) * 1e3:6.0f} ms; "
                f"{'same bytes as the default' if same else 'other bytes than the default'}"
            )


if __name__ == "__main__":
    main()
