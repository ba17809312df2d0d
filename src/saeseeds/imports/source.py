"""One SAE read from another library, in the contract's form, with what its files say about it.

Owns :class:`ImportedSAE` (what a library reader hands to the writer), the checked reading of a
foreign folder's JSON and safetensors files, and :func:`fold_into_contract`: the rewrite of a
library's encoder/decoder conventions (input scaling, whether ``b_dec`` is subtracted before
encoding, decoder-norm rescaling of the latents) into the contract's one rule,

    pre = (x − b_dec)·W_enc + b_enc,    x̂ = z·W_dec + b_dec,

so that latents and reconstructions computed from the written weights equal the library's on the
same raw input. It knows no library's file layout (that is :mod:`.saelens` and :mod:`.sparsify`)
and writes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from saeseeds.errors import DataError

# Latent rules of imported runs, beyond the trainer's topk / relu_l1 / batchtopk (docs/contract.md).
# Each name is cfg.json's ``architecture``; the tensors it needs beyond W_enc, b_enc, W_dec, b_dec.
EXTRA_TENSORS: dict[str, tuple[str, ...]] = {
    "topk": (),
    "relu_l1": (),
    "jumprelu": ("threshold",),
    "gated": ("b_mag", "r_mag"),
    "groupmax": (),
}


@dataclass
class ImportedSAE:
    """An SAE from another library, ready to be written as a contract run folder."""

    library: str
    """``saelens`` or ``sparsify``."""
    library_version: str | None
    """The library version the source recorded, or None where it records none."""
    source_dir: Path
    weights_file: Path
    seed: int
    seed_origin: str
    """Where the seed came from, in words (``runner_cfg.json``, ``folder name seed2``, ...)."""
    architecture: str
    """The contract latent rule (a key of :data:`EXTRA_TENSORS`)."""
    source_architecture: str
    """The architecture the library trained (``batchtopk``, ``matryoshka_batchtopk``, ...)."""
    tensors: dict[str, torch.Tensor]
    """W_enc [d_in, n], b_enc [n], W_dec [n, d_in], b_dec [d_in] and the rule's extras, float32."""
    k: int | None
    model_name: str
    hook_name: str
    activation_dtype: str
    input_scale: float
    """The input scaling folded in at import (1.0 when none, or when the library folded it)."""
    source_condition: dict[str, Any]
    """The source's own configuration (``sae``, ``training``) without per-run and operational
    values, and without the model and hook names (the run config has them): equal for every seed
    of one source run. The run config holds its digest (:func:`.writer.run_config`)."""
    data_identity: dict[str, Any]
    """What the source records about the training data (model, hook, dataset, context, ...)."""
    source_cfg: dict[str, Any]
    source_training_cfg: dict[str, Any] | None
    conversions: list[str] = field(default_factory=list)
    """What was rewritten to reach the contract's form, in words."""
    seeds_trained_together: list[int] | None = None

    @property
    def d_in(self) -> int:
        return int(self.tensors["W_dec"].shape[1])

    @property
    def n_features(self) -> int:
        return int(self.tensors["W_dec"].shape[0])

    @property
    def run_name(self) -> str:
        """The run folder's path inside the destination:
        ``<hook>/<source architecture>-<n_features>/seed=<seed>``."""
        kind = f"{self.source_architecture}-{self.n_features}"
        return f"{safe_name(self.hook_name)}/{safe_name(kind)}/seed={self.seed}"


def safe_name(text: str) -> str:
    """A folder name for a hook or hookpoint name: path separators and spaces replaced."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text) or "unknown"


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a :class:`DataError` naming the file when it is not one."""
    if not path.is_file():
        raise DataError(f"{path.parent} has no {path.name} ({what})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path} is not a JSON object")
    return payload


def _refuse_constant(name: str) -> Any:
    # The run folder's JSON files are strict; a source's NaN would end up in them.
    raise ValueError(f"{name} is not a JSON number")


def read_tensors(path: Path, required: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, as float32; ``required`` ones must be present."""
    if not path.is_file():
        raise DataError(f"{path.parent} has no {path.name} (the SAE's weights)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            missing = [name for name in required if name not in names]
            if missing:
                raise DataError(f"{path} lacks tensor(s) {', '.join(missing)}; it holds {names}")
            tensors = {name: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise DataError(f"{path}: tensor {name} is {tensor.dtype}; expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{path}: tensor {name} contains NaN or infinite values")
    return {name: tensor.float() for name, tensor in tensors.items()}


def check_shapes(path: Path, tensors: dict[str, torch.Tensor], d_in: int, n: int) -> None:
    """Every tensor has the shape the contract gives it for this ``d_in`` and ``n``."""
    expected = {"W_enc": (d_in, n), "W_dec": (n, d_in), "b_dec": (d_in,)}
    for name, tensor in tensors.items():
        shape = expected.get(name, (n,))
        if tuple(tensor.shape) != shape:
            raise DataError(
                f"{path}: tensor {name} has shape {list(tensor.shape)}; the config's "
                f"d_in={d_in}, n_features={n} imply {list(shape)}"
            )


def positive_int(value: Any, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{path}: {name}={value!r} must be a positive integer")
    return value


def without(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``config`` without the top-level ``keys``."""
    return {key: value for key, value in config.items() if key not in keys}


def fold_into_contract(
    tensors: dict[str, torch.Tensor],
    *,
    input_scale: float = 1.0,
    b_dec_subtracted: bool = True,
    rescale_by_decoder_norm: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Weights that give the library's latents and reconstruction under the contract's rule.

    The library computed, on raw x, with s = ``input_scale`` and a = ``b_dec_subtracted``:
    h = (s·x − a·b_dec)·W_enc + b_enc, times ‖W_dec_i‖ per latent when
    ``rescale_by_decoder_norm``; it decoded x̂ = (z/‖W_dec_i‖)·W_dec + b_dec in units of s·x.
    The rewrite is the one SAE Lens applies when it saves an SAE at the end of training: first
    the shift b_enc ← b_enc + (1 − a)·b_dec·W_enc (for a gated SAE also
    b_mag ← b_mag + (1 − a)·b_dec·W_enc·exp(r_mag)); then the input scale, W_enc ← s·W_enc,
    W_dec ← W_dec/s, b_dec ← b_dec/s;
    then the norms m_i of the scaled decoder rows, W_enc ← m_i·W_enc, b_enc ← m_i·b_enc,
    W_dec ← W_dec/m_i, with thresholds divided by s. The contract's latents are then h, or h/s
    where latents were rescaled (as in SAE Lens's saved SAE), and x̂ is in raw units. With
    nothing to fold the tensors are returned unchanged.
    """
    steps = []
    if not b_dec_subtracted:
        steps.append("b_dec was not subtracted before encoding: b_dec·W_enc added to b_enc")
    if input_scale != 1.0:
        steps.append(f"input scaling s={input_scale:.6g} folded in (W_enc·s, W_dec/s, b_dec/s)")
    if rescale_by_decoder_norm:
        steps.append("latents were scaled by decoder-row norms: the norms folded into the weights")
    if not steps:
        return dict(tensors), []
    w = {name: tensor.double() for name, tensor in tensors.items()}
    if not b_dec_subtracted:
        shift = w["b_dec"] @ w["W_enc"]  # [n]
        w["b_enc"] = w["b_enc"] + shift
        if "b_mag" in w:
            w["b_mag"] = w["b_mag"] + shift * w["r_mag"].exp()
    w["W_enc"] = w["W_enc"] * input_scale
    w["W_dec"] = w["W_dec"] / input_scale
    w["b_dec"] = w["b_dec"] / input_scale
    if rescale_by_decoder_norm:
        norms = w["W_dec"].norm(dim=1).clamp_min(1e-8)  # [n], of the scaled decoder
        w["W_enc"] = w["W_enc"] * norms
        w["b_enc"] = w["b_enc"] * norms
        w["W_dec"] = w["W_dec"] / norms[:, None]
        if "threshold" in w:
            w["threshold"] = w["threshold"] / input_scale
    return {name: tensor.float().contiguous() for name, tensor in w.items()}, steps
