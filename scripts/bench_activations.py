"""Benchmark the real-activations path on the defaults (SmolLM2-135M, blocks.6.hook_resid_pre,
the embedded Python-docs corpus).

Reports, as JSON:
- model load time: first from the GGUF (conversion included), then from the converted copy;
- activation-store build speed in tokens/s against the bare forward loop over the same tokens
  (the same sequences and forward batches, activations moved to the CPU and dropped): their
  ratio is what the store costs on top of the model (target >= 0.95);
- the wall time of the mission sweep ``python train.py -m seed=1,2,3,4,5 sae.n_features=128,512``
  with a cold activation store, and of the same sweep again reusing that store, with each job's
  dead-feature fraction and CE-loss score.

    python scripts/bench_activations.py                 # all of it (about 15-25 min on 2 cores)
    python scripts/bench_activations.py --no-sweep      # loads and store build only
    python scripts/bench_activations.py --skip-gguf     # keep the existing converted model
    python scripts/bench_activations.py --no-sweep --build-tokens 1048576 data=pysource

Timings on a shared machine depend on its load; the 1-minute load average is recorded with each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

LOAD_MODEL = """
import json, time
started = time.perf_counter()
from saeseeds.activations import models
from saeseeds.config.model import ModelConfig
model = models.load_model(ModelConfig(), {cache!r})
print(json.dumps({{"seconds": time.perf_counter() - started, "in_load_model": model.load_seconds}}))
"""

BUILD_STORE = """
import json, sys, time
sys.argv = ["bench"]
import torch
from hydra import compose, initialize_config_dir
from saeseeds.activations import hooks
from saeseeds.activations.store_build import ensure_store
from saeseeds.config import register_configs
from saeseeds.training.run import build_source
register_configs()
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose(config_name="train", overrides={overrides!r})
source = build_source(cfg)
builder = source.builder()
rows = builder.rows_per_shard
shards = -(-source.n_tokens // rows)
sequences = [builder.sequences.heldout()]
for index in range(shards):
    first, offset = divmod(index * rows, builder.kept)
    sequences.append(builder._train_sequences(first, -(-(offset + rows) // builder.kept)))
model, batch = builder.model, source.model_config.forward_batch_size
started = time.perf_counter()
with torch.no_grad():
    for tokens in sequences:  # the bare loop: the same forward batches, nothing kept
        for start in range(0, len(tokens), batch):
            chunk = tokens[start : start + batch].long().to(model.device)
            hooks.read_activations(model.bridge, source.hook, chunk).to("cpu")
bare = time.perf_counter() - started
forwarded = sum(t.numel() for t in sequences)
started = time.perf_counter()
store, built = ensure_store(source.cache_dir, source.builder(), source.n_tokens, progress=False)
seconds = time.perf_counter() - started
print(json.dumps({{"tokens": forwarded, "train_tokens": source.n_tokens,
                  "store_seconds": seconds, "bare_seconds": bare,
                  "store_tokens_per_s": forwarded / seconds,
                  "bare_tokens_per_s": forwarded / bare,
                  "store_vs_bare": bare / seconds, "shards": store.n_shards,
                  "key": store.key}}))
"""


def run_python(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def bench_model_load(skip_gguf: bool) -> dict:
    report: dict = {}
    if not skip_gguf:
        with tempfile.TemporaryDirectory() as fresh:
            report["load_from_gguf_s"] = round(
                run_python(LOAD_MODEL.format(cache=fresh))["seconds"], 1
            )
    default_cache = os.environ.get("SAESEEDS_MODEL_CACHE", "~/.cache/saeseeds")
    run_python(LOAD_MODEL.format(cache=default_cache))  # make sure the converted copy exists
    report["load_from_converted_s"] = round(
        run_python(LOAD_MODEL.format(cache=default_cache))["seconds"], 1
    )
    report["load_average"] = load_average()
    return report


def bench_store_build(cache_dir: Path, tokens: int, extra: list[str]) -> dict:
    overrides = [f"paths.cache_dir={cache_dir}", f"data.n_tokens={tokens}", *extra]
    result = run_python(BUILD_STORE.format(conf=str(REPO_ROOT / "conf"), overrides=overrides))
    for name in ("store_tokens_per_s", "bare_tokens_per_s"):
        result[name] = round(result[name])
    result["store_vs_bare"] = round(result["store_vs_bare"], 3)
    return {**result, "load_average": load_average()}


def run_sweep(cache_dir: Path, sweep_dir: Path, extra: list[str]) -> dict:
    command = [
        sys.executable, str(REPO_ROOT / "train.py"), "-m", "seed=1,2,3,4,5",
        "sae.n_features=128,512", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep_dir}",
        "trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    jobs = []
    for metrics_file in sorted(sweep_dir.rglob("metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        jobs.append({
            "job": metrics_file.parent.name,
            "dead_fraction": round(metrics["dead_fraction"], 4),
            "fvu": round(metrics["fvu"], 4),
            "ce_loss_score": round(metrics.get("ce_loss_score", float("nan")), 4),
            "tokens_seen": metrics["tokens_seen"],
            "wall_time_s": metrics["wall_time_s"],
        })  # fmt: skip
    return {
        "wall_s": round(wall, 1),
        "jobs": jobs,
        "builds": (result.stdout + result.stderr).count("Building the activation store"),
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-gguf", action="store_true", help="do not time the GGUF conversion")
    parser.add_argument("--no-sweep", action="store_true", help="skip the two ten-job sweeps")
    parser.add_argument("--output", type=Path, help="also write the report to this JSON file")
    parser.add_argument(
        "--build-tokens", type=int, default=262_144, help="training tokens of the timed store build"
    )
    parser.add_argument(
        "extra", nargs="*", help="extra overrides for the build and the sweeps (e.g. data=pysource)"
    )
    args = parser.parse_args()

    report: dict = {"load_average_start": load_average()}
    report["model_load"] = bench_model_load(args.skip_gguf)
    print(json.dumps(report, indent=2), flush=True)
    work = Path(tempfile.mkdtemp(prefix="saeseeds-bench-"))
    try:
        report["store_build"] = bench_store_build(
            work / "build_store", args.build_tokens, args.extra
        )
        print(json.dumps(report["store_build"], indent=2), flush=True)
        if not args.no_sweep:
            cache_dir = work / "sweep_store"
            report["first_sweep"] = run_sweep(cache_dir, work / "sweep1", args.extra)
            print(json.dumps(report["first_sweep"], indent=2), flush=True)
            report["second_sweep"] = run_sweep(cache_dir, work / "sweep2", args.extra)
            report["second_vs_first"] = round(
                report["second_sweep"]["wall_s"] / report["first_sweep"]["wall_s"], 3
            )
            dead = [job["dead_fraction"] for job in report["first_sweep"]["jobs"]]
            report["dead_fraction_max"] = max(dead)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
