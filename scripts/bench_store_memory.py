"""Peak memory of one training job against its token count: it must stay flat.

For each token count it writes a float16 .npy file of random activations ([tokens + held-out,
d_in], in chunks, never whole in memory), runs one ``train.py`` job on it
(``data=activations``, a Top-K SAE, a few steps) in a subprocess, and reads that process's peak
resident memory from the kernel (``wait4``'s ru_maxrss). The first job on a file also hashes it
once (its sha256 is remembered), so the reading path and the hashing pass are both inside.

    python scripts/bench_store_memory.py                              # 1M, 4M, 16M tokens (~18 GiB)
    python scripts/bench_store_memory.py --tokens 1M 4M --work-dir /tmp/x
    python scripts/bench_store_memory.py --tokens 65536 262144 --d-in 64     # a quick check

The targets: the largest job within 20% of the smallest's peak, and under 4 GiB. The files are
deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 1 << 16


def token_count(text: str) -> int:
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1].lower(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def write_npy(path: Path, rows: int, d_in: int) -> None:
    """A float16 [rows, d_in] .npy file of Gaussian rows, written a chunk at a time."""
    header = {"descr": "<f2", "fortran_order": False, "shape": (rows, d_in)}
    generator = np.random.default_rng(0)
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            chunk = generator.standard_normal((count, d_in), dtype=np.float32)
            handle.write(chunk.astype(np.float16).tobytes())


def peak_rss_of_job(args: argparse.Namespace, data: Path, tokens: int, work: Path) -> dict:
    command = [
        sys.executable, str(REPO_ROOT / "train.py"), "data=activations", f"data.path={data}",
        f"data.n_tokens={tokens}", f"data.heldout_tokens={args.heldout}",
        f"data.batch_size={args.batch_size}", f"sae.n_features={args.n_features}", "sae.k=32",
        f"trainer.max_steps={args.steps}", "trainer.max_epochs=1", "logger=none",
        "trainer.enable_progress_bar=false", f"paths.cache_dir={work / 'cache'}",
        f"hydra.run.dir={work / f'run-{tokens}'}",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the job on {tokens} tokens failed:\n{stderr[-3000:]}")
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", nargs="+", default=["1M", "4M", "16M"])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--n-features", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=8192)
    parser.add_argument("--work-dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the activation files")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="saeseeds-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for text in args.tokens:
            tokens = token_count(text)
            data = work / f"acts-{tokens}.npy"
            if not data.exists():
                write_npy(data, tokens + args.heldout, args.d_in)
            result = peak_rss_of_job(args, data, tokens, work)
            rows.append((tokens, data.stat().st_size, result))
            print(f"{tokens:>12,} tokens: peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB "
                  f"({result['seconds']:.0f} s)", flush=True)  # fmt: skip
            if not args.keep:
                data.unlink()
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][2]["peak_rss_bytes"]
    print(f"\n{'tokens':>12} | {'file':>10} | {'peak RSS':>10} | {'vs first':>8} | {'x file':>7}")
    print(f"{'-' * 12}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 8}-+-{'-' * 7}")
    for tokens, size, result in rows:
        peak = result["peak_rss_bytes"]
        print(f"{tokens:>12,} | {size / 2**30:>6.2f} GiB | {peak / 2**30:>6.2f} GiB | "
              f"{peak / base:>8.2f} | {peak / size:>7.2f}")  # fmt: skip
    largest = rows[-1][2]["peak_rss_bytes"]
    verdict = largest <= 1.2 * base and largest < 4 * 2**30
    print(f"\nlargest within 20% of the first and under 4 GiB: {'yes' if verdict else 'NO'}")


if __name__ == "__main__":
    main()
