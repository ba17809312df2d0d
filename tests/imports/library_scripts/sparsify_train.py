"""Run with eai-sparsify's own python by ``tests/imports/test_libraries.py`` (not collected).

    python sparsify_train.py OUT

Builds a tiny GPT-2 (random, saved to ``OUT/model``) and a token dataset, then trains SAEs on two
hookpoints with ``init_seeds=[1, 2]`` through sparsify's ``Trainer``, with the config its command
line builds (``RunConfig``: model, dataset, context length, ...); its command line itself loads
models onto CUDA only. The run lands in ``OUT/checkpoints/tiny``. Writes the first hookpoint's
activations on held-out tokens (``OUT/heldout.npy``) and sparsify's own latents and
reconstruction of them for each SAE folder (``OUT/outputs/<hookpoint>-<seed>.safetensors``).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig, Trainer
from sparsify.__main__ import RunConfig
from transformers import GPT2Config, GPT2Model

OUT = Path(sys.argv[1])
CONTEXT, HOOKPOINTS = 32, ["h.0", "h.1"]

torch.manual_seed(0)
model = GPT2Model(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=CONTEXT, vocab_size=64))
model.save_pretrained(OUT / "model")
tokens = torch.randint(0, 64, (96, CONTEXT), generator=torch.Generator().manual_seed(0))
dataset = Dataset.from_dict({"input_ids": tokens[:64].tolist()}).with_format("torch")
config = RunConfig(
    sae=SparseCoderConfig(num_latents=32, k=4), model=str(OUT / "model"), dataset="local/tiny",
    ctx_len=CONTEXT, init_seeds=[1, 2], hookpoints=HOOKPOINTS, batch_size=4, optimizer="adam",
    lr_warmup_steps=2, log_to_wandb=False, save_dir=str(OUT / "checkpoints"), run_name="tiny",
    save_every=10_000,
)  # fmt: skip
Trainer(config, dataset, model).fit()

with torch.no_grad():
    hidden = model(tokens[64:], output_hidden_states=True).hidden_states[1]  # h.0's output
heldout = hidden.reshape(-1, hidden.shape[-1]).contiguous()  # [1024, 16]
np.save(OUT / "heldout.npy", heldout.numpy())
(OUT / "outputs").mkdir()
with torch.no_grad():
    for hook in HOOKPOINTS:
        for seed in (1, 2):
            sae = SparseCoder.load_from_disk(OUT / "checkpoints/tiny" / hook / f"seed{seed}")
            top_acts, top_indices, _ = sae.encode(heldout)
            z = torch.zeros(len(heldout), sae.num_latents).scatter(-1, top_indices, top_acts)
            x_hat = sae.decode(top_acts, top_indices)
            save_file({"z": z, "x_hat": x_hat}, OUT / "outputs" / f"{hook}-{seed}.safetensors")
print("trained")
