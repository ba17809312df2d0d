"""Hook points: from the ``hook=`` config to a validated TransformerLens hook, and the two model
runs a hook needs.

Owns the hook-name convention (``blocks.{layer}.hook_{point}``), checking a hook against a model
(layer range from its config before loading; the name against the bridge's hook points after), and
running the model either only up to the hook (to read activations) or in full with the activations
at the hook replaced (to score a reconstruction). It must not know about corpora, caches or SAEs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saeseeds.config.hook import HOOK_POINTS, HookConfig
from saeseeds.errors import DataError

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class HookSpec:
    """A hook name and the block it sits in (``None`` for hooks outside the blocks)."""

    name: str
    layer: int | None

    @property
    def is_resid_pre(self) -> bool:
        return self.layer is not None and self.name == f"blocks.{self.layer}.hook_resid_pre"


def resolve_hook(config: HookConfig | dict[str, Any]) -> HookSpec:
    if isinstance(config, dict):
        config = HookConfig(**config)
    match = _BLOCK_HOOK.match(config.name)
    return HookSpec(name=config.name, layer=int(match.group(1)) if match else None)


def check_layer(hook: HookSpec, n_layers: int | None, model_name: str) -> None:
    """Early check from the model's config: the hook's block exists."""
    if hook.layer is None or n_layers is None:
        return
    if not 0 <= hook.layer < n_layers:
        raise DataError(
            f"hook.layer={hook.layer} is out of range for {model_name}, which has {n_layers} "
            f"layers: valid layers are 0 to {n_layers - 1} ({hook.name!r})."
        )


def check_hook_exists(hook: HookSpec, bridge: Any, model_name: str) -> None:
    """Authoritative check against the bridge's hook points; the error lists valid names."""
    hook_names = set(bridge.hook_dict)
    if hook.name in hook_names:
        return
    n_layers = int(bridge.cfg.n_layers)
    check_layer(hook, n_layers, model_name)
    if hook.layer is not None:
        prefix = f"blocks.{hook.layer}.hook_"
        valid = sorted(name for name in hook_names if name.startswith(prefix))
        points = sorted({name.removeprefix(prefix) for name in valid} & set(HOOK_POINTS))
        raise DataError(
            f"{model_name} has no hook {hook.name!r}. Hook points it offers at every layer: "
            f"{', '.join(points)} (hook.point); all hooks of block {hook.layer}: "
            f"{', '.join(valid)}."
        )
    raise DataError(
        f"{model_name} has no hook {hook.name!r}. Block hooks look like "
        f"blocks.<layer>.hook_<point>, with layer 0..{n_layers - 1} and point one of "
        f"{', '.join(HOOK_POINTS)}."
    )


@torch.no_grad()
def read_activations(bridge: Any, hook: HookSpec, tokens: Tensor) -> Tensor:
    """Activations at the hook [batch, pos, d], running the model only as far as the hook needs."""
    if hook.is_resid_pre:
        # The residual stream entering block L is exactly what the model returns when stopped
        # before block L, so blocks L.. are never run.
        return bridge(tokens, stop_at_layer=hook.layer)
    captured: list[Tensor] = []

    def capture(activation: Tensor, hook: Any) -> None:
        captured.append(activation.detach())

    stop = hook.layer + 1 if hook.layer is not None else None
    bridge.run_with_hooks(
        tokens, fwd_hooks=[(hook.name, capture)], stop_at_layer=stop, return_type=None
    )
    if len(captured) != 1 or captured[0].dim() != 3:
        shapes = [tuple(t.shape) for t in captured]
        raise DataError(
            f"Hook {hook.name!r} gave {len(captured)} tensors of shapes {shapes}; an SAE needs "
            "one [batch, pos, d] activation per forward pass. Pick another hook."
        )
    return captured[0]


@torch.no_grad()
def logits_with_replacement(
    bridge: Any, hook: HookSpec, tokens: Tensor, replace: Callable[[Tensor], Tensor] | None
) -> Tensor:
    """Full-model logits [batch, pos, vocab], with the hook's activations passed through
    ``replace`` ([batch, pos, d] -> [batch, pos, d]); ``None`` runs the clean model."""
    if replace is None:
        return bridge(tokens, return_type="logits")

    def splice(activation: Tensor, hook: Any) -> Tensor:
        return replace(activation).to(activation.dtype)

    return bridge.run_with_hooks(tokens, fwd_hooks=[(hook.name, splice)], return_type="logits")
