"""Hook points: from the ``hook=`` config to a validated TransformerLens hook, and the two model
runs a hook needs.

Owns the hook-name convention (``blocks.{layer}.hook_{point}``), checking a hook against a model
(layer range from its config before loading; the name against the bridge's hook points after), and
running the model either only up to the hook (to read activations) or in full with the activations
at the hook replaced (to score a reconstruction). It must not know about corpora, caches or SAEs.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator
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
    bridge: Any,
    hook: HookSpec,
    tokens: Tensor,
    replace: Callable[[Tensor], Tensor] | None,
    resume_from: Tensor | None = None,
) -> Tensor:
    """Full-model logits [batch, pos, vocab], with the hook's activations passed through
    ``replace`` ([batch, pos, d] -> [batch, pos, d]); ``None`` runs the clean model.

    ``resume_from``: what enters the hook's block for these ``tokens``
    (:func:`logits_and_block_input`); the blocks below it are then not run. Use it only where
    :func:`resumes_exactly` holds."""
    if replace is None:
        return bridge(tokens, return_type="logits")

    def splice(activation: Tensor, hook: Any) -> Tensor:
        return replace(activation).to(activation.dtype)

    if resume_from is None:
        return bridge.run_with_hooks(tokens, fwd_hooks=[(hook.name, splice)], return_type="logits")
    with _blocks_passed_through(bridge, hook.layer):
        return bridge.run_with_hooks(
            # A copy: TransformerLens hands the tensor to the model as its input embeddings, and
            # a model may scale those in place (CTRL does), which would change the kept input.
            resume_from.clone(),
            start_at_layer=hook.layer,
            fwd_hooks=[(hook.name, splice)],
            return_type="logits",
        )


# ---- resuming a forward at the hook's block ----
#
# Scoring a reconstruction runs the whole model once per job on the same held-out tokens, and
# the blocks below the hook compute the same thing every time. The clean forward keeps what
# enters the hook's block (:func:`logits_and_block_input`); a spliced forward then starts there
# (``start_at_layer``) with the blocks below passing their input through untouched, instead of
# recomputing what TransformerLens's ``start_at_layer`` would still compute and throw away.
# Whether that gives the full forward's very logits depends on how the model's own loop calls
# its blocks, so it is checked once per model, hook and precision (:func:`resumes_exactly`), and
# a model that does not pass the check is run in full.

_RESUMES_EXACTLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def block_input_hook(bridge: Any, hook: HookSpec) -> str | None:
    """The hook point of what enters the hook's block, when a forward can resume there."""
    if hook.layer is None or hook.layer == 0:
        return None  # outside the blocks, or nothing below it to skip
    name = f"blocks.{hook.layer}.hook_in"
    return name if name in bridge.hook_dict else None


@torch.no_grad()
def logits_and_block_input(
    bridge: Any, hook: HookSpec, tokens: Tensor
) -> tuple[Tensor, Tensor | None]:
    """The clean logits [batch, pos, vocab] and what enters the hook's block [batch, pos, d]
    (None where no forward can resume there; :func:`block_input_hook`)."""
    name = block_input_hook(bridge, hook)
    if name is None:
        return bridge(tokens, return_type="logits"), None
    captured: list[Tensor] = []

    def capture(activation: Tensor, hook: Any) -> None:
        captured.append(activation.detach().clone())

    logits = bridge.run_with_hooks(tokens, fwd_hooks=[(name, capture)], return_type="logits")
    return logits, captured[0] if len(captured) == 1 else None


@torch.no_grad()
def resumes_exactly(bridge: Any, hook: HookSpec, tokens: Tensor) -> bool:
    """Whether a spliced forward resumed at the hook's block gives the full forward's logits,
    bit for bit, on ``tokens`` (a short probe: a few tokens of one sequence), and leaves the
    model as it was; checked once per model, hook and autocast setting in a process."""
    device_type = tokens.device.type
    autocast = torch.is_autocast_enabled(device_type) if device_type in ("cpu", "cuda") else False
    key = (hook.name, device_type, autocast)
    known = _RESUMES_EXACTLY.setdefault(bridge, {})
    if key not in known:
        known[key] = _check_resume(bridge, hook, tokens)
    return known[key]


def _check_resume(bridge: Any, hook: HookSpec, tokens: Tensor) -> bool:
    if block_input_hook(bridge, hook) is None:
        return False

    def halve(activation: Tensor) -> Tensor:  # any replacement that changes what follows
        return activation * 0.5

    clean, block_input = logits_and_block_input(bridge, hook, tokens)
    if block_input is None:
        return False
    full = logits_with_replacement(bridge, hook, tokens, halve)
    try:
        resumed = logits_with_replacement(bridge, hook, tokens, halve, resume_from=block_input)
    except Exception:  # noqa: BLE001 - any model the pass-through does not suit runs in full
        return False
    same = resumed.shape == full.shape and bool(torch.equal(resumed, full))
    # ... and the model is as it was: its clean forward is unchanged.
    return same and bool(torch.equal(bridge(tokens, return_type="logits"), clean))


@contextlib.contextmanager
def _blocks_passed_through(bridge: Any, below: int) -> Iterator[None]:
    """Blocks 0 .. ``below`` - 1 hand on their input unchanged while inside."""
    skipped = list(bridge.blocks)[:below]
    # An instance attribute, which nn.Module's call finds before the class's forward. Set past
    # the bridge's own __setattr__, which would hand it on to the wrapped Hugging Face module;
    # one set on the instance already (a user's patch, accelerate's) is put back after.
    before = [block.__dict__.get("forward") for block in skipped]
    for block in skipped:
        object.__setattr__(block, "forward", _pass_through)
    try:
        yield
    finally:
        for block, forward in zip(skipped, before, strict=True):
            if forward is None:
                object.__delattr__(block, "forward")
            else:
                object.__setattr__(block, "forward", forward)


def _pass_through(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]
