"""Reproduce the published seed-stability studies on the embedded model and write the results page.

    python scripts/run_studies.py                        # every study, then docs/results.md
    python scripts/run_studies.py --only seed_study      # one study (the page keeps the others')
    python scripts/run_studies.py --tiny                 # smoke version, minutes; its own page
    python scripts/run_studies.py --stages analyze,mask,page   # redo everything but training
    python scripts/run_studies.py --only stability_methods data.n_tokens=262144  # other budget

For each study (conf/experiment/<name>.yaml; see saeseeds.studies.experiments) it trains every
pass into one sweep folder, <out>/<name>/sweep (the methods study then trains Top-K, BatchTopK
and Matryoshka on a synthetic world with a feature hierarchy into <out>/<name>/absorption, for
the absorption claim), runs analyze.py on the sweep into <out>/<name>/analysis,
runs the masking experiment (docs/masking.md) where the study has one, into
<out>/<name>/masking.json, and finally regenerates the page (docs/results.md and
docs/results_*.png) from every study's outputs found under <out>. It prints each stage as it goes,
and each study's time and the total at the end (also kept in <out>/<name>/timings.json).

Everything can be re-run: complete run folders are skipped and interrupted ones resume. Training
runs --jobs jobs side by side (Hydra's joblib launcher, one torch thread each when jobs = cores).
Extra arguments are Hydra overrides for every training job (model=..., paths.cache_dir=...)
but the absorption step's, whose synthetic world has its own data and budget (--tiny shrinks it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from saeseeds.errors import UserError
from saeseeds.io import atomic_write_json
from saeseeds.studies.experiments import (
    ABSORPTION_FOLDER,
    CALIBRATED,
    EXPERIMENTS,
    Experiment,
    Pass,
    command_overrides,
)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "analyze", "mask", "page")
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
# The smoke version's analysis: fewer null and bootstrap samples.
TINY_ANALYSIS = ["baseline.n_samples=9", "bootstrap.n_samples=200"]
# A calibrated coefficient's held-out L0 is within this share of its target.
CALIBRATION_TOLERANCE = 0.1


def announce(message: str) -> None:
    print(f"[run_studies {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: list[str], env: dict[str, str] | None = None) -> bool:
    """Run one command in the repository, its output streaming through; True on success."""
    shown = " ".join(part if " " not in part else repr(part) for part in command[1:])
    announce(f"$ python {shown}")
    return subprocess.run(command, cwd=REPO, env=env).returncode == 0


def launcher(jobs: int) -> tuple[list[str], dict[str, str]]:
    """Launcher overrides and environment: ``jobs`` side by side, the cores split between them."""
    if jobs <= 1:
        return [], dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"], env


def train(
    experiment: Experiment,
    sweep_dir: Path,
    args: argparse.Namespace,
    user: list[str],
    timings: dict[str, float],
) -> bool:
    common = [*user, *(QUIET if not args.wandb else QUIET[1:])]
    launch, env = launcher(args.jobs)
    if experiment.kind == CALIBRATED:
        settings = experiment.tiny_calibration if args.tiny else experiment.calibration
        flags = [item for pair in settings.items() for item in pair]
        tiny = list(experiment.tiny) if args.tiny else []
        command = [sys.executable, str(REPO / "scripts" / "sweep_architectures.py"), *flags]
        command += ["--sweep-dir", str(sweep_dir), f"+experiment={experiment.name}", *tiny]
        # The calibration probes run in this process with every core; the sweep is launched.
        return run([*command, *common, *launch])
    ok = True
    started = time.perf_counter()
    coefficients = calibrate(experiment, sweep_dir.parent / "calibration.json", args.tiny, user)
    if coefficients:
        timings["calibration"] = round(time.perf_counter() - started, 1)
    for number, study_pass in enumerate(experiment.passes, 1):
        announce(f"{experiment.name}: pass {number}/{len(experiment.passes)}: {study_pass.label}")
        overrides = command_overrides(experiment, study_pass, args.tiny, common)
        if study_pass.calibrated:
            overrides.append(coefficients[study_pass.calibrated])
        overrides.append(f"hydra.sweep.dir={sweep_dir}")
        started = time.perf_counter()
        ok &= run([sys.executable, str(REPO / "train.py"), "-m", *overrides, *launch], env)
        seconds = round(time.perf_counter() - started, 1)
        timings[f"train pass {number}: {study_pass.label}"] = seconds
        announce(f"{experiment.name}: pass {number} took {format_seconds(seconds)}")
    if experiment.absorption:
        ok &= train_absorption(experiment, sweep_dir.parent / ABSORPTION_FOLDER, args, timings)
    return ok


def train_absorption(
    experiment: Experiment, sweep_dir: Path, args: argparse.Namespace, timings: dict[str, float]
) -> bool:
    """The experiment's absorption step: its overrides on sweep_architectures.py's hierarchical
    world, into its own sweep folder. The user's overrides are for the language-model study and
    do not reach this world, which has its own data and budget."""
    import sweep_architectures as search  # this script's folder is on the path

    world = search.HIERARCHICAL_WORLD
    own = [*experiment.absorption, *(experiment.tiny_absorption if args.tiny else ())]
    overrides = [*search.with_preset(world, own), search.without_preset_in_names(world)]
    overrides += [*(QUIET if not args.wandb else QUIET[1:]), f"hydra.sweep.dir={sweep_dir}"]
    launch, env = launcher(args.jobs)
    label = "absorption: Top-K, BatchTopK, Matryoshka on the hierarchical synthetic world"
    announce(f"{experiment.name}: {label}")
    started = time.perf_counter()
    ok = run([sys.executable, str(REPO / "train.py"), "-m", *overrides, *launch], env)
    timings[f"train {label}"] = seconds = round(time.perf_counter() - started, 1)
    announce(f"{experiment.name}: absorption took {format_seconds(seconds)}")
    return ok


def calibrate(experiment: Experiment, record: Path, tiny: bool, user: list[str]) -> dict[str, str]:
    """{architecture: its coefficient's override} of the experiment's calibrated passes: the λ
    whose SAE (seed 0) reaches held-out L0 within 10% of ``--k`` on the study's data and budget
    (the user's overrides included), searched by sweep_architectures.py's search and kept in
    ``record``; a later call with the same target and overrides reuses it."""
    architectures = [p.calibrated for p in experiment.passes if p.calibrated]
    if not architectures:
        return {}
    import sweep_architectures as search  # this script's folder is on the path

    settings = experiment.tiny_calibration if tiny else experiment.calibration
    k, probes = int(settings["--k"]), int(settings.get("--max-probes", 8))
    overrides = command_overrides(experiment, Pass("calibration"), tiny, user)
    overrides = [item for item in overrides if not item.lstrip("+~").startswith("hydra")]
    wanted = {"k": k, "tolerance": CALIBRATION_TOLERANCE, "overrides": overrides}
    found = search.recorded_coefficients(record, wanted)
    for architecture in architectures:
        field, name = search.CALIBRATED[architecture]
        if field in found:
            announce(f"{experiment.name}: reusing {name}'s λ = {found[field]:.6g} ({record})")
            continue
        announce(f"{experiment.name}: searching {name}'s λ for held-out L0 ≈ {k}")
        found[field] = search.calibrate(architecture, k, overrides, CALIBRATION_TOLERANCE, probes)
        atomic_write_json(record, {**wanted, **found})
        announce(f"{experiment.name}: {name}'s λ = {found[field]:.6g}")
    return {a: f"sae.{search.CALIBRATED[a][0]}={found[search.CALIBRATED[a][0]]:.6g}"
            for a in architectures}  # fmt: skip


def analyze(sweep_dir: Path, analysis_dir: Path, tiny: bool) -> bool:
    shutil.rmtree(analysis_dir, ignore_errors=True)  # a report of the runs as they are now
    command = [sys.executable, str(REPO / "analyze.py"), f"sweep_dir={sweep_dir}"]
    command += [f"hydra.run.dir={analysis_dir}", "logger=none", *(TINY_ANALYSIS if tiny else [])]
    return run(command)


def mask(experiment: Experiment, analysis_dir: Path, output: Path) -> bool:
    from saeseeds.analysis.report.data import json_safe
    from saeseeds.studies.masking import masking_experiment
    from saeseeds.studies.summaries import group_conditions, read_summary

    summary = read_summary(analysis_dir)
    conditions = group_conditions(summary)
    labels = [label for label, condition in conditions.items() if experiment.masked(condition)]
    announce(f"{experiment.name}: masking experiment on {len(labels)} of {len(conditions)} groups")
    results = masking_experiment(analysis_dir, summary, labels, announce)
    # Intervals of seeds that agree exactly (no spread) are undefined: null, as in summary.json.
    atomic_write_json(output, json_safe(results))
    return True


def run_experiment(experiment: Experiment, args: argparse.Namespace, user: list[str]) -> dict:
    folder = args.out / experiment.name
    sweep_dir, analysis_dir = folder / "sweep", folder / "analysis"
    timings: dict[str, float] = {}
    passes: dict[str, float] = {}
    ok = True
    for stage in args.stages:
        if stage == "page" or (stage == "mask" and not experiment.masking):
            continue
        announce(f"{experiment.name}: {stage}")
        started = time.perf_counter()
        try:
            if stage == "train":
                ok &= train(experiment, sweep_dir, args, user, passes)
            elif stage == "analyze":
                ok &= analyze(sweep_dir, analysis_dir, args.tiny)
            elif stage == "mask":
                ok &= mask(experiment, analysis_dir, folder / "masking.json")
        except UserError as error:
            announce(f"{experiment.name}: {stage} failed: {error}")
            ok = False
        timings[stage] = round(time.perf_counter() - started, 1)
        announce(f"{experiment.name}: {stage} took {format_seconds(timings[stage])}")
        if not ok and stage != "train":
            break  # a failed training job leaves the others to analyse; a failed analysis not
    record = folder / "timings.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    jobs = {"train_jobs": args.jobs} if "train" in timings else {}
    atomic_write_json(record, {**previous, **timings, **passes, **jobs})
    return {"ok": ok, "timings": timings, "passes": passes}


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def parse_arguments() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(EXPERIMENTS),
        metavar="NAME",
        help=f"run this study only (repeatable): {', '.join(EXPERIMENTS)}",
    )
    parser.add_argument("--tiny", action="store_true", help="the smoke version: minutes")
    parser.add_argument("--out", type=Path, help="outputs/studies (outputs/studies-tiny)")
    parser.add_argument("--page", type=Path, help="docs/results.md (<out>/results.md with --tiny)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="training jobs side by side (default: one per core)",
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}"
    )
    parser.add_argument("--wandb", action="store_true", help="log the training runs to W&B")
    args, overrides = parser.parse_known_args()
    args.out = args.out or Path("outputs/studies-tiny" if args.tiny else "outputs/studies")
    args.page = args.page or (args.out / "results.md" if args.tiny else Path("docs/results.md"))
    args.out, args.page = (REPO / args.out).resolve(), (REPO / args.page).resolve()
    args.stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages: {unknown[0]!r} is not a stage; choose from {', '.join(STAGES)}")
    bad = [item for item in overrides if item.startswith("-")]
    if bad:
        parser.error(f"unknown option {bad[0]}; Hydra overrides look like key=value")
    return args, overrides


def main() -> int:
    args, user = parse_arguments()
    names = args.only or list(EXPERIMENTS)
    started = time.perf_counter()
    results = {}
    for name in names:
        results[name] = run_experiment(EXPERIMENTS[name], args, user)
    if "page" in args.stages:
        from saeseeds.studies.page import write_results_page

        announce(f"writing {args.page}")
        write_results_page(args.out, args.page, tiny=args.tiny)
    total = time.perf_counter() - started
    for name, result in results.items():
        stages = ", ".join(f"{k} {format_seconds(v)}" for k, v in result["timings"].items())
        status = "" if result["ok"] else "  (FAILED: see above)"
        print(f"{name}: {format_seconds(sum(result['timings'].values()))} ({stages}){status}")
        for label, seconds in result["passes"].items():
            print(f"  {label}: {format_seconds(seconds)}")
    print(f"total: {format_seconds(total)}")
    return 0 if all(result["ok"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
