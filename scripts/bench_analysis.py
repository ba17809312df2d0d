"""Benchmark of the analysis app at scale: 5 seeds × 16384 features, d_in = 576 by default.

Writes real contract-v1 run folders into a temporary folder, then runs the analysis app on them
in this process (10 seed pairs, decoder and encoder matching, live-only, reappearance, overlap,
subspaces, report and figures; the random baseline is off unless --baseline-samples is given,
since each sample costs two more matchings) and reports wall time and peak memory against one
float32 n² similarity matrix (1 GiB at 16384). Peak memory is sampled twice a second as the summed
proportional set size (PSS) of this process and its children (the decoder solve runs in a worker
process on a matrix in shared memory, which RSS would count twice). Targets at 16384: < 3 min,
peak < 3 matrices.

    python scripts/bench_analysis.py                             # 5 × 16384, Hungarian
    python scripts/bench_analysis.py --n-features 32768          # 5 × 32768, Hungarian
    python scripts/bench_analysis.py --n-features 65536 --matching argmax
    python scripts/bench_analysis.py --compare-solvers           # lapjv vs scipy, one matrix

Dictionaries are "trained-like": each seed keeps 70% of a shared dictionary (permuted, with
noise) and draws 30% fresh (`--kind random` draws all fresh: the hardest case for the solver).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from safetensors.numpy import save_file

from saeseeds.analysis.app import run_analysis
from saeseeds.analysis.config import AnalyzeConfig


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: ppid
                found.append(int(entry.name))
    return found


class MemorySampler(threading.Thread):
    """Peak summed PSS (GiB) of this process and its direct children, sampled every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_gib = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            pids = [os.getpid()] + _children(os.getpid())
            self.peak_gib = max(self.peak_gib, sum(_pss_kib(pid) for pid in pids) / 2**20)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_gib


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def seed_dictionary(
    shared: np.ndarray, seed: int, kind: str, rng_seed: int = 0
) -> np.ndarray:  # [n_features, d_in] float32
    rng = np.random.default_rng([rng_seed, seed])
    n_features, d_in = shared.shape
    fresh = rng.standard_normal((n_features, d_in), dtype=np.float32)
    if kind == "random":
        return unit(fresh)
    noise = rng.standard_normal((n_features, d_in), dtype=np.float32) * (0.3 / np.sqrt(d_in))
    dictionary = shared[rng.permutation(n_features)] + noise
    new = rng.random(n_features) < 0.3
    dictionary[new] = fresh[new]
    return unit(dictionary).astype(np.float32)


def write_runs(root: Path, n_seeds: int, n_features: int, d_in: int, kind: str) -> Path:
    sweep = root / "multirun" / "bench"
    shared = unit(np.random.default_rng(0).standard_normal((n_features, d_in), dtype=np.float32))
    for seed in range(1, n_seeds + 1):
        folder = sweep / f"sae.n_features={n_features},seed={seed}"
        folder.mkdir(parents=True)
        decoder = seed_dictionary(shared, seed, kind)
        # A trained encoder is close to, not equal to, the decoder's transpose.
        encoder = unit(decoder + seed_dictionary(shared, seed + 100, "random") * 0.2).T
        save_file(
            {
                "W_enc": np.ascontiguousarray(encoder, dtype=np.float32),
                "b_enc": np.zeros(n_features, np.float32),
                "W_dec": decoder,
                "b_dec": np.zeros(d_in, np.float32),
            },
            str(folder / "sae_weights.safetensors"),
        )
        fire_count = np.random.default_rng(seed).integers(1, 1000, n_features)
        save_file(
            {"fire_count": fire_count, "activation_sum": fire_count.astype(np.float32)},
            str(folder / "feature_stats.safetensors"),
            metadata={"n_tokens": "100000"},
        )
        cfg = {
            "contract_version": 1,
            "architecture": "topk",
            "d_in": d_in,
            "n_features": n_features,
            "k": 32,
            "model_name": "bench",
            "hook_name": "bench",
            "dtype": "float32",
            "normalization": {"method": "none"},
            "seed": seed,
            "data": "bench",
        }
        (folder / "cfg.json").write_text(json.dumps(cfg))
        # The completion record that names the run's condition (contract.md, environment.json).
        config = {"sae": {"n_features": n_features, "k": 32}, "data": {"name": "bench"}}
        environment = {"config": {**config, "seed": seed}}
        (folder / "environment.json").write_text(json.dumps(environment))
        (folder / "COMPLETE").write_text("")
    return sweep


def compare_solvers(n_features: int, d_in: int, kind: str) -> None:
    """Each solver in a fresh process, so that its peak memory is its own."""
    for solver in ("lapjv", "scipy"):
        code = (
            "import resource, time, numpy as np, sys; sys.path.insert(0, 'scripts');"
            "from bench_analysis import seed_dictionary, unit;"
            "from saeseeds.analysis.similarity import cosine_similarity;"
            "from saeseeds.analysis.matching import match;"
            f"n, d = {n_features}, {d_in};"
            "shared = unit(np.random.default_rng(0).standard_normal((n, d), dtype=np.float32));"
            f"a, b = seed_dictionary(shared, 1, '{kind}'), seed_dictionary(shared, 2, '{kind}');"
            "c = cosine_similarity(a, b); del a, b;"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20;"
            "start = time.perf_counter();"
            f"m = match(c, solver='{solver}');"
            "took = time.perf_counter() - start;"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20;"
            f"print(f'{solver:6s} {kind}: {{took:6.1f}} s, total {{m.total:.4f}}, "
            "peak RSS {peak:.2f} GiB (+{peak - before:.2f} over the matrix)')"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-features", type=int, default=16384)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--kind", choices=["trained-like", "random"], default="trained-like")
    parser.add_argument("--solver", choices=["lapjv", "scipy"], default="lapjv")
    parser.add_argument("--matching", choices=["auto", "hungarian", "argmax"], default="auto")
    parser.add_argument("--baseline-samples", type=int, default=0)
    parser.add_argument("--compare-solvers", action="store_true")
    args = parser.parse_args()
    if args.compare_solvers:
        compare_solvers(args.n_features, args.d_in, args.kind)
        return

    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as temporary:
        root = Path(temporary)
        start = time.perf_counter()
        sweep = write_runs(root, args.seeds, args.n_features, args.d_in, args.kind)
        print(f"wrote {args.seeds} runs in {time.perf_counter() - start:.1f} s")
        cfg = OmegaConf.structured(AnalyzeConfig)
        cfg.sweep_dir = str(sweep)
        cfg.logger.enabled = False
        cfg.solver = args.solver
        cfg.matching = args.matching
        cfg.metrics.baseline = args.baseline_samples > 0
        cfg.baseline.n_samples = max(args.baseline_samples, 1)
        load_before = os.getloadavg()
        rss_before = peak_rss_gib()
        sampler = MemorySampler()
        sampler.start()
        start = time.perf_counter()
        outcome = run_analysis(cfg, root / "report")
        wall = time.perf_counter() - start
        peak_pss = sampler.stop()
        load_after = os.getloadavg()

    matrix_gib = args.n_features**2 * 4 / 2**30
    peak = peak_rss_gib()
    timings = outcome.summary["timings"]
    (group,) = outcome.summary["groups"].values()
    matching = group["matching"]["mode"]
    compared = "decoder + encoder" if matching == "hungarian" else "decoder best partners"
    print(
        f"{args.seeds} seeds × {args.n_features} features (d_in={args.d_in}, {args.kind}), "
        f"{len(group['pairs'])} pairs, matching={matching} ({compared}), solver={args.solver}, "
        f"device={timings['device']}, CPU cores={os.cpu_count()}"
    )
    print(f"wall time: {wall:.1f} s (target at 16384: < 180 s)")
    print(
        "  of which "
        + ", ".join(
            f"{name.removesuffix('_s')} {group['timings'][name]:.1f} s"
            for name in ("similarity_s", "solver_s", "best_match_s")
            if name in group["timings"]
        )
        + f"; report {timings['report_s']:.1f} s"
    )
    print(
        f"peak memory (summed PSS, this process + worker): {peak_pss:.2f} GiB = "
        f"{peak_pss / matrix_gib:.2f} × one float32 {args.n_features}² matrix "
        f"({matrix_gib:.2f} GiB; target < 3×); peak RSS of this process {peak:.2f} GiB, "
        f"{rss_before:.2f} GiB before the analysis"
    )
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    statistic = group["matching"]["headline_statistic"]
    print(f"{statistic} {group['statistics'][statistic]['value']:.3f}")


if __name__ == "__main__":
    main()
