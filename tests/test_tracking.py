"""W&B runs online when credentials exist, offline otherwise, and as the user says."""

from __future__ import annotations

import pytest

from saeseeds.tracking import offline_hint, resolve_wandb_mode


def test_auto_mode_follows_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


def test_explicit_and_environment_modes(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.mode='sometimes' is not valid"):
        resolve_wandb_mode("sometimes")
    assert "wandb sync" in offline_hint("/runs/x")
