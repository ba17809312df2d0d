"""The training app end to end, in process: recovery, determinism, resume, the run folder."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saeseeds.training.run import train

CONTRACT_FILES = (
    "sae_weights.safetensors",
    "cfg.json",
    "feature_stats.safetensors",
    "metrics.json",
    "environment.json",
    "COMPLETE",
)


def recovered_fraction(run_dir, threshold=0.9) -> float:
    truth = load_file(run_dir / "ground_truth.safetensors")["true_directions"]
    decoder = load_file(run_dir / "sae_weights.safetensors")["W_dec"]
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    best_cosine = (truth @ decoder.T).max(dim=1).values  # [n_true]
    return float((best_cosine >= threshold).float().mean())


def test_synthetic_recovery_and_run_folder_contract(tmp_path):
    from tests.helpers import compose_train

    run_dir = tmp_path / "recovery"
    cfg = compose_train(
        [
            "data=synthetic",
            "data.d_in=64",
            "data.n_true_features=128",
            "data.k_true=4",
            "data.n_tokens=32768",
            "sae.n_features=256",
            "sae.k=4",
            "sae.lr=0.004",
            # The Top-K recipe's schedule (decay over the last 20%); at 4 epochs the default
            # decay over the second half recovers 80% instead of 92%.
            "sae.decay_start_fraction=0.8",
            "trainer.max_epochs=4",
            "trainer.enable_progress_bar=false",
        ],
        run_dir,
    )
    metrics = train(cfg)

    assert recovered_fraction(run_dir) >= 0.9
    assert metrics["gt_recovered"] == recovered_fraction(run_dir)  # metrics.json scores it too
    for name in CONTRACT_FILES:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    weights = load_file(run_dir / "sae_weights.safetensors")
    assert {name: tuple(t.shape) for name, t in weights.items()} == {
        "W_enc": (64, 256),
        "b_enc": (256,),
        "W_dec": (256, 64),
        "b_dec": (64,),
    }
    assert all(t.dtype == torch.float32 for t in weights.values())

    with safe_open(str(run_dir / "feature_stats.safetensors"), framework="pt") as handle:
        n_tokens = int(handle.metadata()["n_tokens"])
        fire_count = handle.get_tensor("fire_count")
    assert fire_count.dtype == torch.int64 and fire_count.shape == (256,)
    assert fire_count.sum() == 4 * n_tokens  # every held-out token fires exactly k latents

    cfg_json = json.loads((run_dir / "cfg.json").read_text())
    assert cfg_json["contract_version"] == 1
    assert (cfg_json["d_in"], cfg_json["n_features"], cfg_json["k"]) == (64, 256, 4)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["fvu"] == pytest.approx(metrics["fvu"]) and saved["fvu"] < 0.2
    assert saved["explained_variance"] == pytest.approx(1 - saved["fvu"])
    assert saved["l0"] == pytest.approx(4.0)
    assert saved["dead_fraction"] == pytest.approx(float((fire_count == 0).float().mean()))
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["seed"] == 0 and environment["precision"] == "32-true"
    assert environment["versions"]["torch"] == torch.__version__.split("+")[0] or environment[
        "versions"
    ]["torch"].startswith(torch.__version__.split("+")[0])
    assert len(environment["installed_packages_sha256"]) == 64


def test_folded_weights_reconstruct_raw_activations_as_reported(train_config, tmp_path):
    """x̂ = decode(encode(x)) on raw activations reproduces the reported held-out FVU."""
    from saeseeds.activations.synthetic import SyntheticSource
    from tests.helpers import topk_sae

    cfg = train_config("data.noise_std=0.05")
    metrics = train(cfg)
    weights = load_file(tmp_path / "run" / "sae_weights.safetensors")
    sae = topk_sae(16, 64, 4)
    sae.load_state_dict(weights)
    skip = ("_target_", "control", "control_seed", "window_shards")
    source = SyntheticSource(**{k: v for k, v in cfg.data.items() if k not in skip})
    heldout = source.load().heldout
    with torch.no_grad():
        error = (heldout - sae.decode(sae.encode(heldout))).pow(2).sum()
    fvu = error / (heldout - heldout.mean(0)).pow(2).sum()
    assert float(fvu) == pytest.approx(metrics["fvu"], rel=1e-4)


def test_same_seed_same_weights_different_seed_different_weights(train_config, tmp_path):
    paths = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(train_config(f"seed={seed}", "logger=none", output_dir=tmp_path / name))
        paths[name] = tmp_path / name / "sae_weights.safetensors"
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    weights_a, weights_c = load_file(paths["a"]), load_file(paths["c"])
    assert not torch.equal(weights_a["W_dec"], weights_c["W_dec"])


class InterruptAtStep(L.Callback):
    """Presses Ctrl-C once ``step`` optimiser steps are done, as a user would: training sees it
    at the end of the block of steps under way (blocks end at every log and checkpoint step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


def test_the_pre_activation_workspace_changes_no_weight_and_is_freed(
    train_config, tmp_path, monkeypatch
):
    """A batch whose pre-activations exceed the block size trains from a buffer kept between
    steps: the same bytes as the fresh tensors, and the buffer is freed when the job ends."""
    from saeseeds.sae import fused_topk

    weights, used = [], []
    matmul = fused_topk.Workspace.matmul

    def counted(self, a, b):
        used.append(a.shape[0])
        return matmul(self, a, b)

    monkeypatch.setattr(fused_topk.Workspace, "matmul", counted)
    for name, block_bytes in (("fresh", 2**30), ("workspace", 4 * 64 * 100)):
        monkeypatch.setattr(fused_topk, "PRE_ACTIVATION_BLOCK_BYTES", block_bytes)
        train(train_config("seed=5", output_dir=tmp_path / name))
        weights.append((tmp_path / name / "sae_weights.safetensors").read_bytes())
        assert fused_topk.WORKSPACE._buffers == {}
    assert weights[0] == weights[1]
    assert used and set(used) == {256}  # every step of the second fit, the whole batch at once


class AdamOptions(L.Callback):
    """Records the ``foreach`` option of the optimizer that takes the first step."""

    def __init__(self) -> None:
        self.foreach = []

    def on_train_batch_start(self, trainer, *args) -> None:
        if not self.foreach:
            self.foreach = [group["foreach"] for group in trainer.optimizers[0].param_groups]


def test_the_for_each_adam_gives_the_bytes_of_torchs_cpu_default(
    train_config, tmp_path, monkeypatch
):
    """The module's Adam updates all of an SAE's tensors at once (``foreach``), with fewer
    temporaries than the one-tensor-at-a-time update torch uses by default on a CPU, and the
    same arithmetic: the same weight bytes."""
    from saeseeds.training import module

    weights, used = [], []
    for name, foreach in (("for_each", True), ("one_at_a_time", False)):
        monkeypatch.setattr(module, "ADAM_OPTIONS", {**module.ADAM_OPTIONS, "foreach": foreach})
        options = AdamOptions()
        train(train_config("seed=5", output_dir=tmp_path / name), extra_callbacks=[options])
        weights.append((tmp_path / name / "sae_weights.safetensors").read_bytes())
        used.append(options.foreach)
    assert used == [[True], [False]]
    assert weights[0] == weights[1]


def test_a_checkpoint_from_before_the_for_each_adam_resumes_with_it(train_config, tmp_path):
    """A checkpoint whose optimizer state holds torch's default (``foreach`` None) resumes with
    the for-each update, to the bytes of an uninterrupted run."""
    common = ("seed=3", "logger=none", "trainer.checkpoint_every_n_steps=5")
    train(train_config(*common, output_dir=tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit):
        train(train_config(*common, output_dir=interrupted), extra_callbacks=[InterruptAtStep(12)])
    path = interrupted / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        assert group["foreach"] is True
        group["foreach"] = None  # as written before ADAM_OPTIONS
    torch.save(checkpoint, path)
    options = AdamOptions()
    resumed = train_config(*common, "resume=true", output_dir=interrupted)
    train(resumed, extra_callbacks=[options])
    assert options.foreach == [True]
    straight = (tmp_path / "straight" / "sae_weights.safetensors").read_bytes()
    assert (interrupted / "sae_weights.safetensors").read_bytes() == straight


def test_interrupted_run_resumes_to_the_same_weights(train_config, tmp_path):
    common = ("seed=3", "logger=none", "trainer.checkpoint_every_n_steps=5")
    straight_metrics = train(train_config(*common, output_dir=tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit):  # Lightning exits after a graceful Ctrl-C shutdown
        train(train_config(*common, output_dir=interrupted), extra_callbacks=[InterruptAtStep(22)])
    assert not (interrupted / "COMPLETE").exists()
    assert not (interrupted / "sae_weights.safetensors").exists()
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()  # saved at step 20, mid-epoch

    metrics = train(train_config(*common, "resume=true", output_dir=interrupted))
    assert (interrupted / "COMPLETE").exists()
    assert metrics["steps"] == 32  # 2 epochs x 16 batches
    straight = (tmp_path / "straight" / "sae_weights.safetensors").read_bytes()
    assert (interrupted / "sae_weights.safetensors").read_bytes() == straight
    # The held-out curve keeps the points taken before the interruption (steps 8 and 16) and
    # takes the rest after it, as the straight run did.
    assert list(metrics["heldout_fvu_curve"]) == ["0.25", "0.5", "0.75", "1"]
    assert metrics["heldout_fvu_curve"] == straight_metrics["heldout_fvu_curve"]


def test_resume_with_another_seed_is_refused(train_config, tmp_path):
    common = ("logger=none", "trainer.checkpoint_every_n_steps=5")
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit):
        train(train_config("seed=3", *common, output_dir=interrupted), [InterruptAtStep(7)])
    with pytest.raises(ValueError, match="Resume with the same seed"):
        train(train_config("seed=4", "resume=true", *common, output_dir=interrupted))
    assert not (interrupted / "COMPLETE").exists()


def test_resume_without_a_checkpoint_is_a_clear_error(train_config, tmp_path):
    from saeseeds.errors import ConfigError

    with pytest.raises(ConfigError, match="resume=true but .*last.ckpt does not exist"):
        train(train_config("resume=true", "logger=none"))


@pytest.mark.parametrize(
    ("option", "instead"),
    [
        ("accumulate_grad_batches=2", "data.batch_size"),
        ("limit_train_batches=5", "trainer.max_steps"),
        ("gradient_clip_algorithm=value", "sae.grad_clip"),
    ],
)
def test_lightning_options_that_count_steps_are_refused_before_training(
    train_config, tmp_path, option, instead
):
    from saeseeds.errors import ConfigError

    name = option.split("=")[0]
    cfg = train_config("logger=none", f"+trainer.kwargs.{option}", output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=f"trainer.kwargs.{name}=.* is not supported.*{instead}"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
