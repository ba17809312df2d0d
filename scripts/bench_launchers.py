"""Wall time of one four-job sweep (the mission's shape: seed=1,2 x sae.n_features=128,512) run
two ways on the same cores: jobs side by side (hydra/launcher=joblib, n_jobs=<cores>, threads=1)
and one job at a time on every core (the basic launcher, threads=<cores>).

    python scripts/bench_launchers.py                        # the defaults (SmolLM2), ~25 min
    python scripts/bench_launchers.py trainer.max_epochs=2   # any train.py override, for both
    python scripts/bench_launchers.py --tiny                 # a tiny local model, ~2 min
    python scripts/bench_launchers.py --cores 4 --repeats 3 --output bench.json

A warm-up run builds the activation store (and converts the model) first, so both sweeps read
the same cache and time only what the launcher changes: process start, model load, training and
evaluation. Each sweep writes into a fresh folder; the script checks that both trained the same
SAEs (byte-identical weights) and prints, as JSON, each sweep's wall time and the ratio
one-at-a-time / side-by-side (above 1: parallel jobs are faster). With --repeats the two run in
alternating order and the medians are compared. Load from other processes distorts the figures;
the 1-minute load average is recorded before and after each sweep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saeseeds.io import json_text

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["seed=1,2", "sae.n_features=128,512"]
# --tiny: the tests' tiny Llama on a little of the embedded corpus.
TINY_SWEEP = ["seed=1,2", "sae.n_features=32,64"]
TINY_OVERRIDES = [
    "data.corpus.docstrings=false",
    "data.seq_len=32",
    "data.n_tokens=8192",
    "data.batch_size=256",
    "data.eval_sequences=2",
    "hook.layer=1",
    "sae.k=4",
    "trainer.max_epochs=4",
]


def train(args: list[str], work: Path) -> float:
    """Run train.py with ``args``; its wall time in seconds. Stops on a failed job (a sweep with
    a failed job exits non-zero)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"train.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds


def weights(sweep_dir: Path) -> dict[str, bytes]:
    return {
        path.parent.name: path.read_bytes()
        for path in sorted(sweep_dir.glob("*/sae_weights.safetensors"))
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a tiny local model (seconds a job)")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--output", type=Path, help="also write the report to this JSON file")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_launchers_"))
    work.mkdir(parents=True, exist_ok=True)
    # One precision for both ways: the automatic choice is measured per thread count, so 1 and
    # 2 threads could pick different ones and the weights would differ for that reason alone.
    sweep = SWEEP
    common = ["logger=none", "trainer.enable_progress_bar=false", "trainer.precision=32-true"]
    if args.tiny:
        sys.path.insert(0, str(REPO_ROOT))
        from tests.tiny_lm import build_tiny_lm

        model = build_tiny_lm(work / "tiny_llama", architecture="llama")
        sweep = TINY_SWEEP
        common += ["model=local", f"model.path={model}", *TINY_OVERRIDES]
    common += [*args.overrides, f"paths.cache_dir={work / 'cache'}"]

    warmup = [*common, sweep[1].split(",")[0], "trainer.max_steps=1"]
    warmup_s = train([*warmup, f"hydra.run.dir={work / 'warmup'}"], work)
    ways = {
        "side_by_side": [
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={args.cores}",
            "threads=1",
        ],
        "one_at_a_time": [f"threads={args.cores}"],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    loads: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    results: dict[str, dict[str, bytes]] = {}
    for repeat in range(args.repeats):
        order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
        for name in order:
            sweep_dir = work / f"{name}-{repeat}"
            shutil.rmtree(sweep_dir, ignore_errors=True)
            before = load_average()
            seconds = train(
                ["-m", *sweep, *common, *ways[name], f"hydra.sweep.dir={sweep_dir}"], work
            )
            times[name].append(round(seconds, 2))
            loads[name].append((before, load_average()))
            results.setdefault(name, weights(sweep_dir))
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "cores": args.cores,
        "jobs": 4,
        "command": f"python train.py -m {' '.join(sweep)} {' '.join(common)}",
        "ways": {name: " ".join(flags) for name, flags in ways.items()},
        "warmup_s": round(warmup_s, 2),
        "wall_s": times,
        "median_wall_s": medians,
        "load_average_before_after": loads,
        "ratio_one_at_a_time_over_side_by_side": round(
            medians["one_at_a_time"] / medians["side_by_side"], 3
        ),
        "same_weights": results["side_by_side"] == results["one_at_a_time"]
        and len(results["side_by_side"]) == 4,
        "work": str(work),
    }
    text = json_text(report)  # strict JSON, as every file of the project
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
