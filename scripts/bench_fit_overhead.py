"""What ``trainer.fit`` spends beyond the SAE's own steps, one job at a time, in one process.

Trains one job as ``train.py`` would (``saeseeds.training.run.train`` on the composed config,
W&B off, no progress bar), then drives the same job's steps in the plain loop of
``scripts/bench_sweep.py`` (``time_pure_steps``: the exact step, no Lightning, no data loader, rows
already in memory in float32), and repeats, alternating the two. Both run in this process, so the
machine's drift between them is as small as it gets; the job's ``fit_time_s`` over the plain loop's
seconds is what the fit costs beyond the maths, and (the same over ``steps``) per step.

    python scripts/bench_fit_overhead.py                          # 16 latents, k 4: the least maths
    python scripts/bench_fit_overhead.py --rounds 3 sae.n_features=128 sae.k=32
    OMP_WAIT_POLICY=ACTIVE python scripts/bench_fit_overhead.py   # steadier timings on 2 cores

Overrides are train.py's; ``sae.n_features=16`` and ``sae.k=4`` apply unless given. The job reads
the mission's activation store (built on first use under ``paths.cache_dir``). The first round
holds the process's first fit, so it can run slower than the rest; each round is printed. Measure
on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OVERRIDES = ["sae.n_features=16", "sae.k=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help=f"train.py overrides (besides {DEFAULT_OVERRIDES})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="fit + plain loop, alternated")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds={args.rounds}: give at least 1.")

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_store_dtype import compose_config
    from bench_sweep import time_pure_steps
    from omegaconf import OmegaConf

    from saeseeds.training.run import train

    given = {override.split("=", 1)[0] for override in args.overrides}
    defaults = [override for override in DEFAULT_OVERRIDES if override.split("=")[0] not in given]
    overrides = [*defaults, *args.overrides, "logger=none", "trainer.enable_progress_bar=false"]
    work = Path(tempfile.mkdtemp(prefix="bench_fit_overhead_"))
    fits, pures, steps = [], [], 0
    try:
        for round_ in range(args.rounds):
            run = work / f"round{round_}"
            cfg = compose_config(overrides, run)
            train(cfg)
            (run / ".hydra").mkdir(exist_ok=True)  # what the plain loop reads the job's config from
            OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
            metrics = json.loads((run / "metrics.json").read_text())
            job = time_pure_steps([run])[0]
            fits.append(float(metrics["fit_time_s"]))
            pures.append(job.pure_s)
            steps = int(metrics["steps"])
            print(
                f"round {round_}: fit {fits[-1]:.2f} s, plain loop {pures[-1]:.2f} s, "
                f"fit / plain {fits[-1] / pures[-1]:.3f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra_ms = 1e3 * (sum(fits) - sum(pures)) / (steps * len(fits))
    print(
        f"over {len(fits)} rounds of {steps} steps: fit {sum(fits):.2f} s, plain loop "
        f"{sum(pures):.2f} s, fit / plain {sum(fits) / sum(pures):.3f}, "
        f"{extra_ms:.2f} ms a step beyond the plain loop"
    )


if __name__ == "__main__":
    main()
