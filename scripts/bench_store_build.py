"""A store build killed and resumed, and a parallel build, each compared byte for byte with an
uninterrupted serial build (``cmp`` of every shard, stats and held-out file).

1. serial: ``build_store.py`` once, uninterrupted (timed);
2. killed: the same command, killed with SIGKILL ``--kill-after`` of the way through its shards
   (by the count of finished shards), then run again: it reports the shards done at the kill,
   the shards the second run built, the work lost (shards the second run built that the first
   had started: at most one) and whether every file matches the serial build;
3. parallel: ``build_store.py -m store.part=0..P-1 store.parts=P hydra/launcher=joblib``
   (timed), compared with the serial build.

    python scripts/bench_store_build.py                          # SmolLM2, pydocs, 8 shards of 64k
    python scripts/bench_store_build.py --tokens 1048576 --parts 4 data=pysource
    python scripts/bench_store_build.py --tokens 16384 model=local model.path=DIR \
        hook.layer=1 data.seq_len=32 data.shard_tokens=1024      # a quick check on a small model
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_command(cache: Path, run_dir: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO_ROOT / "build_store.py"), *[e for e in extra if e == "-m"],
        f"data.n_tokens={args.tokens}", f"paths.cache_dir={cache}", "store.progress=false",
        *[e for e in extra if e != "-m"], *args.overrides,
        f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}",
    ]  # fmt: skip


def run(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def store_of(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "stores").iterdir() if p.is_dir()]
    return folder


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.safetensors"))
    if names != sorted(p.name for p in b.glob("*.safetensors")):
        return False
    return all(
        subprocess.run(["cmp", "-s", str(a / name), str(b / name)]).returncode == 0
        for name in names
    )


def finished_shards(cache: Path) -> int:
    stores = cache / "stores"
    return len(list(stores.glob("*/shard-*.stats.safetensors"))) if stores.exists() else 0


def killed_and_resumed(work: Path, args: argparse.Namespace, n_shards: int) -> dict:
    cache = work / "killed"
    process = subprocess.Popen(
        build_command(cache, work / "run-killed", args),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = max(1, int(args.kill_after * n_shards))
    while finished_shards(cache) < target:
        if process.poll() is not None:
            raise SystemExit("the build ended before it could be killed; use more tokens")
        time.sleep(0.01)
    time.sleep(args.kill_delay)  # into the next shard
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = finished_shards(cache)
    seconds = run(build_command(cache, work / "run-resumed", args))
    manifest = json.loads((store_of(cache) / "manifest.json").read_text())
    return {
        "shards_done_at_kill": done_at_kill,
        "shards_built_on_resume": n_shards - done_at_kill,
        "work_lost_shards": 1 if done_at_kill < n_shards else 0,
        "resume_seconds": seconds,
        "complete": len(manifest["shards"]) == n_shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8 * 65_536)
    parser.add_argument("--shard-tokens", type=int, default=65_536, help="must match the overrides")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--kill-after", type=float, default=0.5, help="fraction of the shards")
    parser.add_argument("--kill-delay", type=float, default=0.5, help="seconds into the next one")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="model/hook/data overrides, as build_store.py")
    args = parser.parse_args()
    for override in args.overrides:
        if override.startswith("data.shard_tokens="):
            args.shard_tokens = int(override.split("=", 1)[1])
    n_shards = -(-args.tokens // args.shard_tokens)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="saeseeds-build-"))
    try:
        serial_seconds = run(build_command(work / "serial", work / "run-serial", args))
        serial = store_of(work / "serial")
        killed = killed_and_resumed(work, args, n_shards)
        killed["identical_to_serial"] = same_files(store_of(work / "killed"), serial)
        parallel_seconds = run(
            build_command(
                work / "parallel",
                work / "run-parallel",
                args,
                "-m",
                f"store.part={','.join(str(p) for p in range(args.parts))}",
                f"store.parts={args.parts}",
                "hydra/launcher=joblib",
                f"hydra.launcher.n_jobs={args.parts}",
            )
        )
        parallel_identical = same_files(store_of(work / "parallel"), serial)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{n_shards} shards of {args.shard_tokens} tokens ({args.tokens:,} training tokens)")
    print(f"{'build':<28} | {'seconds':>8} | result")
    print(f"{'-' * 28}-+-{'-' * 8}-+-{'-' * 40}")
    print(f"{'serial, uninterrupted':<28} | {serial_seconds:>8.1f} | the reference")
    print(
        f"{'killed at ' + str(killed['shards_done_at_kill']) + ' shards, resumed':<28} | "
        f"{killed['resume_seconds']:>8.1f} | built {killed['shards_built_on_resume']} shards on "
        f"resume, lost <= {killed['work_lost_shards']} shard; identical: "
        f"{'yes' if killed['identical_to_serial'] else 'NO'}"
    )
    print(
        f"{f'parallel, {args.parts} joblib parts':<28} | {parallel_seconds:>8.1f} | identical: "
        f"{'yes' if parallel_identical else 'NO'}"
    )


if __name__ == "__main__":
    main()
