"""A condition judged against its geometry control, through the real command line.

Data with no sparse structure must come out indistinguishable from its control; sparse true
features in an anisotropic space must beat it by a wide margin, over training too, and their
matched features must fire together on held-out tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import run_app

SAE = ["sae.lr=0.004", "trainer.max_epochs=8", "trainer.enable_progress_bar=false", "logger=none"]
ANALYSIS = ["logger=none", "report.figures=true", "baseline.n_samples=9", "bootstrap.n_samples=400"]


def sweep_and_analyse(tmp_path: Path, data: list[str], seeds: str = "1,2,3") -> dict:
    """Seeds of a condition and of its geometry control, then the analysis. The seeds of each
    train together on one batch stream (two jobs instead of one per seed)."""
    sweep = tmp_path / "sweep"
    trained = run_app(
        "train.py", "-m", f"seeds=[{seeds}]", "order_seed=0", "data.control=none,gaussian",
        *data, *SAE,
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    report_dir = tmp_path / "report"
    analysed = run_app(
        "analyze.py", f"sweep_dir={sweep}", *ANALYSIS, f"hydra.run.dir={report_dir}", cwd=tmp_path
    )
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    summary = json.loads((report_dir / "summary.json").read_text())
    (condition,) = [g for g in summary["groups"].values() if g["role"] == "condition"]
    (control,) = [g for g in summary["groups"].values() if g["role"] == "control"]
    assert condition["controls"]["gaussian"]["label"] == control["label"]
    assert "data.control=gaussian" in control["label"]
    report = (report_dir / "report.md").read_text()
    assert report.splitlines()[6].startswith("- **" + condition["label"])  # verdict comes first
    return {"condition": condition, "report": report, "report_dir": report_dir}


# Slow (half a minute): run with -m slow; the other side (features beat their control) runs by
# default.
@pytest.mark.slow
def test_featureless_anisotropic_data_is_indistinguishable_from_its_control(tmp_path):
    generator = torch.Generator().manual_seed(0)
    d_in = 16
    rotation, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator))
    scales = torch.exp(-3.0 * torch.arange(d_in) / d_in)  # a few dominant directions
    rows = torch.randn(8_600, d_in, generator=generator) * scales @ rotation.T + 2.0
    save_file({"activations": rows.contiguous()}, str(tmp_path / "acts.safetensors"))
    data = ["data=activations", f"data.path={tmp_path / 'acts.safetensors'}", "data.batch_size=256"]
    data += ["sae.n_features=32", "sae.k=3"]
    result = sweep_and_analyse(tmp_path, data)
    gaussian = result["condition"]["controls"]["gaussian"]
    low, high = gaussian["difference_ci"]
    assert low <= 0 <= high, gaussian
    assert "is not distinguishable from the geometry control" in result["report"]


def test_sparse_features_in_an_anisotropic_space_beat_their_control(tmp_path):
    data = [
        "data=synthetic",
        "data.d_in=32",
        "data.n_true_features=32",
        "data.k_true=2",
        "data.spectrum_decay=2",  # the features crowd into a few dominant directions
        "data.n_tokens=8192",
        "data.batch_size=256",
        "sae.n_features=32",
        "sae.k=2",
    ]
    # Four seeds: with three, Student's t on 2 degrees of freedom leaves the interval very wide.
    result = sweep_and_analyse(tmp_path, data, seeds="1,2,3,4")
    condition = result["condition"]
    gaussian = condition["controls"]["gaussian"]
    assert gaussian["difference"] > 0.25 and gaussian["difference_ci"][0] > 0.1, gaussian
    assert gaussian["p_value"] < 0.05
    assert condition["controls"]["isotropic"]["difference"] > 0.5
    assert condition["beyond_geometry_fraction"] > 0.6
    assert "beats the geometry control" in result["report"]
    features = (result["report_dir"] / "features.csv").read_text().splitlines()
    header = features[0].split(",")
    column = header.index("beyond_geometry")
    flags = [row.split(",")[column] for row in features[1:] if row.startswith(condition["label"])]
    assert np.mean([flag == "1" for flag in flags]) == condition["beyond_geometry_fraction"]
    assert (result["report_dir"] / condition["figures"]["beyond_geometry"]).is_file()
    # Over training (the runs' snapshots): a row per fraction, each with its lead over the control.
    rows = condition["trajectory"]["rows"]
    assert [row["fraction"] for row in rows] == [0.25, 0.5, 0.75, 1.0]
    assert all(row["lead"]["difference"] > 0 for row in rows[1:])
    assert condition["trajectory"]["lead_change"]["trend"] in ("growing", "flat", "shrinking")
    assert (result["report_dir"] / condition["figures"]["trajectory"]).is_file()
    assert condition["trajectory"]["cost"]["count"] == 3
    assert "Snapshots cost each run" in result["report"]
    # Matched features fire together on the held-out tokens, far more than the control's do.
    functional = condition["functional"]
    assert functional["median"]["value"] > 0.8 > functional["control"]["median"] + 0.2
    assert abs(functional["random_partner_median"]) < 0.2
