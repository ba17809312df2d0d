"""The Top-K SAE of Gao et al. (2024), "Scaling and evaluating sparse autoencoders".

z = ReLU(TopK_k(W_encᵀ(x − b_dec) + b_enc)), x̂ = W_decᵀ z + b_dec, with unit-norm decoder rows;
loss = MSE + AuxK/32. The whole training forward runs as one autograd function whose backward
touches only the chosen latents, decoding densely or sparsely by size
(:class:`saeseeds.sae.fused_topk.TopKAutoencoder`), except under bf16 autocast on a CUDA GPU up
to 16,384 latents, where plain autograd measured faster
(:func:`saeseeds.sae.fused_topk.fused_pays`). ``fused_encoder`` True or False forces either;
False is the plain autograd reference path.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeseeds.sae.base import SAE, SAEOutput
from saeseeds.sae.configs import TopKConfig
from saeseeds.sae.fused_topk import TopKAutoencoder, fused_pays, use_dense
from saeseeds.sae.kernels import (
    auxk_k,
    auxk_loss,
    encoder_pre_activations,
    normalize_rows,
    remove_parallel_grad,
    sparse_decode,
    squared_error,
    tied_init,
)


class UnitNormDecoder:
    """The decoder constraint of the architectures with ``sae.unit_norm_decoder`` (a mixin
    listed before :class:`SAE`): unit-norm rows, the gradient's parallel part removed first."""

    W_dec: torch.nn.Parameter
    config: Any

    def before_optimizer_step(self) -> None:
        if self.config.unit_norm_decoder:
            remove_parallel_grad(self.W_dec)

    def after_optimizer_step(self) -> None:
        if self.config.unit_norm_decoder:
            normalize_rows(self.W_dec)


class TopKSAE(UnitNormDecoder, SAE):
    architecture = "topk"
    Config = TopKConfig
    config: TopKConfig

    def __init__(self, d_in: int, config: TopKConfig, fused_encoder: bool | None = None):
        super().__init__(d_in, config)
        self.k = config.k
        # The training forward as one autograd function with a sparse backward (TopKAutoencoder);
        # False keeps plain autograd through the dense pre-activations, the reference path; None
        # picks the faster for the device (fused_pays).
        self.fused_encoder = fused_encoder

    def initialize(self, activation_sample: Tensor, generator: torch.Generator) -> None:
        tied_init(self, activation_sample, generator, norm=1.0)

    def cfg_fields(self) -> dict[str, Any]:
        return {"k": self.k}

    # ---- forward pieces ----
    def pre_activations(self, x: Tensor) -> Tensor:  # [batch, n_features]
        return encoder_pre_activations(x, self.W_enc, self.b_enc, self.b_dec)

    def decode_latents(
        self, values: Tensor, indices: Tensor, decoder: Tensor, bias: bool = True
    ) -> Tensor:
        # AuxK's values too (bias False) scatter over every latent here, so the main rule applies.
        rows, device_type = values.shape[0], values.device.type
        if not use_dense(
            self.n_features, values.shape[1], self.config.sparse_decoder, rows, device_type
        ):
            out = sparse_decode(values, indices, decoder)
        else:
            dense = torch.zeros(
                values.shape[0], self.n_features, dtype=values.dtype, device=values.device
            ).scatter_(-1, indices, values)
            out = dense @ decoder
        return out + self.b_dec if bias else out

    def encode(self, x: Tensor) -> Tensor:
        values, indices = self.pre_activations(x).topk(self.k, dim=-1, sorted=False)
        dense = torch.zeros_like(self.b_enc).expand(x.shape[0], -1)
        return dense.scatter(-1, indices, F.relu(values))

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SAEOutput:
        dead_latents = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None  # [n_dead]
        n_dead = len(dead_latents) if dead_latents is not None else 0
        k_aux = auxk_k(self.d_in, n_dead)
        decoder = self.trained_decoder()  # [n_features, d_in]
        fused = self.fused_encoder
        if fused is None:
            fused = fused_pays(len(x), self.n_features, x.device.type)
        if fused:
            values, indices, reconstruction, aux_reconstruction = TopKAutoencoder.apply(
                x, self.W_enc, self.b_enc, decoder, self.b_dec, self.k, dead_latents, k_aux,
                self.config.sparse_decoder,
            )  # fmt: skip
        else:
            top_pre, indices, aux_pre, aux_indices = self.select_with_autograd(x, dead_mask, k_aux)
            values = F.relu(top_pre)  # [batch, k]
            reconstruction = self.decode_latents(values, indices, decoder)
            if n_dead > 0:
                aux_values = F.relu(aux_pre)
                aux_reconstruction = self.decode_latents(aux_values, aux_indices, decoder, False)
        error = squared_error(x, reconstruction)
        aux = x.new_zeros(())
        if n_dead > 0:
            aux = auxk_loss(aux_reconstruction, error.difference, n_dead, self.d_in)
        losses = {"mse": error.mean, "auxk": self.config.auxk_alpha * aux}
        return SAEOutput(reconstruction, values, indices, losses, error.total)

    def select_with_autograd(
        self, x: Tensor, dead_mask: Tensor | None, k_aux: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """TopKAutoencoder's selection by plain autograd: its backward is dense in n_features."""
        pre = self.pre_activations(x)  # [batch, n_features]
        top_pre, indices = pre.topk(self.k, dim=-1, sorted=False)
        if k_aux == 0:
            return top_pre, indices, top_pre[:, :0], indices[:, :0]
        aux_pre, aux_indices = pre.masked_fill(~dead_mask, -math.inf).topk(k_aux, sorted=False)
        return top_pre, indices, aux_pre, aux_indices
