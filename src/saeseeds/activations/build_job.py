"""One job of ``build_store.py``: build (or extend) the activation store of a text data config, or
one part of it, without training.

The shards a budget of ``data.n_tokens`` needs are split into ``store.parts`` contiguous ranges
and this job builds range ``store.part``; a Hydra multirun over the parts (joblib on one machine,
submitit on a cluster) builds them side by side, and the store is byte for byte the one a single
process would write. Everything else (locks, resuming, atomic files) is :mod:`.store_build`'s.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from saeseeds.activations.store import summary
from saeseeds.activations.store_build import ensure_store, shards_for
from saeseeds.activations.text import TextActivationSource
from saeseeds.config.validation import thread_count
from saeseeds.errors import ConfigError, DataError

log = logging.getLogger(__name__)
# Fields of the data group that only training reads.
TRAINING_ONLY = ("control", "control_seed", "window_shards", "batch_size")


def check_parts(part: Any, parts: Any) -> None:
    """``store.part`` is one of ``store.parts`` parts."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"store.parts={parts!r} must be a positive integer.")
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < parts:
        raise ConfigError(f"store.part={part!r} must be in 0..{parts - 1} (store.parts={parts}).")


def part_range(n_shards: int, part: int, parts: int) -> range:
    """Shards of part ``part`` of ``parts``: contiguous, disjoint, covering 0 .. n_shards−1."""
    check_parts(part, parts)
    return range(n_shards * part // parts, n_shards * (part + 1) // parts)


def build_store(cfg: DictConfig) -> dict[str, Any]:
    """Build this job's part of the store of ``cfg.data``; returns :func:`summary` of the store."""
    # Refused before any work: the part and the thread count.
    check_parts(cfg.store.part, cfg.store.parts)
    threads = thread_count(cfg.get("threads"))
    if threads is not None:
        torch.set_num_threads(threads)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for name in TRAINING_ONLY:
        data.pop(name, None)
    data["store"] = True
    data.setdefault("batch_size", 1)
    if "TextActivationSource" not in str(data.get("_target_")):
        raise ConfigError(
            f"build_store.py builds stores of text data (data=pydocs, pysource, text_files, "
            f"hf_dataset); {data.get('_target_')} needs none."
        )
    try:
        source: TextActivationSource = instantiate(data, _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise
    store_cfg = cfg.store
    builder = source.builder()
    shards = part_range(
        shards_for(source.n_tokens, source.shard_tokens), store_cfg.part, store_cfg.parts
    )
    log.info(
        "Part %d of %d: shards %d..%d of %s at %s on %s",
        store_cfg.part,
        store_cfg.parts,
        shards.start,
        shards.stop - 1,
        builder.model.name,
        source.hook.name,
        source.corpus_identity()["kind"],
    )
    store, built = ensure_store(
        source.cache_dir, builder, source.n_tokens, shards, progress=store_cfg.progress
    )
    report = summary(store.folder)
    report["built_by_this_job"] = built
    print(json.dumps({k: v for k, v in report.items() if k != "key_fields"}, indent=2))
    return report
