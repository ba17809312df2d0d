"""Tokens per second of one Top-K SAE training step in saeseeds, EleutherAI sparsify and SAELens,
side by side, with the dense encoder forward (x @ W_encᵀ + b, the least any Top-K SAE does) as
the bound.

    python scripts/bench_peers.py --setup        # build the peers' virtual environments once
    python scripts/bench_peers.py                # n_features 4096 and 16384, AuxK on and off
    python scripts/bench_peers.py --n-features 512 --batch-size 1024 --rounds 10 --threads 1
    python scripts/bench_peers.py --frameworks saeseeds saeseeds-bf16 sparsify bound \
        --threads 1 --clock cpu               # on a machine shared with other jobs

Each framework runs in its own process (the peers in their own virtual environments under
~/.cache/saeseeds/, since SAELens pins transformer-lens 3.x), driven the way its own trainer
drives it, with the same shapes, the same inputs and the same dead-latent mask, and Adam for all:

- saeseeds: forward with AuxK, backward, decoder-gradient projection, clipping at 1, Adam,
  decoder renormalisation, dead-latent bookkeeping (``saeseeds.training.module``).
- sparsify (``Trainer``): decoder renormalisation before the forward, fvu + α·AuxK, backward,
  decoder-gradient projection, Adam (no clipping), fired-latent bookkeeping. Its defaults differ:
  sign-SGD (``optimizer=signum``) with AuxK off (``auxk_alpha=0``); here Adam and α = 1/32. Its
  fused encoder's backward ignores the AuxK gradient, so AuxK never trains the encoder.
- SAELens (``SAETrainer``): ``training_forward_pass`` (dense [batch, n] activations; AuxK via a
  dense masked copy), fired-latent bookkeeping, backward, clipping at 1, Adam. It does no
  decoder-gradient projection or renormalisation and rescales activations by decoder norms
  instead (its default). Its ``use_sparse_activations`` option fails on CPU, so it is left off.

``saeseeds-bf16`` (not run by default) is the saeseeds step under bf16 autocast.

On a GPU (``--device cuda``; each step is timed to the end of its kernels), sparsify runs its
forward under bf16 autocast by itself (its ``forward`` is decorated so on CUDA), so compare it
with ``saeseeds-bf16`` there. ``--peers-here`` imports the peers in this Python instead of their
own venvs, for a machine that cannot build those:

    python scripts/bench_peers.py --device cuda --peers-here \
        --frameworks saeseeds saeseeds-bf16 sparsify bound --n-features 4096 16384 65536 --aux on

Steps are timed round-robin (saeseeds, sparsify, SAELens, bound, repeat), so load from other jobs
falls on all alike; the min and median step give tokens/s. ``--clock cpu`` times each step by its
process's CPU time instead of the wall clock: on a machine shared with other jobs, with
``--threads 1``, it approximates the quiet single-core speed (with more threads it would count
the threads' spin-waits). Learning-rate schedules are left out for all (a scalar update each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TORCH_SPEC = "torch==2.13.0"  # first, so pip does not pull a multi-GB CUDA build
CACHE = Path.home() / ".cache" / "saeseeds"
PEERS = {  # name: (distribution, version, import name, virtual environment)
    "sparsify": ("eai-sparsify", "1.3.3", "sparsify", CACHE / "sparsify-venv"),
    "saelens": (
        "sae-lens",
        "6.54.12",
        "sae_lens",
        Path(os.environ.get("SAESEEDS_SAELENS_VENV", CACHE / "saelens-venv")),
    ),
}
FRAMEWORKS = ("saeseeds", "sparsify", "saelens", "bound")
OURS = ("saeseeds", "saeseeds-bf16")
AUXK_ALPHA = 1.0 / 32.0
PEERS_HERE = "--peers-here" in sys.argv  # the peers from this Python, not their own venvs


# ---- the workers: one process each, reading "step" lines, writing one JSON line per step ----
def shared_inputs(cfg: dict):
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch_size"], cfg["d_in"], generator=generator)
    n = cfg["n_features"]
    dead_mask = torch.zeros(n, dtype=torch.bool)
    dead_mask[torch.randperm(n, generator=generator)[: int(n * cfg["dead_fraction"])]] = True
    return x.to(cfg["device"]), dead_mask.to(cfg["device"])


def saeseeds_step(cfg: dict, x, dead_mask):
    import torch

    from saeseeds.sae.topk import TopKConfig, TopKSAE
    from saeseeds.training.module import ADAM_OPTIONS, update_dead_tracker

    sae = TopKSAE(cfg["d_in"], TopKConfig(n_features=cfg["n_features"], k=cfg["k"]))
    sae.initialize(x.cpu(), torch.Generator().manual_seed(1))
    sae.to(x.device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=sae.default_lr(), **ADAM_OPTIONS)
    tokens_since_fired = torch.zeros(cfg["n_features"], dtype=torch.long, device=x.device)
    mask = dead_mask if cfg["aux"] else None

    def step() -> None:
        output = sae(x, mask)
        loss = sum(output.losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_optimizer_step()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        sae.after_optimizer_step()
        update_dead_tracker(tokens_since_fired, output.latent_indices, output.latent_values, len(x))

    return step


def sparsify_step(cfg: dict, x, dead_mask):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    n = cfg["n_features"]
    sae = SparseCoder(cfg["d_in"], SparseCoderConfig(num_latents=n, k=cfg["k"]))
    sae.to(x.device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / math.sqrt(n / 2**14))
    sae.b_dec.data = x.mean(0)  # its trainer's first-step init
    did_fire = torch.zeros(n, dtype=torch.bool, device=x.device)
    mask = dead_mask if cfg["aux"] else None
    alpha = AUXK_ALPHA if cfg["aux"] else 0.0

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()

    return step


def saelens_step(cfg: dict, x, dead_mask):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    n = cfg["n_features"]
    config = TopKTrainingSAEConfig(d_in=cfg["d_in"], d_sae=n, k=cfg["k"], device=cfg["device"])
    sae = TopKTrainingSAE(config)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / math.sqrt(n / 2**14))
    since_fired = torch.zeros(n, device=x.device)
    act_freq_scores = torch.zeros(n, device=x.device)
    mask = dead_mask if cfg["aux"] else None
    steps = [0]

    def step() -> None:
        sae.train()
        output = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=mask,
                n_training_steps=steps[0],
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            firing = output.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
            act_freq_scores.add_(firing.sum(0))
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        steps[0] += 1

    return step


def bound_step(cfg: dict, x, dead_mask):
    import torch

    generator = torch.Generator().manual_seed(1)
    W_enc = torch.randn(cfg["n_features"], cfg["d_in"], generator=generator).to(x.device)
    b_enc = torch.zeros(cfg["n_features"], device=x.device)
    return lambda: torch.addmm(b_enc, x, W_enc.T)  # [batch, n_features]


def bf16_autocast(builder):
    def build(cfg: dict, x, dead_mask):
        import torch

        step = builder(cfg, x, dead_mask)

        def autocast_step() -> None:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                step()

        return autocast_step

    return build


def versions(framework: str) -> dict:
    import importlib.metadata

    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    if framework in PEERS:
        distribution = PEERS[framework][0]
        found[distribution] = importlib.metadata.version(distribution)
    if framework in OURS:  # its source tree's version where it is not installed
        import saeseeds

        found["saeseeds"] = saeseeds.__version__
    return found


def worker(framework: str, cfg: dict) -> None:
    import torch

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    x, dead_mask = shared_inputs(cfg)
    builders = {
        "saeseeds": saeseeds_step,
        "saeseeds-bf16": bf16_autocast(saeseeds_step),
        "sparsify": sparsify_step,
        "saelens": saelens_step,
        "bound": bound_step,
    }
    step = builders[framework](cfg, x, dead_mask)
    checksum = [float(x.double().sum()), int(dead_mask.nonzero().sum())]
    header = {"versions": versions(framework), "threads": torch.get_num_threads()}
    print(json.dumps({**header, "checksum": checksum}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        started, cpu_started = time.perf_counter(), time.process_time()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


# ---- the orchestrator ----
def venv_python(framework: str) -> Path:
    if framework not in PEERS or PEERS_HERE:
        return Path(sys.executable)
    return PEERS[framework][3] / "bin" / "python"


def has_peer(framework: str) -> bool:
    distribution, version, module, _ = PEERS[framework]
    python = venv_python(framework)
    if not python.is_file():
        return False
    check = (
        f"import importlib.metadata as m, sys, {module}; "
        f"sys.exit(m.version({distribution!r}) != {version!r})"
    )
    return subprocess.run([python, "-c", check], capture_output=True).returncode == 0


def setup(framework: str) -> None:
    """Build a peer's virtual environment if it lacks the pinned version: torch first."""
    if framework not in PEERS or has_peer(framework):
        return
    distribution, version, _, venv = PEERS[framework]
    if PEERS_HERE:
        sys.exit(f"--peers-here: this Python lacks {distribution}=={version}; pip install it.")
    print(f"building {venv} ({TORCH_SPEC}, {distribution}=={version}) ...", flush=True)
    if not venv_python(framework).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for spec in (TORCH_SPEC, f"{distribution}=={version}"):
        pip = [venv_python(framework), "-m", "pip", "install", "--quiet", spec]
        if subprocess.run(pip).returncode != 0:
            sys.exit(f"pip install {spec} into {venv} failed; see the output above.")


class Worker:
    def __init__(self, framework: str, cfg: dict):
        command = [str(venv_python(framework)), __file__, "--worker", framework, json.dumps(cfg)]
        self.framework = framework
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.header = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        sys.exit(f"the {self.framework} worker exited; see its error above.")

    def step(self, clock: str) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()[clock]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def measure(frameworks: list[str], cfg: dict, rounds: int, warmup: int, clock: str) -> dict:
    """Seconds per step of each framework, one step of each in turn."""
    workers = [Worker(framework, cfg) for framework in frameworks]
    try:
        checksums = {json.dumps(w.header["checksum"]) for w in workers}
        if len(checksums) != 1:
            sys.exit(f"the workers' inputs differ: {checksums}")
        for _ in range(warmup):
            for w in workers:
                w.step(clock)
        seconds = {w.framework: [] for w in workers}
        for _ in range(rounds):
            for w in workers:
                seconds[w.framework].append(w.step(clock))
        return {"seconds": seconds, "headers": {w.framework: w.header for w in workers}}
    finally:
        for w in workers:
            w.close()


def report(frameworks: list[str], cfg: dict, result: dict) -> None:
    tokens = cfg["batch_size"]
    speeds = {
        name: (tokens / min(s), tokens / statistics.median(s))
        for name, s in result["seconds"].items()
    }
    aux = f"AuxK on ({cfg['dead_fraction']:.0%} dead)" if cfg["aux"] else "AuxK off"
    print(f"\nn_features={cfg['n_features']}, batch={tokens}, {aux}")
    for name in frameworks:
        best, median = speeds[name]
        print(f"  {name:<13} best {best:>10,.0f} tok/s   median {median:>10,.0f} tok/s")
    for ours in (name for name in OURS if name in speeds):
        ours_best, ours_median = speeds[ours]
        for name in ("sparsify", "saelens"):
            if name in speeds:
                best, median = speeds[name]
                print(
                    f"  {ours} / {name}: {ours_best / best:.2f}x (best), "
                    f"{ours_median / median:.2f}x (median)"
                )
        if "bound" in speeds:
            best, median = speeds["bound"]
            print(
                f"  {ours} / float32 encoder-forward bound: {ours_best / best:.0%} (best), "
                f"{ours_median / median:.0%} (median)"
            )


def saeseeds_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], json.loads(sys.argv[3]))
        return
    # No abbreviations: PEERS_HERE reads the exact --peers-here from sys.argv.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--setup", action="store_true", help="build the peers' venvs and exit")
    parser.add_argument(
        "--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS + OURS[1:]
    )
    parser.add_argument("--n-features", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--aux", choices=["on", "off", "both"], default="both")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dead-fraction", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every framework alike)")
    parser.add_argument(
        "--peers-here",
        action="store_true",
        help="import the peers in this Python (where it has them) rather than their own venvs",
    )
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time per step"
    )
    args = parser.parse_args()
    if args.device != "cpu" and args.clock == "cpu":
        parser.error("--clock cpu times the CPU only; use the wall clock with --device cuda")
    for framework in args.frameworks:
        setup(framework)
    if args.setup:
        return
    print(
        f"saeseeds {saeseeds_commit()}; device {args.device}; "
        f"CPU threads: {args.threads or 'torch default'}; {args.clock} clock"
    )
    printed_versions = False
    for n_features in args.n_features:
        for aux in {"on": [True], "off": [False], "both": [True, False]}[args.aux]:
            cfg = {
                "n_features": n_features,
                "aux": aux,
                "d_in": args.d_in,
                "k": args.k,
                "batch_size": args.batch_size,
                "dead_fraction": args.dead_fraction,
                "threads": args.threads,
                "device": args.device,
            }
            result = measure(args.frameworks, cfg, args.rounds, args.warmup, args.clock)
            if not printed_versions:
                for name, header in result["headers"].items():
                    found = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
                    print(f"  {name}: {found}; {header['threads']} threads")
                printed_versions = True
            report(args.frameworks, cfg, result)


if __name__ == "__main__":
    main()
