"""The masking experiment (Gerasimov et al. 2026): do a run's stable features carry more of its
reconstruction and of the model's next-token prediction than its unstable ones, at equal
activation mass? Defined in docs/masking.md; in short, for each run of a group:

- stable / unstable: live features (held-out ``fire_count > 0``) whose reappearance p (the share
  of the group's other seeds with a decoder direction at cosine >= θ, from features.csv) is
  >= 1 − ε / <= ε, with θ and ε from the analysis (0.7 and 0.05 by default);
- masking a set zeroes those features' codes before decoding, on the run's own held-out
  activations; we report the change in FVU and, on text data, in the CE-loss score;
- the equal-mass comparison: the set with less activation mass (held-out ``activation_sum``) is
  masked whole; from the other set, features are taken one by one, each the unused one nearest
  in log firing frequency to the next feature of the first set (by decreasing mass, cycling),
  until their mass reaches the first set's. The contrast is ΔFVU(stable side) − ΔFVU(unstable
  side), and likewise for the CE-loss score (its drop).

Per group: the mean over seeds with a Student-t 95% interval. Reads run folders and the
analysis's features.csv and summary.json; the activations come from the run's own recorded
config through the training app's source (read-only: the activation store is read, not written,
once it exists).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from torch import Tensor

from saeseeds import contract
from saeseeds.analysis.group_stats import t_interval
from saeseeds.config.model import EVAL_DTYPES
from saeseeds.config.validation import sae_config_of
from saeseeds.errors import DataError
from saeseeds.sae import SAE, SAEOutput, build_sae
from saeseeds.studies.summaries import CONFIDENCE
from saeseeds.training import lm_eval
from saeseeds.training.metrics import accumulate, batch_totals, summarise_totals

log = logging.getLogger(__name__)
MASKING_FORMAT = "saeseeds.masking/1"
VARIANTS = ("unstable", "stable", "matched_stable", "matched_unstable")
EVAL_BATCH = 1024


@dataclass
class RunFeatures:
    """One run's per-feature inputs: reappearance p, firing frequency and activation mass."""

    reappearance: np.ndarray  # [n_features]
    fire_count: np.ndarray  # [n_features]
    frequency: np.ndarray  # [n_features]
    mass: np.ndarray  # [n_features], held-out sum of the feature's code


# ---- which features ----


def read_reappearance(features_csv: Path) -> dict[tuple[str, int], np.ndarray]:
    """{(group label, seed): reappearance p per feature} from the analysis's features.csv."""
    rows: dict[tuple[str, int], dict[int, float]] = {}
    with open(features_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("reappearance", "") == "":
                continue
            key = (row["group"], int(row["seed"]))
            rows.setdefault(key, {})[int(row["feature"])] = float(row["reappearance"])
    return {key: np.array([values[i] for i in range(len(values))]) for key, values in rows.items()}


def split_features(
    features: RunFeatures, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:  # stable, unstable indices
    live = features.fire_count > 0
    stable = np.flatnonzero(live & (features.reappearance >= 1.0 - epsilon))
    unstable = np.flatnonzero(live & (features.reappearance <= epsilon))
    return stable, unstable


def frequency_matched(
    reference: np.ndarray, candidates: np.ndarray, features: RunFeatures
) -> np.ndarray:
    """Candidates with the reference set's activation mass, picked by nearest log frequency.

    Walks the reference features by decreasing mass (cycling); for each takes the unused
    candidate nearest in log firing frequency; stops once the picked mass reaches the
    reference's. The candidates must hold at least that much mass in total.
    """
    target = float(features.mass[reference].sum())
    order = reference[np.argsort(-features.mass[reference], kind="stable")]
    log_frequency = np.log(np.maximum(features.frequency, 1e-12))
    unused = list(candidates)
    picked: list[int] = []
    mass = 0.0
    step = 0
    while mass < target and unused:
        anchor = order[step % len(order)]
        distances = np.abs(log_frequency[unused] - log_frequency[anchor])
        choice = unused.pop(int(np.argmin(distances)))
        picked.append(int(choice))
        mass += float(features.mass[choice])
        step += 1
    return np.array(picked, dtype=np.int64)


def masks_of(features: RunFeatures, epsilon: float) -> tuple[dict[str, np.ndarray], dict]:
    """The four masked sets of a run and a description of the equal-mass pair."""
    stable, unstable = split_features(features, epsilon)
    masks = {"stable": stable, "unstable": unstable}
    total = float(features.mass.sum()) or 1.0
    info: dict[str, Any] = {
        "n_live": int((features.fire_count > 0).sum()),
        "n_stable": len(stable),
        "n_unstable": len(unstable),
        "mass_share_stable": float(features.mass[stable].sum()) / total,
        "mass_share_unstable": float(features.mass[unstable].sum()) / total,
    }
    if len(stable) == 0 or len(unstable) == 0:
        info["matched"] = None
        info["reason"] = f"{'no stable' if len(stable) == 0 else 'no unstable'} live features"
        return masks, info
    stable_mass, unstable_mass = features.mass[stable].sum(), features.mass[unstable].sum()
    whole, other = ("stable", "unstable")
    if stable_mass > unstable_mass:
        whole, other = other, whole
    partner = frequency_matched(masks[whole], masks[other], features)
    masks[f"matched_{whole}"], masks[f"matched_{other}"] = masks[whole], partner
    info["matched"] = {
        "masked_whole": whole,
        "mass_whole": float(features.mass[masks[whole]].sum()) / total,
        "mass_partner": float(features.mass[partner].sum()) / total,
        "n_partner": len(partner),
        "median_frequency_whole": float(np.median(features.frequency[masks[whole]])),
        "median_frequency_partner": float(np.median(features.frequency[partner])),
    }
    return masks, info


# ---- what masking does ----


def keep_vector(sae: SAE, masked: np.ndarray) -> Tensor:  # [n_features], 0 where masked
    keep = torch.ones(sae.n_features)
    keep[torch.as_tensor(masked, dtype=torch.long)] = 0.0
    return keep


def masked_output(sae: SAE, keep: Tensor, x: Tensor) -> SAEOutput:
    """The SAE's output on raw ``x`` with the codes of masked features set to zero."""
    codes = sae.encode(x) * keep.to(x.device)  # [batch, n_features]
    indices = torch.arange(sae.n_features, device=x.device).expand_as(codes)
    # batch_totals reads only the reconstruction and the latents
    return SAEOutput(sae.decode(codes), codes, indices, {}, squared_error=torch.zeros(()))


@torch.no_grad()
def heldout_metrics(sae: SAE, heldout: Tensor, keep: Tensor) -> dict[str, float]:
    """FVU and L0 on held-out activations, with the training app's exact per-batch sums."""
    totals: dict[str, Tensor] = {}
    for start in range(0, len(heldout), EVAL_BATCH):
        x = heldout[start : start + EVAL_BATCH].float()  # [batch, d_in]
        accumulate(totals, batch_totals(x, masked_output(sae, keep, x), sae.n_features))
    metrics = summarise_totals(totals)
    return {"fvu": metrics["fvu"], "l0": metrics["l0"]}


@torch.no_grad()
def evaluate_masks(
    sae: SAE, heldout: Tensor, context: Any, masks: dict[str, np.ndarray]
) -> dict[str, dict[str, float | None]]:
    """FVU, L0 and CE-loss score (None without a text context) for no mask and each mask."""
    variants = {"full": np.array([], dtype=np.int64), **masks}
    results: dict[str, dict[str, float | None]] = {}
    done: dict[tuple[int, ...], str] = {}  # the equal-mass pair reuses one whole set
    for name, masked in variants.items():
        key = tuple(sorted(masked.tolist()))
        if key in done:
            results[name] = dict(results[done[key]])
            continue
        done[key] = name
        keep = keep_vector(sae, masked)
        results[name] = heldout_metrics(sae, heldout, keep)
        results[name]["ce_loss_score"] = None
        if context is not None:
            metrics = lm_eval.ce_loss_metrics(
                context, lambda x, keep=keep: masked_output(sae, keep, x).reconstruction
            )
            results[name]["ce_loss_score"] = float(metrics["ce_loss_score"])
    return results


# ---- one run, one group ----


def run_config(run_dir: Path) -> Any:
    """The run's composed config (.hydra/config.yaml), with its output folder filled in and its
    CE-loss forward in the precision the run's own score was computed in (float32 for runs
    from before ``model.eval_dtype``), so that unmasked the score is the run's."""
    path = run_dir / contract.HYDRA_CONFIG
    if not path.is_file():
        raise DataError(f"{path} is missing: the masking experiment needs the run's config.")
    cfg = OmegaConf.load(path)
    environment = run_dir / contract.ENVIRONMENT_FILE
    recorded = contract_json(run_dir, contract.ENVIRONMENT_FILE) if environment.is_file() else {}
    scored_in = (recorded.get("eval_precision_choice") or {}).get("chosen", "float32")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        if "model" in cfg and scored_in in EVAL_DTYPES:
            cfg.model.eval_dtype = scored_in
    return cfg


def load_sae(run_dir: Path, cfg: Any) -> SAE:
    """The run's SAE on raw activations (weights with the normalisation folded in)."""
    cfg_json = contract_json(run_dir, contract.CFG_FILE)
    sae = build_sae(int(cfg_json["d_in"]), sae_config_of(cfg.sae))
    sae.load_folded(load_file(str(run_dir / contract.WEIGHTS_FILE)))
    return sae.eval()


def contract_json(run_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((run_dir / name).read_text(encoding="utf-8"))


def run_features(run_dir: Path, reappearance: np.ndarray) -> RunFeatures:
    stats = load_file(str(run_dir / contract.FEATURE_STATS_FILE))
    fire_count = stats["fire_count"].numpy()
    n_tokens = int(contract_json(run_dir, contract.METRICS_FILE).get("heldout_tokens") or 1)
    return RunFeatures(
        reappearance=reappearance,
        fire_count=fire_count,
        frequency=fire_count / max(n_tokens, 1),
        mass=stats["activation_sum"].double().numpy(),
    )


def load_data(cfg: Any) -> tuple[Tensor, Any]:
    """Held-out activations of the run's data (its own source and control), and the text
    context for the CE-loss score (None for a control or data without text)."""
    from saeseeds.training.run import build_source  # Lightning and the model: only when needed

    source = build_source(cfg)
    splits = source.load()
    return splits.heldout, source.text_context()


def mask_run(
    run_dir: Path, features: RunFeatures, epsilon: float, data: tuple[Tensor, Any]
) -> dict[str, Any]:
    cfg = run_config(run_dir)
    masks, info = masks_of(features, epsilon)
    heldout, context = data
    results = evaluate_masks(load_sae(run_dir, cfg), heldout, context, masks)
    full = results["full"]
    deltas: dict[str, dict[str, float | None]] = {}
    for metric in ("fvu", "ce_loss_score"):
        deltas[metric] = {
            name: (
                None
                if results[name][metric] is None or full[metric] is None
                else results[name][metric] - full[metric]
            )
            for name in masks
        }
    return {"run": str(run_dir), **info, "results": results, "delta": deltas}


def contrast(run: dict[str, Any], metric: str) -> float | None:
    """Stable side minus unstable side of the equal-mass pair, as harm: positive when masking
    the stable features hurts more (FVU rises more; the CE-loss score falls more)."""
    delta = run["delta"][metric]
    stable, unstable = delta.get("matched_stable"), delta.get("matched_unstable")
    if stable is None or unstable is None:
        return None
    sign = 1.0 if metric == "fvu" else -1.0
    return sign * (stable - unstable)


def seed_interval(values: list[float]) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (NaN with fewer than two values)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "ci": [None, None], "p_value": None, "n_seeds": 0}
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "ci": [None, None], "p_value": None, "n_seeds": 1}
    standard_error = float(np.std(values, ddof=1) / math.sqrt(len(values)))
    interval, p_value = t_interval(mean, standard_error, len(values) - 1, CONFIDENCE)
    return {"mean": mean, "ci": interval, "p_value": p_value, "n_seeds": len(values)}


def summarise_group(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    entries = list(runs.values())
    summary: dict[str, Any] = {
        "mass_share_stable": seed_interval([r["mass_share_stable"] for r in entries]),
        "mass_share_unstable": seed_interval([r["mass_share_unstable"] for r in entries]),
        "n_stable": seed_interval([r["n_stable"] for r in entries]),
        "n_unstable": seed_interval([r["n_unstable"] for r in entries]),
    }
    for metric in ("fvu", "ce_loss_score"):
        summary[metric] = {
            name: seed_interval([r["delta"][metric].get(name) for r in entries])
            for name in VARIANTS
        }
        summary[metric]["contrast"] = seed_interval([contrast(r, metric) for r in entries])
    return summary


def mask_group(
    label: str,
    group: dict[str, Any],
    reappearance: dict[tuple[str, int], np.ndarray],
    epsilon: float,
) -> dict[str, Any]:
    """Every run of one analysed group: the runs' data are loaded once (one condition)."""
    run_dirs = [Path(path) for path in group["runs"]]
    data = load_data(run_config(run_dirs[0]))
    runs: dict[int, dict[str, Any]] = {}
    for run_dir in run_dirs:
        seed = int(contract_json(run_dir, contract.CFG_FILE)["seed"])
        if (label, seed) not in reappearance:
            continue
        features = run_features(run_dir, reappearance[(label, seed)])
        runs[seed] = mask_run(run_dir, features, epsilon, data)
        log.info("masked %s seed %d", label, seed)
    return {"runs": {str(seed): run for seed, run in runs.items()}, **summarise_group(runs)}


def masking_experiment(
    analysis_dir: str | Path,
    summary: dict[str, Any],
    labels: list[str],
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The masking experiment on the named groups of one analysis."""
    reappearance_cfg = summary.get("config", {}).get("reappearance", {})
    theta = float(reappearance_cfg.get("threshold", 0.7))
    epsilon = float(reappearance_cfg.get("epsilon", 0.05))
    reappearance = read_reappearance(Path(analysis_dir) / "features.csv")
    groups = {}
    for index, label in enumerate(labels, 1):
        progress(f"  masking group {index}/{len(labels)}: {label}")
        groups[label] = mask_group(label, summary["groups"][label], reappearance, epsilon)
    return {
        "format": MASKING_FORMAT,
        "analysis": str(analysis_dir),
        "definition": {"theta": theta, "epsilon": epsilon, "confidence": CONFIDENCE},
        "groups": groups,
    }
