"""Snapshots and held-out codes written by training: the right steps, the weights of those steps,
byte-identical after an interruption and a resume, and no change to the trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from saeseeds import contract
from saeseeds.config.validation import validate_train_config
from saeseeds.errors import ConfigError
from saeseeds.training.run import train
from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train, run_app
from tests.training.test_run import InterruptAtStep

# One epoch of 16 steps: snapshots at steps 4, 8 and 12; checkpoints at 5, 10 and 15.
COMMON = [*TINY_SAE, *TINY_SYNTHETIC, "trainer.max_epochs=1", "seed=3", "logger=none"]
COMMON.append("trainer.checkpoint_every_n_steps=5")
FRACTIONS = {"0.25": 4, "0.5": 8, "0.75": 12}


def snapshot(run_dir: Path, fraction: str) -> Path:
    return run_dir / contract.SNAPSHOTS_DIR / f"fraction={fraction}.safetensors"


class FoldedAtStep(L.Callback):
    """Keeps the SAE's folded weights at the end of one step."""

    def __init__(self, step: int):
        self.step, self.state = step, None

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            folded = module.saes[0].folded_state(module.input_scale)  # b_enc: the live parameter
            self.state = {name: tensor.detach().clone() for name, tensor in folded.items()}


def interrupted_then_resumed(run_dir: Path, first: list[str]) -> dict:
    """Ctrl-C at step 10 (last checkpoint at 5, the step-8 snapshot already on disk), then
    resumed with snapshots on."""
    with pytest.raises(SystemExit):
        train(compose_train([*COMMON, *first], run_dir), extra_callbacks=[InterruptAtStep(10)])
    assert not (run_dir / contract.COMPLETE_MARKER).exists()
    return train(compose_train([*COMMON, "resume=true"], run_dir))


def test_snapshots_at_their_steps_equal_after_resume_and_leave_the_weights_alone(tmp_path):
    straight = tmp_path / "straight"
    result = run_app("train.py", *COMMON, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((straight / contract.SNAPSHOTS_DIR / contract.SNAPSHOT_INDEX).read_text())
    metrics = json.loads((straight / contract.METRICS_FILE).read_text())
    assert index["format"] == contract.SNAPSHOTS_FORMAT and index["missed"] == []
    assert [(s["fraction"], s["step"], s["tokens_seen"]) for s in index["snapshots"]] == [
        (0.25, 4, 1024), (0.5, 8, 2048), (0.75, 12, 3072)
    ]  # fmt: skip
    for entry in index["snapshots"]:
        key = f"{entry['fraction']:g}"
        assert entry["heldout_fvu"] == metrics["heldout_fvu_curve"][key]
        with safe_open(str(snapshot(straight, key)), "numpy") as handle:
            assert handle.metadata() == {
                "fraction": key,
                "saeseeds_contract_version": "1",
                "step": str(FRACTIONS[key]),
                "tokens_seen": str(FRACTIONS[key] * 256),
            }
            assert set(handle.keys()) == set(contract.WEIGHT_TENSORS)
    sizes = sum(snapshot(straight, key).stat().st_size for key in FRACTIONS)
    assert index["bytes"] == sizes and index["seconds"] >= 0
    assert metrics["snapshots"] == {"count": 3, "bytes": sizes, "seconds": index["seconds"]}
    assert metrics["heldout_codes"]["n_tokens"] == 4096  # trainer.heldout_codes of 8192 held out

    # Interrupted and resumed: the snapshots written before the interruption are kept, the
    # others written at the same steps, every one byte-identical to the straight run's.
    resumed = tmp_path / "resumed"
    interrupted_then_resumed(resumed, [])
    for key in FRACTIONS:
        assert snapshot(resumed, key).read_bytes() == snapshot(straight, key).read_bytes(), key
    for name in (contract.WEIGHTS_FILE, contract.HELDOUT_CODES_FILE):
        assert (resumed / name).read_bytes() == (straight / name).read_bytes(), name

    # Snapshots off: no folder, no codes, the same weights; a snapshot holds the folded weights
    # of its step.
    at_twelve = FoldedAtStep(12)
    off = tmp_path / "off"
    train(
        compose_train([*COMMON, "trainer.snapshots=false", "trainer.heldout_codes=0"], off),
        extra_callbacks=[at_twelve],
    )
    assert not (off / contract.SNAPSHOTS_DIR).exists()
    assert not (off / contract.HELDOUT_CODES_FILE).exists()
    assert (off / contract.WEIGHTS_FILE).read_bytes() == (
        straight / contract.WEIGHTS_FILE
    ).read_bytes()
    saved = load_file(str(snapshot(straight, "0.75")))
    for name, tensor in at_twelve.state.items():
        assert np.array_equal(saved[name], tensor.numpy()), name
    final = load_file(str(straight / contract.WEIGHTS_FILE))
    assert not np.array_equal(saved["W_dec"], final["W_dec"])

    # Resumed from a checkpoint saved with snapshots off: the fraction already passed is missed,
    # never written from later weights; the rest are the straight run's.
    late = tmp_path / "late"
    interrupted_then_resumed(late, ["trainer.snapshots=false"])
    index = json.loads((late / contract.SNAPSHOTS_DIR / contract.SNAPSHOT_INDEX).read_text())
    assert index["missed"] == [{"fraction": 0.25, "step": 4}]
    assert not snapshot(late, "0.25").exists()
    for key in ("0.5", "0.75"):
        assert snapshot(late, key).read_bytes() == snapshot(straight, key).read_bytes(), key
    assert (late / contract.WEIGHTS_FILE).read_bytes() == (
        straight / contract.WEIGHTS_FILE
    ).read_bytes()


def test_heldout_codes_are_the_latents_of_the_first_heldout_rows(tmp_path):
    from saeseeds.sae import build_sae
    from saeseeds.training.heldout_codes import heldout_identity, write_heldout_codes
    from saeseeds.training.run import load_activations

    # relu_l1: dense latents, so the sparse file has to drop the zeros itself.
    relu = [item for item in COMMON if not item.startswith("sae.k=")] + ["sae=relu_l1"]
    cfg = compose_train(relu, tmp_path / "run")
    sae_config = validate_train_config(cfg)
    _, splits, _ = load_activations(cfg, sae_config)
    sae = build_sae(splits.d_in, sae_config)
    sae.initialize(splits.heldout[:512], torch.Generator().manual_seed(0))  # any rows will do
    cost = write_heldout_codes(tmp_path, sae, splits.heldout, 100, n_tokens=200)
    codes = load_file(str(tmp_path / contract.HELDOUT_CODES_FILE))
    with safe_open(str(tmp_path / contract.HELDOUT_CODES_FILE), "numpy") as handle:
        metadata = handle.metadata()
    assert metadata["n_tokens"] == "200" and metadata["n_features"] == "64"
    assert metadata["heldout_identity"] == heldout_identity(splits.heldout[:200])
    assert metadata["heldout_identity"] != heldout_identity(splits.heldout[1:201])
    dense = np.zeros((200, 64), dtype=np.float32)
    for row in range(200):
        start, stop = codes["indptr"][row], codes["indptr"][row + 1]
        assert np.all(np.diff(codes["indices"][start:stop]) > 0)
        dense[row, codes["indices"][start:stop]] = codes["values"][start:stop]
    with torch.no_grad():
        expected = sae.encode(splits.heldout[:200]).numpy()
    np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-7)
    assert cost["heldout_codes"]["nonzeros"] == int((expected > 0).sum()) > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.snapshot_fractions=[0.5,1.0]", "1 is not in (0, 1)"),
        ("trainer.snapshot_fractions=[0.5,0.5]", "repeats a fraction"),
        ("trainer.heldout_codes=-1", "trainer.heldout_codes=-1 must be >= 0"),
    ],
)
def test_bad_snapshot_settings_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_train_config(compose_train([*COMMON, override]))
