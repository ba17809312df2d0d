"""The stability-methods study's verdicts, table and figure on constructed groups whose pair values
are known: a method's lead over Top-K that the geometry controls show as much is "not beyond
geometry"; the budget on the page is the runs' own; a method off its matched L0 is flagged;
absorption is judged on constructed runs of the hierarchical synthetic world (Matryoshka − each
baseline per seed) and listed as not measured, never given a number, without them.

The study end to end (train, analyse, page) is ``test_stability_methods_study_end_to_end`` (slow:
``pytest -m slow tests/studies/test_stability_methods.py``)."""

from __future__ import annotations

import json

import pytest

from saeseeds import contract
from saeseeds.io import atomic_write_json
from saeseeds.studies.claims import (
    NOT_BEYOND_GEOMETRY,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
)
from saeseeds.studies.stability_methods import (
    stability_methods_claims,
    stability_methods_figure,
    stability_methods_section,
)
from saeseeds.studies.summaries import Groups
from tests.studies.test_token_scaling import SEEDS, group
from tests.studies.tiny_study import run_tiny_study

# (architecture, weight_l2): stability of the trained model; the control's is 0.1 lower.
METHODS = {("topk", 0.0): 0.40, ("topk", 0.003): 0.40, ("batchtopk", 0.0): 0.40,
           ("matryoshka", 0.0): 0.40, ("archetypal", 0.0): 0.40, ("relu_l1", 0.0): 0.40,
           ("jumprelu", 0.0): 0.40}  # fmt: skip


def constructed_groups(
    leads: dict[str, float], tokens_seen: int = 262144, l0: float = 32.0
) -> Groups:
    """Every method and its geometry control; ``leads`` adds to a method's stability (key
    ``archetypal``, ``weight_l2``, ``relu_l1``) and, where given as ``control:NAME``, to its
    control's; JumpReLU's held-out L0 is ``l0``."""
    groups = Groups({"groups": {}})
    for (architecture, penalty), base in METHODS.items():
        name = "weight_l2" if penalty else architecture
        for control in ("none", "gaussian"):
            lead = leads.get(name if control == "none" else f"control:{name}", 0.0)
            value = base + lead - (0.1 if control == "gaussian" else 0.0)
            label = f"{name}-{control}-{tokens_seen}"
            partner = None if control == "gaussian" else f"{name}-gaussian-{tokens_seen}"
            entry = group(label, {"decoder_median": value, "pwmcc": value, "shared": value,
                                  "decoder_stability@0.9": value / 4}, partner)  # fmt: skip
            entry["run_metrics"] = {
                f"run-{seed}": {"l0": (l0 if architecture == "jumprelu" else 32.0) + 0.1 * seed,
                                "fvu": 0.1 + 0.01 * seed, "tokens_seen": tokens_seen,
                                **({"ce_loss_score": 0.95} if control == "none" else {})}
                for seed in SEEDS
            }  # fmt: skip
            entry["redundancy"] = {"near_duplicate_share": 0.05,
                                   "distinct": {"shared": 0.3, "decoder_median": 0.5}}  # fmt: skip
            groups.entries[label] = entry
            groups.conditions[label] = {
                "sae.architecture": architecture, "sae.weight_l2": penalty, "sae.n_features": 512,
                "sae.k": None if architecture in ("relu_l1", "jumprelu") else 32,
                "data.n_tokens": tokens_seen, "trainer.max_epochs": 1, "hook.layer": 6,
                "data.control": control, "model.init": "pretrained",
            }  # fmt: skip
    return groups


def by_key(groups: Groups) -> dict:
    return {claim.key: claim for claim in stability_methods_claims(groups)}


def test_a_lead_over_top_k_the_control_shares_is_not_beyond_geometry():
    shared = by_key(constructed_groups({"archetypal": 0.05, "control:archetypal": 0.05}))
    assert shared["archetypal"].raw_verdict == REPRODUCED
    assert shared["archetypal"].verdict == NOT_BEYOND_GEOMETRY
    beyond = by_key(constructed_groups({"archetypal": 0.1, "weight_l2": 0.1, "relu_l1": 0.1}))
    for key in ("archetypal", "weight_l2", "architecture"):
        assert beyond[key].verdict == REPRODUCED, key
    # The weight penalty is set against the Top-K without it, not confused with it.
    assert beyond["weight_l2"].compared == "Top-K + L2 weight penalty − Top-K"
    assert "methods study" in beyond["architecture"].text


def test_song_et_al_is_judged_on_top_k_and_absorption_is_not_measured_here():
    claims = by_key(constructed_groups({}))
    song = claims["pwmcc_080"]
    assert [f.setting for f in song.findings] == ["Top-K, 262,144 tokens (methods study)"]
    assert song.verdict != REPRODUCED  # 0.40 is well below 0.80
    absorption = claims["absorption"]
    assert absorption.verdict == NOT_MEASURED and not absorption.findings
    assert "--only stability_methods --stages train" in absorption.note


# A hierarchical world as its runs record it (sweep_architectures.HIERARCHICAL_WORLD's shape).
HIERARCHY = {"n_parents": 8, "children_per_parent": 2, "child_probability": 0.5}
WORLD = {"d_in": 32, "n_true_features": 32, "n_tokens": 16384, "hierarchy": HIERARCHY}


def absorption_runs(folder, absorbed: dict[str, list[int]], key: str = "gt_absorbed_children"):
    """Complete runs of seeds 1, 2, 3 under ``folder/absorption``, each architecture absorbing
    the given number of children per seed (``key`` names the count in metrics.json)."""
    for architecture, counts in absorbed.items():
        for seed, count in zip((1, 2, 3), counts, strict=True):
            run = folder / "absorption" / f"sae={architecture}" / f"seed={seed}"
            config = {"seed": seed, "data": WORLD, "trainer": {"max_epochs": 10},
                      "sae": {"architecture": architecture, "n_features": 32, "k": 3}}  # fmt: skip
            atomic_write_json(run / contract.ENVIRONMENT_FILE, {"config": config})
            atomic_write_json(run / contract.METRICS_FILE, {
                key: count, "gt_recovered": 0.5, "gt_parents_recovered": 0.75,
                "gt_children_recovered": 0.125, "tokens_seen": 163840,
            })  # fmt: skip
            record = contract.completion_record({}, "2026-01-01T00:00:00")
            atomic_write_json(run / contract.COMPLETE_MARKER, record)


def test_matryoshka_absorbing_fewer_in_every_seed_reproduces_the_absorption_claim(tmp_path):
    absorption_runs(
        tmp_path, {"topk": [8, 10, 12], "batchtopk": [5, 6, 7], "matryoshka": [0, 0, 1]}
    )
    groups = constructed_groups({})
    claim = {c.key: c for c in stability_methods_claims(groups, tmp_path)}["absorption"]
    assert claim.verdict == REPRODUCED
    assert "ground truth itself" in claim.judged_against and claim.beyond_control == "n/a"
    batchtopk, topk = claim.findings
    assert batchtopk.setting == "Matryoshka − BatchTopK, 3 seeds"
    assert batchtopk.difference == pytest.approx(-17 / 3) and batchtopk.interval[1] < 0
    assert (topk.value_a, topk.value_b) == (pytest.approx(1 / 3), pytest.approx(10.0))
    # The world, the SAEs and each architecture's mean with the seeds' range, read from the runs.
    study = {"groups": groups, "folder": tmp_path}
    text = "\n".join(stability_methods_section(study, None, tmp_path / "results.md"))
    assert "parents 8; children per parent 2; child probability 0.5" in text
    assert "tokens 16,384; epochs 10" in text and "163,840 tokens seen per SAE" in text
    assert "| Matryoshka | 3 | 50% | 75% | 12% | 0.3 (0.0–1.0) |" in text
    assert "| Top-K | 3 | 50% | 75% | 12% | 10.0 (8.0–12.0) |" in text


def test_matryoshka_absorbing_more_is_not_reproduced_and_no_count_is_not_measured(tmp_path):
    absorption_runs(tmp_path, {"topk": [0, 1, 0], "batchtopk": [1, 0, 0], "matryoshka": [6, 7, 8]})
    groups = constructed_groups({})
    assert by_key(groups)["absorption"].verdict == NOT_MEASURED  # the runs are not the study's
    claim = {c.key: c for c in stability_methods_claims(groups, tmp_path)}["absorption"]
    assert claim.verdict == NOT_REPRODUCED
    # Runs without a hierarchy record no absorbed children: not measured, and no table.
    other = tmp_path / "other"
    absorption_runs(other, {"batchtopk": [1, 0, 0], "matryoshka": [0, 0, 0]}, key="unrelated")
    claim = {c.key: c for c in stability_methods_claims(groups, other)}["absorption"]
    assert claim.verdict == NOT_MEASURED and not claim.findings
    text = "\n".join(stability_methods_section({"groups": groups, "folder": other}, None, other))
    assert "Absorption on a synthetic world" not in text


def test_the_section_states_the_runs_budget_and_flags_unmatched_sparsity(tmp_path):
    groups = constructed_groups({}, tokens_seen=262144, l0=40.0)
    lines = stability_methods_section({"groups": groups}, None, tmp_path / "results.md")
    text = "\n".join(lines)
    assert "262,144 training tokens per SAE as the runs recorded them" in text
    rows = [line for line in lines if line.startswith("| ") and "<br>control:" in line]
    assert len(rows) == len(METHODS)
    assert rows[0].startswith("| Top-K | ") and rows[1].startswith("| Top-K + L2 weight penalty")
    jumprelu = next(line for line in rows if line.startswith("| JumpReLU |"))
    assert "40.2 [" in jumprelu and "(not matched)" in jumprelu
    assert "Not at matched sparsity" in text and "JumpReLU" in text.split("Not at matched")[1]
    # FVU with its seed interval beside the control's; PW-MCC beyond geometry is 0.1.
    assert "0.120 [0.095, 0.145]<br>control: 0.120 [0.095, 0.145]" in rows[0]
    assert "| 0.100 [" in rows[0]


def test_a_sweep_folder_with_two_budgets_gets_a_table_and_findings_per_budget(tmp_path):
    groups = constructed_groups({"archetypal": 0.1}, tokens_seen=262144)
    larger = constructed_groups({"archetypal": 0.1}, tokens_seen=1048576)
    groups.entries.update(larger.entries)
    groups.conditions.update(larger.conditions)
    text = "\n".join(stability_methods_section({"groups": groups}, None, tmp_path / "r.md"))
    assert "### 262,144 tokens" in text and "### 1,048,576 tokens" in text
    claims = by_key(groups)
    assert [f.setting for f in claims["archetypal"].findings] == [
        "pwmcc, 262,144 tokens", "decoder median, 262,144 tokens",
        "pwmcc, 1,048,576 tokens", "decoder median, 1,048,576 tokens",
    ]  # fmt: skip
    assert claims["archetypal"].verdict == REPRODUCED
    assert len(claims["pwmcc_080"].findings) == 2


def test_the_figure_draws_every_method(tmp_path):
    path = stability_methods_figure(constructed_groups({}), tmp_path / "tradeoff.png")
    assert path is not None and path.stat().st_size > 5000


@pytest.mark.slow
def test_stability_methods_study_end_to_end(tmp_path):
    """--tiny --only stability_methods on synthetic data: 7 methods x 2 kinds, 3 seeds per job,
    and the absorption step (3 architectures, 3 seeds) on the hierarchical world; the page gets
    the section with the budget the runs saw, the verdicts and the figure."""
    # Few overrides (see experiments.SMOKE_METHODS); the budget is the user's.
    _, out = run_tiny_study(tmp_path, "stability_methods", "data.n_tokens=8192", synthetic=False)
    runs = sorted((out / "stability_methods").glob("sweep/*/COMPLETE"))
    assert len(runs) == 7 * 2 * 3
    page = (out / "page" / "results.md").read_text()
    assert "## 6. Stability by training method at matched L0, beyond geometry" in page
    # The user's budget, as the runs recorded it.
    assert "8,192 training tokens per SAE as the runs recorded them" in page
    for text in (
        "Archetypal SAEs are more stable than Top-K",
        "reduce feature absorption",
        "A small L2 weight penalty",
        "(methods study)",
        "| Top-K + L2 weight penalty |",
        "| archetypal (RA-SAE) |",
        "| JumpReLU |",
        "| ReLU+L1 |",
        "| Matryoshka |",
    ):
        assert text in page, text  # fmt: skip
    assert (out / "page" / "results_stability_methods.png").stat().st_size > 5000
    # ReLU+L1's and JumpReLU's λ were searched on the study's data and budget, recorded, used.
    record = json.loads((out / "stability_methods" / "calibration.json").read_text())
    assert record["k"] == 8 and "data.n_tokens=8192" in record["overrides"]
    assert f"ReLU+L1 λ = {record['l1_coefficient']:.4g}" in page
    assert f"JumpReLU λ = {record['l0_coefficient']:.4g}" in page
    summary = json.loads((out / "stability_methods" / "analysis" / "summary.json").read_text())
    assert len(summary["groups"]) == 7 * 2
    # The absorption step: 3 architectures x 3 seeds on the hierarchical world, in its own
    # folder, untouched by the user's budget (--tiny's 4,096 tokens, 2 epochs).
    absorbed = sorted((out / "stability_methods").glob("absorption/*/COMPLETE"))
    assert len(absorbed) == 3 * 3
    metrics = json.loads((absorbed[0].parent / "metrics.json").read_text())
    assert metrics["tokens_seen"] == 4096 * 2 and "gt_absorbed_children" in metrics
    assert "### Absorption on a synthetic world with known parents and children" in page
    assert "parents 8; children per parent 2; child probability 0.5" in page
    assert "| Matryoshka − BatchTopK, 3 seeds |" in page
