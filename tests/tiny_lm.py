"""A tiny real causal language model and tokenizer, built locally for tests (no network).

``build_tiny_lm(folder)`` trains a byte-level BPE tokenizer with the ``tokenizers`` library on a
slice of Python's documentation, builds a 2-layer Llama (or GPT-2) with ``transformers``, trains it
for a few steps, and saves both with ``save_pretrained``: the folder loads through the same code as
any local Hugging Face model (``model.path=<folder>``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

BOS, EOS = "<|bos|>", "<|eos|>"


def tiny_corpus_texts(n_topics: int = 30) -> list[str]:
    """Real English text: the first ``n_topics`` pydoc topics (about 150k characters)."""
    from pydoc_data import topics

    return [text for _, text in sorted(topics.topics.items())[:n_topics]]


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE: decoding any token slice gives back the exact text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS
    )


def tiny_config(
    architecture: str,
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast,
    n_layers: int = 2,
    d_model: int = 64,
    n_ctx: int = 128,
):
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=n_ctx,
            tie_word_embeddings=True,
            **special,
        )
    if architecture == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_ctx,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            **special,
        )
    raise ValueError(f"unknown tiny architecture {architecture!r}; use llama or gpt2")


def build_tiny_lm(
    folder: str | Path,
    architecture: str = "llama",
    n_layers: int = 2,
    d_model: int = 64,
    n_ctx: int = 128,
    train_steps: int = 30,
    texts: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Build, briefly train and save a tiny model + tokenizer; returns the folder."""
    folder = Path(folder)
    texts = texts if texts is not None else tiny_corpus_texts()
    tokenizer = train_tokenizer(texts)
    config = tiny_config(architecture, len(tokenizer), tokenizer, n_layers, d_model, n_ctx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        _train(model, tokenizer, texts, n_ctx, train_steps)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(model, tokenizer, texts: list[str], n_ctx: int, steps: int) -> None:
    """A few steps of next-token prediction, so activations and losses are those of an LM."""
    if steps <= 0:
        return
    ids = [i for text in texts for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    window = min(n_ctx, 64)
    windows = torch.tensor(ids[: len(ids) // window * window]).view(-1, window)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
