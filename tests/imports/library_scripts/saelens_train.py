"""Run with SAE Lens 6's own python by ``tests/imports/test_libraries.py`` (not collected).

    python saelens_train.py OUT

Builds a tiny HookedTransformer (random, local) and a token dataset, then trains, with SAE Lens's
own runner, every architecture it saves with seeds 1 and 2 (``OUT/<architecture>/seed<N>``) and
one scaled BatchTopK run that also writes a mid-training checkpoint (``OUT/checkpoints/...``).
Writes the hook's activations on held-out tokens (``OUT/heldout.safetensors``) and, for every SAE
folder, SAE Lens's own latents and reconstruction of them (``OUT/outputs/<index>.safetensors``,
listed in ``OUT/outputs.json``). A checkpoint's outputs are those of the SAE SAE Lens saves from
it at the end of training: the scaling factor folded in, then ``save_inference_model``.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import LoggingConfig
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

OUT = Path(sys.argv[1])
D_MODEL, D_SAE, CONTEXT, HOOK = 16, 32, 32, "blocks.0.hook_resid_post"
SAES = {
    "standard": lambda: StandardTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, l1_coefficient=1.0),
    "gated": lambda: GatedTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, l1_coefficient=1.0),
    "jumprelu": lambda: JumpReLUTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE),
    "topk": lambda: TopKTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=4),
    "batchtopk": lambda: BatchTopKTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=4),
    "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_MODEL, d_sae=D_SAE, k=4, matryoshka_widths=[8, D_SAE]
    ),
}

torch.manual_seed(0)
model = HookedTransformer(
    HookedTransformerConfig(
        n_layers=1, d_model=D_MODEL, n_ctx=CONTEXT, d_head=8, n_heads=2, d_vocab=64,
        act_fn="gelu", seed=0,
    )
)  # fmt: skip
tokens = torch.randint(1, 64, (160, CONTEXT), generator=torch.Generator().manual_seed(0))
dataset = Dataset.from_dict({"input_ids": tokens[:128].tolist()})
with torch.no_grad():
    _, cache = model.run_with_cache(tokens[128:], names_filter=HOOK)
heldout = cache[HOOK].reshape(-1, D_MODEL).contiguous()  # [1024, d_model]
OUT.mkdir(parents=True, exist_ok=True)
save_file({"activations": heldout}, OUT / "heldout.safetensors")


def train(sae_config, seed: int, output: Path, **options) -> None:
    torch.manual_seed(seed)  # SAE Lens does not seed the SAE's initialisation itself
    config = LanguageModelSAERunnerConfig(
        sae=sae_config, model_name="tiny-hooked", hook_name=HOOK, dataset_path="local/tiny",
        is_dataset_tokenized=True, context_size=CONTEXT, prepend_bos=False,
        training_tokens=2048, train_batch_size_tokens=128, store_batch_size_prompts=4,
        n_batches_in_buffer=4, seed=seed, output_path=str(output), device="cpu",
        logger=LoggingConfig(log_to_wandb=False), **{"checkpoint_path": None, **options},
    )  # fmt: skip
    LanguageModelSAETrainingRunner(config, override_model=model, override_dataset=dataset).run()


for name, make in SAES.items():
    for seed in (1, 2):
        train(make(), seed, OUT / name / f"seed{seed}")
scaled = BatchTopKTrainingSAEConfig(
    d_in=D_MODEL, d_sae=D_SAE, k=4, normalize_activations="expected_average_only_in"
)
train(scaled, 3, OUT / "batchtopk_scaled", n_checkpoints=1,
      checkpoint_path=str(OUT / "checkpoints"), n_batches_for_norm_estimate=4)  # fmt: skip

folders = sorted(path.parent for path in OUT.rglob("cfg.json"))
(OUT / "outputs").mkdir()
listing = {}
with torch.no_grad():
    for index, folder in enumerate(folders):
        if (folder / "activation_scaler.json").is_file():  # a checkpoint: as saved at the end
            training_sae = TrainingSAE.load_from_disk(folder)
            factor = json.loads((folder / "activation_scaler.json").read_text())["scaling_factor"]
            training_sae.fold_activation_norm_scaling_factor(factor)
            with tempfile.TemporaryDirectory() as saved:
                training_sae.save_inference_model(saved)
                sae = SAE.load_from_disk(saved)
        else:
            sae = SAE.load_from_disk(folder)
        latents = sae.encode(heldout)
        outputs = {"z": latents.contiguous(), "x_hat": sae.decode(latents).contiguous()}
        save_file(outputs, OUT / "outputs" / f"{index}.safetensors")
        listing[str(folder)] = {"index": index, "class": type(sae).__name__}
(OUT / "outputs.json").write_text(json.dumps(listing, indent=1))
print(json.dumps({"folders": len(folders)}))
