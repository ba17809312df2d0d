"""CE-loss score, KL and top examples with the tiny real transformer (training.lm_eval)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saeseeds import precision
from saeseeds.activations import hooks
from saeseeds.activations.corpora import python_docs_texts
from saeseeds.contract import TOP_EXAMPLES_FORMAT
from saeseeds.training import lm_eval
from saeseeds.training.lm_eval import MARKER
from tests.tiny_lm import EOS


def test_ce_loss_score_is_one_for_identity_and_zero_for_zeros(make_source):
    source = make_source()
    source.load()
    perfect = lm_eval.ce_loss_metrics(source.text_context(), lambda x: x)
    zero = lm_eval.ce_loss_metrics(source.text_context(), torch.zeros_like)
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero_ablation"])
    assert zero["ce_zero_ablation"] > zero["ce_clean"] and zero["kl_div"] > 0
    noisy = lm_eval.ce_loss_metrics(
        source.text_context(), lambda x: x + 0.3 * x.std() * torch.randn_like(x)
    )
    assert noisy["kl_div"] > 0 and noisy["ce_clean"] == perfect["ce_clean"]


def test_several_forward_batches_score_as_the_whole_and_kept_tensors_change_no_later_score(
    make_source,
):
    source = make_source(model={"forward_batch_size": 3})
    source.load()
    context = source.text_context()

    def noisy(x):  # the same noise at every call with the same shape
        generator = torch.Generator().manual_seed(len(x))
        return x + 0.3 * x.std() * torch.randn(x.shape, generator=generator)

    scored = lm_eval.ce_loss_metrics(context, noisy)
    lm_eval.ce_loss_metrics(context, torch.zeros_like)  # another SAE scored in between
    assert lm_eval.ce_loss_metrics(context, noisy) == scored

    # The same numbers from every forward batch's logits at once, by F.log_softmax and F.kl_div.
    tokens = context.heldout_tokens[: context.eval_sequences].long()
    assert len(tokens) > context.forward_batch_size  # several forward batches
    first = context.first_position

    def log_probs(replace):  # the whole model run on every batch: nothing resumed or kept
        bridge, hook, batch = context.model.bridge, context.hook, context.forward_batch_size
        chunks = [tokens[start : start + batch] for start in range(0, len(tokens), batch)]
        logits = [hooks.logits_with_replacement(bridge, hook, c, replace) for c in chunks]
        return F.log_softmax(torch.cat(logits), dim=-1)

    def splice(activation):
        rebuilt = noisy(activation[:, first:].reshape(-1, activation.shape[-1]))
        return torch.cat([activation[:, :first], rebuilt.reshape(activation[:, first:].shape)], 1)

    clean, spliced = log_probs(None)[:, first:-1], log_probs(splice)[:, first:-1]
    targets = tokens[:, first + 1 :].unsqueeze(-1)
    kl = F.kl_div(spliced, clean, log_target=True, reduction="sum") / targets.numel()
    assert scored["kl_div"] == pytest.approx(float(kl), rel=1e-4)
    assert scored["ce_sae"] == pytest.approx(float(-spliced.gather(-1, targets).mean()), rel=1e-5)
    assert scored["ce_clean"] == pytest.approx(float(-clean.gather(-1, targets).mean()), rel=1e-5)


def refuse(*args, **kwargs):
    raise AssertionError("a block below the hook ran")


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_spliced_forwards_start_at_the_hooks_block_and_score_as_the_whole_model(
    make_source, tiny_gpt2, monkeypatch, architecture
):
    source = make_source(model_path=tiny_gpt2 if architecture == "gpt2" else None)
    source.load()
    context = source.text_context()
    tokens = context.heldout_tokens[: context.eval_sequences].long()
    bridge, hook = context.model.bridge, context.hook
    assert hook.layer == 1 and hooks.resumes_exactly(bridge, hook, tokens[:1])

    def noisy(x):
        generator = torch.Generator().manual_seed(len(x))
        return x + 0.3 * x.std() * torch.randn(x.shape, generator=generator)

    resumed = lm_eval.ce_loss_metrics(context, noisy)
    assert lm_eval._BASELINE_MEMORY and all(
        baseline["resume_from"] is not None for baseline in lm_eval._BASELINE_MEMORY.values()
    )
    # Block 0 cannot run now: the job's scoring forward must start at block 1.
    monkeypatch.setattr(bridge.blocks[0].original_component, "forward", refuse)
    assert lm_eval.ce_loss_metrics(context, noisy) == resumed
    with pytest.raises(AssertionError, match="below the hook ran"):
        hooks.logits_with_replacement(bridge, hook, tokens[:1], noisy)
    monkeypatch.undo()
    # The same numbers, bit for bit, from whole forwards.
    lm_eval._BASELINE_MEMORY.clear()
    monkeypatch.setattr(lm_eval, "resumes_exactly", lambda *args: False)
    whole = lm_eval.ce_loss_metrics(context, noisy)
    assert [baseline["resume_from"] for baseline in lm_eval._BASELINE_MEMORY.values()] == [None]
    assert whole == resumed


def test_a_model_the_resumed_forward_does_not_suit_is_run_whole(make_source, monkeypatch):
    source = make_source()
    source.load()
    context = source.text_context()
    expected = lm_eval.ce_loss_metrics(context, torch.zeros_like)
    lm_eval._BASELINE_MEMORY.clear()
    hooks._RESUMES_EXACTLY.clear()

    def fails(*args, **kwargs):
        raise TypeError("this model's loop wants a tuple from its blocks")

    monkeypatch.setattr(hooks, "_pass_through", fails)
    tokens = context.heldout_tokens[:1].long()
    assert not hooks.resumes_exactly(context.model.bridge, context.hook, tokens)
    assert lm_eval.ce_loss_metrics(context, torch.zeros_like) == expected
    assert [baseline["resume_from"] for baseline in lm_eval._BASELINE_MEMORY.values()] == [None]
    # A hook in the first block has nothing below it to skip.
    first_block = make_source(layer=0)
    first_block.load()
    assert hooks.block_input_hook(context.model.bridge, first_block.text_context().hook) is None


def test_a_model_that_scales_its_input_embeddings_in_place_scores_as_when_run_whole(
    make_source, monkeypatch
):
    """A resumed forward hands the kept block input to the model as its input embeddings; a
    model that scales those in place (as CTRL does) must not change what later jobs start from."""
    source = make_source()
    source.load()
    context = source.text_context()
    bridge = context.model.bridge
    inner = bridge.original_model.model
    original = type(inner).forward

    def scaling(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is not None:
            inputs_embeds.mul_(2.0)
        return original(self, *args, inputs_embeds=inputs_embeds, **kwargs)

    monkeypatch.setattr(type(inner), "forward", scaling)
    block = bridge.blocks[0]

    def marker(*args, **kwargs):  # a forward set on the instance before is put back after
        return type(block).forward(block, *args, **kwargs)

    object.__setattr__(block, "forward", marker)

    def noisy(x):
        return x * 0.9

    try:
        first, second = (lm_eval.ce_loss_metrics(context, noisy) for _ in range(2))
        assert block.__dict__["forward"] is marker
    finally:
        object.__delattr__(block, "forward")
    assert [base["resume_from"] is not None for base in lm_eval._BASELINE_MEMORY.values()] == [True]
    lm_eval._BASELINE_MEMORY.clear()
    monkeypatch.setattr(lm_eval, "resumes_exactly", lambda *args: False)
    whole = lm_eval.ce_loss_metrics(context, noisy)
    assert first == whole and second == whole


def test_top_examples_are_marked_contexts_from_the_corpus(make_source):
    source = make_source()
    splits = source.load()
    directions = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    top = lm_eval.top_examples(
        source.text_context(), lambda x: torch.relu(x @ directions), n_examples=3
    )
    assert top["format"] == TOP_EXAMPLES_FORMAT and top["marker"] == list(MARKER)
    assert top["features"] and all(key.isdigit() for key in top["features"])
    corpus = "".join(python_docs_texts(True))
    heldout_latents = torch.relu(splits.heldout @ directions)
    for feature, examples in top["features"].items():
        values = [example["activation"] for example in examples]
        assert values == sorted(values, reverse=True) and len(examples) <= 3 and values[0] > 0
        assert values[0] == pytest.approx(float(heldout_latents[:, int(feature)].max()), rel=1e-3)
        for example in examples:
            marked = MARKER[0] + example["token"] + MARKER[1]
            assert marked in example["text"]
            plain = example["text"].replace(marked, example["token"], 1)
            for piece in plain.split(EOS):  # contexts may cross a document boundary
                assert piece in corpus
            # Every token of the context, with the feature's activation at it.
            tokens, activations = example["tokens"], example["token_activations"]
            assert "".join(tokens) == plain and len(activations) == len(tokens)
            assert tokens[example["token_index"]] == example["token"]
            assert activations[example["token_index"]] == pytest.approx(example["activation"])
            # ... and the other tokens' activations are the feature's on held-out rows.
            column = heldout_latents[:, int(feature)]
            for value in activations:
                assert value is not None
                assert float((column - value).abs().min()) <= 1e-4 * max(1.0, abs(value))
    shaded = [
        sum(value > 0 for value in example["token_activations"])
        for examples in top["features"].values()
        for example in examples
    ]
    assert max(shaded) > 1  # dense random features fire on more than the strongest token
    never_fires = lm_eval.top_examples(
        source.text_context(), lambda x: torch.zeros(len(x), 8), n_examples=3
    )
    assert never_fires["features"] == {}


def test_a_row_that_tops_several_features_gives_each_the_same_context(make_source):
    # Contexts are built once per held-out row; each feature still gets its own example.
    source = make_source()
    source.load()
    direction = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    directions = torch.cat([direction, 2 * direction], dim=1)  # feature 1 = 2 x feature 0
    top = lm_eval.top_examples(
        source.text_context(), lambda x: torch.relu(x @ directions), n_examples=3
    )
    first, second = top["features"]["0"], top["features"]["1"]
    assert len(first) == len(second) == 3
    for one, two in zip(first, second, strict=True):
        assert {key: one[key] for key in ("text", "token", "tokens", "token_index")} == {
            key: two[key] for key in ("text", "token", "tokens", "token_index")
        }
        assert two["activation"] == pytest.approx(2 * one["activation"], rel=1e-5)
        assert two["token_activations"] == pytest.approx(
            [2 * value for value in one["token_activations"]], rel=1e-5
        )
        # No list is shared between examples.
        assert one["tokens"] is not two["tokens"]
        assert one["token_activations"] is not two["token_activations"]


def test_positions_that_kept_no_activation_have_none(make_source):
    # Without BOS, position 0 is text but keeps no activation: a context that reaches back to a
    # sequence's start has None there, and only there (a prefix of its tokens).
    source = make_source(prepend_bos=False)
    source.load()
    context = source.text_context()
    assert context.first_position == 1 and not context.prepend_bos
    directions = torch.randn(64, 48, generator=torch.Generator().manual_seed(2))
    top = lm_eval.top_examples(context, lambda x: torch.relu(x @ directions), n_examples=10)
    nones = 0
    for examples in top["features"].values():
        for example in examples:
            activations = example["token_activations"]
            kept = [value is not None for value in activations]
            assert kept == sorted(kept)  # every None comes before every kept position
            assert activations[example["token_index"]] is not None
            nones += kept.count(False)
    assert nones > 0


def test_text_context_needs_load_first(make_source):
    with pytest.raises(RuntimeError, match="Call load"):
        make_source().text_context()


def _scored(context, seen: list) -> dict:
    """The CE-loss metrics of a noisy reconstruction that notes how the SAE was called."""
    noise = torch.Generator().manual_seed(0)

    def reconstruct(x):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return x + 0.3 * x.std() * torch.randn(x.shape, generator=noise)

    return lm_eval.ce_loss_metrics(context, reconstruct)


def test_the_scoring_forward_runs_under_bf16_autocast_when_asked_and_the_sae_in_float32(
    make_source,
):
    # On the CPU: auto on a CUDA device with bf16 would take bf16 at any size.
    exact = make_source(model={"device": "cpu"})
    fast = make_source(model={"device": "cpu", "eval_dtype": "bfloat16"})
    exact.load()
    fast.load()
    seen_exact, seen_fast = [], []
    float32, bf16 = (
        _scored(exact.text_context(), seen_exact),
        _scored(fast.text_context(), seen_fast),
    )
    # The SAE reconstructs in float32 with autocast off, in both.
    assert set(seen_exact) == set(seen_fast) == {(torch.float32, False)}
    choice = lm_eval.eval_precision(fast.text_context())
    assert (choice.chosen, choice.reason) == ("bfloat16", "set by model.eval_dtype")
    # bf16 scoring: the same quantities, not the same bits (and not float32's cached baseline).
    for name in ("ce_clean", "ce_zero_ablation", "ce_sae", "ce_loss_score"):
        assert bf16[name] != float32[name]
        assert bf16[name] == pytest.approx(float32[name], rel=0.02)
    # The tiny model (4k parameters) is not worth timing: auto keeps float32 on any CPU.
    assert lm_eval.eval_precision(exact.text_context()).chosen == "float32"


def test_auto_follows_the_cached_measurement_of_this_machine(make_source, tmp_path):
    source = make_source(model={"device": "cpu"}, model_cache_dir=str(tmp_path / "machine"))
    source.load()
    context = source.text_context()
    untimed = lm_eval.eval_precision(context)
    assert untimed.chosen == "float32" and untimed.speedup is None
    device = precision.this_device()
    precision.write_record(
        tmp_path / "machine",
        device,
        precision.PrecisionChoice(
            untimed.workload, "bfloat16", "measured (injected)", 1.8, 0.9, 0.5, "then", device.key
        ),
    )
    lm_eval._EVAL_CHOICES.clear()  # a new process on this machine
    assert lm_eval.eval_precision(context).chosen == "bfloat16"
    exact = make_source(model={"device": "cpu", "eval_dtype": "float32"})
    exact.load()
    assert _scored(context, [])["ce_clean"] != _scored(exact.text_context(), [])["ce_clean"]
