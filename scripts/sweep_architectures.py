"""SAE architectures at matched L0 (Top-K, ReLU+L1 and BatchTopK by default), into one sweep
folder that analyze.py reads.

    python scripts/sweep_architectures.py --k 32 --seeds 1,2,3                # the defaults
    python scripts/sweep_architectures.py --k 8 --seeds 1,2 sae.n_features=128 hook.layer=0
    python scripts/sweep_architectures.py --k 32 --calibrate-only              # just find λ
    python scripts/sweep_architectures.py --k 32 --control gaussian  # + each one's geometry control
    python scripts/sweep_architectures.py --k 32 --architectures topk,jumprelu,matryoshka,archetypal
    python scripts/sweep_architectures.py --hierarchy --k 3 --seeds 1,2,3 \
        --architectures topk,batchtopk,relu_l1,jumprelu,matryoshka,archetypal

Top-K, BatchTopK, Matryoshka and archetypal SAEs take L0 = k directly. ReLU+L1 and JumpReLU have
no k: their L0 falls as their penalty's coefficient λ (``sae.l1_coefficient``,
``sae.l0_coefficient``) rises, so λ is searched first, for each of them. Each probe trains one
SAE (seed 0, in this process, so the model and the activation cache load once) and reads its
held-out L0; the search brackets the target on a log scale and bisects until L0 is within
``--tolerance`` of k. Then the architectures are trained with every seed (``train.py -m``, one
command for those with k, one for each calibrated one with its λ) into the same sweep folder, and
the command to analyse it is printed. Extra arguments are Hydra overrides applied to every run
(model, hook, data, size, ...).

``--control gaussian`` also trains every architecture, with the same λ and k, on Gaussian data
with the activations' mean and covariance (``data.control=gaussian``): each architecture's own
geometry control, which the analysis pairs with it. λ is always calibrated on the real data.
Each λ found is kept in ``<sweep>/calibration.json`` (under its field's name); a later call with
the same target, tolerance and overrides reuses it instead of searching again (so a resumed sweep
does not re-train the probes).

``--hierarchy`` trains on a small synthetic world with a feature hierarchy (HIERARCHICAL_WORLD:
8 parents with 2 children each among 32 features in 32 dimensions; docs/synthetic.md); an
override given on the command line replaces the preset's value, and the preset's keys are left
out of the job folders' names. Whenever the runs have a
synthetic ground truth, the sweep ends with a table per architecture of the true features
recovered, the parents and children recovered and the children absorbed (mean and range over
seeds), printed and written to ``<sweep>/ground_truth.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from saeseeds import contract
from saeseeds.analysis.report.ground_truth import NOTE, ground_truth_table
from saeseeds.analysis.report.markdown_sections import table
from saeseeds.config import register_configs
from saeseeds.io import atomic_write_json, atomic_write_text
from saeseeds.training.run import train

REPO = Path(__file__).resolve().parents[1]
# Architectures whose L0 is k, and those whose L0 is set by a coefficient: (its field, its name).
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka", "archetypal")
CALIBRATED = {"relu_l1": ("l1_coefficient", "ReLU+L1"), "jumprelu": ("l0_coefficient", "JumpReLU")}
DEFAULT_ARCHITECTURES = "topk,batchtopk,relu_l1"
# --hierarchy: the world of docs/synthetic.md's measurement, and an SAE as wide as its dictionary.
HIERARCHICAL_WORLD = [
    "data=synthetic",
    "data.d_in=32",
    "data.n_true_features=32",
    "data.k_true=2",
    "data.hierarchy.n_parents=8",
    "data.hierarchy.children_per_parent=2",
    "data.hierarchy.child_probability=0.5",
    "data.n_tokens=16384",
    "data.batch_size=256",
    "sae.n_features=32",
    "sae.lr=0.004",
    "trainer.max_epochs=10",
]
# The k of that world's SAEs: about its mean L0 (2 active features, a child with half of those
# that are parents), far below its 32 latents.
HIERARCHY_K = 3


def with_preset(preset: list[str], overrides: list[str]) -> list[str]:
    """The preset's overrides whose key the command line does not set, then the command line's."""
    given = {item.lstrip("+~").split("=", 1)[0] for item in overrides}
    return [item for item in preset if item.split("=", 1)[0] not in given] + overrides


def without_preset_in_names(preset: list[str]) -> str:
    """A Hydra override that leaves the preset's keys out of the job folders' names, which would
    otherwise grow past the file system's limit and be cut short alike for every architecture."""
    default = OmegaConf.load(REPO / "conf" / "hydra" / "default.yaml")
    keys = list(default.job.config.override_dirname.exclude_keys)
    keys += [item.split("=", 1)[0] for item in preset if item.split("=", 1)[0] not in keys]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"


def ground_truth_report(sweep_dir: Path) -> str | None:
    """Markdown table of the complete runs' gt_* metrics per architecture; None without any."""
    by_architecture: dict[str, list[dict]] = {}
    for complete in sorted(sweep_dir.glob(f"*/{contract.COMPLETE_MARKER}")):
        run = complete.parent
        try:
            architecture = json.loads((run / contract.CFG_FILE).read_text())["architecture"]
            metrics = json.loads((run / contract.METRICS_FILE).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        by_architecture.setdefault(str(architecture), []).append(metrics)
    header, rows = ground_truth_table(sorted(by_architecture.items()))
    if not rows:
        return None
    return "\n".join([NOTE, "", *table(["architecture", *header[1:]], rows)]) + "\n"


def heldout_l0(architecture: str, coefficient: float, overrides: list[str], scratch: Path) -> float:
    """Held-out L0 of one SAE of a calibrated architecture (seed 0) with this coefficient."""
    field = CALIBRATED[architecture][0]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                *overrides,
                f"sae={architecture}",
                f"sae.{field}={coefficient}",
                "seed=0",
                "logger=none",
                "trainer.enable_progress_bar=false",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(scratch / f"{architecture},{field}={coefficient:.6g}")
    return float(train(cfg)["l0"])


def calibrate(
    architecture: str, target: float, overrides: list[str], tolerance: float, max_probes: int
) -> float:
    """λ whose SAE has held-out L0 within ``tolerance`` (relative) of ``target``."""
    with tempfile.TemporaryDirectory(prefix=f"calibrate_{architecture}_") as scratch:
        probes: dict[float, float] = {}

        def probe(coefficient: float) -> float:
            probes[coefficient] = heldout_l0(architecture, coefficient, overrides, Path(scratch))
            print(f"  λ={coefficient:<10.5g} L0={probes[coefficient]:.2f}", flush=True)
            return probes[coefficient]

        # L0 falls as λ rises: bracket the target with L0(low) >= target >= L0(high).
        low = high = 1.0
        if abs(probe(1.0) - target) <= tolerance * target:
            return 1.0
        if probes[1.0] >= target:
            while probes[high] > target and len(probes) < max_probes:
                low, high = high, high * 4
                probe(high)
        else:
            while probes[low] < target and len(probes) < max_probes:
                high, low = low, low / 4
                probe(low)
        while len(probes) < max_probes:
            best = min(probes, key=lambda c: abs(probes[c] - target))
            if abs(probes[best] - target) <= tolerance * target:
                return best
            middle = math.sqrt(low * high)
            if probe(middle) > target:
                low = middle
            else:
                high = middle
        best = min(probes, key=lambda c: abs(probes[c] - target))
        print(f"  (stopped after {max_probes} probes; closest L0 {probes[best]:.2f})")
        return best


def recorded_coefficients(record: Path, wanted: dict) -> dict[str, float]:
    """The λs (by field) of earlier calibrations into this sweep folder for the same target."""
    if not record.is_file():
        return {}
    try:
        recorded = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(recorded, dict) or {key: recorded.get(key) for key in wanted} != wanted:
        return {}
    fields = [field for field, _ in CALIBRATED.values()]
    return {
        field: float(recorded[field])
        for field in fields
        if isinstance(recorded.get(field), (int, float))
    }


def chosen_architectures(names: str) -> list[str]:
    architectures = [name.strip() for name in names.split(",") if name.strip()]
    known = (*K_ARCHITECTURES, *CALIBRATED)
    unknown = [name for name in architectures if name not in known]
    if unknown or not architectures:
        sys.exit(f"error: --architectures {names!r}: choose from {', '.join(known)}")
    return architectures


def target_k(k: int | None, hierarchy: bool) -> int:
    """--k as given, else 32, or the hierarchical world's k (its SAEs have 32 latents, and a k
    must be below that)."""
    if k is not None:
        return k
    return HIERARCHY_K if hierarchy else 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"target L0 (the k of those with one); default 32, or {HIERARCHY_K} with --hierarchy",
    )
    parser.add_argument(
        "--architectures",
        default=DEFAULT_ARCHITECTURES,
        help=f"comma-separated, from {', '.join((*K_ARCHITECTURES, *CALIBRATED))}",
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative L0 tolerance")
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--calibrate-only", action="store_true")
    parser.add_argument("--sweep-dir", help="default: outputs/multirun/architectures-<time>")
    parser.add_argument(
        "--hierarchy",
        action="store_true",
        help="train on a small synthetic world with a feature hierarchy (HIERARCHICAL_WORLD)",
    )
    parser.add_argument(
        "--control",
        choices=("none", "gaussian"),
        default="none",
        help="also train each architecture on Gaussian data of the same mean and covariance",
    )
    args, overrides = parser.parse_known_args()
    architectures = chosen_architectures(args.architectures)
    args.k = target_k(args.k, args.hierarchy)
    if args.hierarchy:
        overrides = with_preset(HIERARCHICAL_WORLD, overrides)

    started = time.perf_counter()
    sweep_dir = args.sweep_dir or f"outputs/multirun/architectures-{time.strftime('%Y%m%d-%H%M%S')}"
    record = Path(sweep_dir) / "calibration.json"
    # Launcher and output settings do not change λ; everything else (data, model, size) may.
    relevant = [item for item in overrides if not item.lstrip("+~").startswith("hydra")]
    wanted = {"k": args.k, "tolerance": args.tolerance, "overrides": relevant}
    coefficients = recorded_coefficients(record, wanted)
    for architecture in (name for name in architectures if name in CALIBRATED):
        field, label = CALIBRATED[architecture]
        if field in coefficients:
            print(f"Reusing the {label} coefficient calibrated earlier ({record}).")
        else:
            print(f"Searching the {label} coefficient for held-out L0 ≈ {args.k}:")
            coefficients[field] = calibrate(
                architecture, args.k, overrides, args.tolerance, args.max_probes
            )
            if not args.calibrate_only:
                record.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(record, {**wanted, **coefficients})
        print(f"λ = {coefficients[field]:.6g} ({label})")
    if args.calibrate_only:
        return
    common = [f"seed={args.seeds}", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    if args.control != "none":
        common.append(f"data.control=none,{args.control}")
    if args.hierarchy:
        common.append(without_preset_in_names(HIERARCHICAL_WORLD))
    with_k = [name for name in architectures if name in K_ARCHITECTURES]
    commands = [["-m", f"sae={','.join(with_k)}", f"sae.k={args.k}", *common]] if with_k else []
    for architecture in (name for name in architectures if name in CALIBRATED):
        field = CALIBRATED[architecture][0]
        coefficient = f"sae.{field}={coefficients[field]:.6g}"
        commands.append(["-m", f"sae={architecture}", coefficient, *common])
    for command in commands:
        print("python train.py " + " ".join(command), flush=True)
        subprocess.run([sys.executable, str(REPO / "train.py"), *command], cwd=REPO, check=True)
    recovery = ground_truth_report(REPO / sweep_dir)
    if recovery is not None:
        print("Ground-truth recovery (docs/synthetic.md):\n" + recovery)
        atomic_write_text(REPO / sweep_dir / "ground_truth.md", recovery)
    print(f"Done in {time.perf_counter() - started:.0f} s. Analyse with:")
    print(f"python analyze.py sweep_dir={sweep_dir}")


if __name__ == "__main__":
    main()
