"""The SAE step's precision in real training runs: ``trainer.precision=null`` follows a cached
measurement of this machine (injected here through ``paths.model_cache_dir``), tiny SAEs stay
float32 untimed, an explicit precision is used as set, bf16-mixed trains on any CPU, a resumed
run keeps its precision, and environment.json records the choice and the conditions of exact
reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saeseeds import precision
from saeseeds.config.validation import validate_train_config
from saeseeds.training.run import train
from saeseeds.training.step_precision import step_precision, step_workload
from tests.helpers import TINY_SAE, TINY_SYNTHETIC, compose_train
from tests.training.test_run import InterruptAtStep

COMMON = [*TINY_SAE, *TINY_SYNTHETIC, "logger=none", "seed=3"]


def inject(cache_dir: Path, chosen: str, speedup: float) -> None:
    """A measurement of the tiny SAE's step on this machine, as the app would have cached it."""
    cfg = compose_train(COMMON)
    workload = step_workload(16, validate_train_config(cfg), int(cfg.data.batch_size))
    device = precision.this_device()
    choice = precision.PrecisionChoice(
        workload, chosen, "measured (injected)", speedup, 0.3, 0.3 / speedup, "then", device.key
    )
    precision.write_record(cache_dir, device, choice)


def environment(run_dir: Path) -> dict:
    return json.loads((run_dir / "environment.json").read_text())


def run(tmp_path: Path, name: str, *overrides: str) -> Path:
    cache = f"paths.model_cache_dir={tmp_path / 'machine'}"
    train(compose_train([*COMMON, cache, *overrides], tmp_path / name))
    return tmp_path / name


def test_a_measured_gain_picks_bf16_mixed_and_environment_json_records_it(tmp_path):
    inject(tmp_path / "machine", "bfloat16", 2.5)
    run_dir = run(tmp_path, "auto")
    recorded = environment(run_dir)
    assert recorded["precision"] == "bf16-mixed"
    assert recorded["precision_choice"]["speedup"] == 2.5
    assert recorded["precision_choice"]["requested"] is None
    assert recorded["reproducibility"] == {
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_device": None,
        "precision": "bf16-mixed",
        "model_dtype": None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    # bf16 autocast trains on any CPU (slowly where it is emulated) and saves float32 weights.
    weights = load_file(run_dir / "sae_weights.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
    assert json.loads((run_dir / "metrics.json").read_text())["fvu"] < 0.5


def test_too_small_a_gain_keeps_float32_with_the_bytes_of_an_explicit_32_true(tmp_path):
    explicit = run(tmp_path / "explicit", "explicit", "trainer.precision=32-true")
    assert environment(explicit)["precision_choice"]["reason"] == "set by trainer.precision"
    inject(tmp_path / "slow" / "machine", "float32", 1.05)
    slow = run(tmp_path / "slow", "slow", "trainer.precision=auto")
    assert environment(slow)["precision"] == "32-true"
    assert environment(slow)["precision_choice"]["speedup"] == 1.05
    weights = "sae_weights.safetensors"
    assert (slow / weights).read_bytes() == (explicit / weights).read_bytes()


def test_a_tiny_sae_is_not_timed_and_stays_float32(tmp_path):
    cfg = compose_train([*COMMON, f"paths.model_cache_dir={tmp_path}"])
    choice = step_precision(cfg, validate_train_config(cfg), 16, 256)
    # Untimed either way: too small where the CPU has bf16 units, and no bf16 units otherwise.
    reason = "too small" if precision.this_device().bf16_units else "without bf16 units"
    assert choice["precision"] == "32-true" and reason in choice["reason"]
    assert not (tmp_path / precision.CACHE_FOLDER).exists()


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path):
    inject(tmp_path / "machine", "bfloat16", 2.5)
    cache = f"paths.model_cache_dir={tmp_path / 'machine'}"
    interrupted = tmp_path / "interrupted"
    common = [*COMMON, cache, "trainer.checkpoint_every_n_steps=5"]
    with pytest.raises(SystemExit):
        train(compose_train(common, interrupted), [InterruptAtStep(7)])
    inject(tmp_path / "machine", "float32", 1.0)  # the machine's record changed meanwhile
    train(compose_train([*common, "resume=true"], interrupted))
    recorded = environment(interrupted)
    assert recorded["precision"] == "bf16-mixed"
    assert recorded["precision_choice"]["speedup"] == 2.5  # the choice made when it started


def test_a_block_of_bf16_steps_never_reuses_weights_cast_before_an_update(tmp_path, monkeypatch):
    """A block of optimisation steps runs in one autocast region. Lightning's region caches no
    casts; one that did would, without the module's care, let each forward after the first reuse
    the bf16 weights of the block's first step. Both must train the same bytes."""
    from lightning.pytorch.plugins.precision.amp import MixedPrecision

    bf16 = ["trainer.precision=bf16-mixed", "trainer.log_every_n_steps=8"]
    lightnings = run(tmp_path / "uncached", "uncached", *bf16)
    monkeypatch.setattr(  # the same region with torch's default cast cache
        MixedPrecision,
        "autocast_context_manager",
        lambda self: torch.autocast(self.device, dtype=torch.bfloat16, cache_enabled=True),
    )
    cached = run(tmp_path / "cached", "cached", *bf16)
    weights = "sae_weights.safetensors"
    assert (cached / weights).read_bytes() == (lightnings / weights).read_bytes()
