"""heldout_codes.safetensors: the trained SAE's latents on the first held-out tokens, for the
analysis's functional agreement of matched features (docs/contract.md).

The latents are the contract's (the folded SAE on raw activations, in eval mode: the rule
``feature_stats.safetensors`` counts firings with), stored sparse as CSR: ``indptr`` int64
[n + 1], ``indices`` int32 [nnz] (increasing within a row), ``values`` float32 [nnz], only
latents > 0. The rows are the first ``n`` of the held-out split, the same rows for every seed of
a condition; ``heldout_identity`` (a SHA-256 of those rows' float32 values and shape) lets the
analysis check that two runs' codes are on the same activations. This module writes one file and
reads nothing of the run folder.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeseeds import contract
from saeseeds.io import atomic_save_safetensors
from saeseeds.sae import SAE


def heldout_identity(rows: Tensor) -> str:
    """SHA-256 of the rows' shape and float32 values (little-endian): equal for equal rows."""
    values = np.ascontiguousarray(rows.detach().cpu().float().numpy(), dtype="<f4")
    digest = hashlib.sha256(f"{values.shape[0]}x{values.shape[1]}:".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


@torch.no_grad()
def sparse_codes(sae: SAE, rows: Tensor, batch_size: int) -> dict[str, Tensor]:
    """CSR tensors of the latents > 0 of ``rows`` [n, d_in] (raw activations, folded SAE)."""
    indptr, indices, values = [torch.zeros(1, dtype=torch.int64)], [], []
    device = sae.W_dec.device
    for start in range(0, len(rows), batch_size):
        output = sae(rows[start : start + batch_size].to(device).float())
        fired = output.latent_values > 0  # [batch, width]
        row_of = torch.nonzero(fired)[:, 0]
        latent = output.latent_indices[fired].long()
        order = torch.argsort(row_of * sae.n_features + latent)  # increasing latent in a row
        indices.append(latent[order].to(torch.int32).cpu())
        values.append(output.latent_values[fired][order].float().cpu())
        counts = fired.sum(1).cpu()
        indptr.append(indptr[-1][-1] + counts.cumsum(0))
    return {
        "indptr": torch.cat(indptr),
        "indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int32),
        "values": torch.cat(values) if values else torch.zeros(0),
    }


def write_heldout_codes(
    run_dir: Path, sae: SAE, heldout: Tensor, batch_size: int, n_tokens: int
) -> dict[str, Any]:
    """Write the codes of the first ``n_tokens`` held-out rows; returns metrics.json's
    ``heldout_codes`` entry (tokens, non-zeros, bytes, seconds), or {} when ``n_tokens`` is 0."""
    if n_tokens <= 0 or len(heldout) == 0:
        return {}
    started = time.perf_counter()
    rows = heldout[:n_tokens]
    was_training = sae.training
    sae.eval()
    try:
        codes = sparse_codes(sae, rows, batch_size)
    finally:
        sae.train(was_training)
    path = Path(run_dir) / contract.HELDOUT_CODES_FILE
    metadata = {
        "n_tokens": str(len(rows)),
        "n_features": str(sae.n_features),
        "heldout_identity": heldout_identity(rows),
        "saeseeds_contract_version": str(contract.CONTRACT_VERSION),
    }
    atomic_save_safetensors(path, codes, metadata)
    return {
        "heldout_codes": {
            "n_tokens": len(rows),
            "nonzeros": int(len(codes["values"])),
            "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 3),
        }
    }
