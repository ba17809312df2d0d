"""The published figures and claims our studies are set against, and the scale of each study.

Numbers are as the studies report them; where a study does not state a setting, it is left out
rather than guessed.
"""

from __future__ import annotations

GPT2_STUDY = "multi-seed GPT-2 study"
PAULO_BELROSE = "Paulo & Belrose 2025"
GERASIMOV = "Gerasimov et al. 2026"
SONG = "Song et al. 2025"
FEL = "Fel et al. 2025"
BUSSMANN = "Bussmann et al. 2025"
JEDRYSZEK_CROOK = "Jedryszek & Crook 2026"

# The multi-seed GPT-2 study: Top-K SAEs on GPT-2 small, blocks.{0,6}.hook_resid_pre, 8 epochs,
# 5 seeds, ~1k training tokens. (layer, n_features or None where not stated, statistic): value.
GPT2_FIGURES = [
    {"layer": 0, "n_features": None, "metric": "decoder_median", "value": 0.095,
     "what": "median matched cosine, all features"},
    {"layer": 0, "n_features": None, "metric": "live_decoder_median", "value": 0.500,
     "what": "median matched cosine, live features"},
    {"layer": 6, "n_features": 128, "metric": "live_decoder_median", "value": 0.323,
     "what": "median matched cosine, live features"},
    {"layer": 6, "n_features": 512, "metric": "live_decoder_median", "value": 0.257,
     "what": "median matched cosine, live features"},
]  # fmt: skip
GPT2_STABILITY_AT_09 = "about 0%"
GPT2_DEAD_FRACTION = 0.66
GPT2_TOKENS = "about 1k"

SCALE = [
    # (study, model, data, training tokens, dictionaries, seeds)
    (GPT2_STUDY, "GPT-2 small (12 layers, d_model 768)", "web text", GPT2_TOKENS,
     "128 (k=8), 512 (k=32)", "5"),
    (PAULO_BELROSE, "larger open models (see the paper)", "web-scale text (see the paper)",
     "orders of magnitude more than ours", "several sizes (see the paper)", "several"),
    (GERASIMOV, "several models and layers (see the paper)", "web-scale text (see the paper)",
     "orders of magnitude more than ours", "several sizes and SAE variants", "several"),
    (SONG, "LLMs (see the paper); Top-K PW-MCC 0.80", "web-scale text (see the paper)",
     "orders of magnitude more than ours", "several sizes (see the paper)", "several"),
]  # fmt: skip
OURS = {
    "model": "SmolLM2-135M (30 layers, d_model 576), embedded",
    "data": "Python's documentation (~300k tokens), embedded; the Python standard library's "
    "source (~9M tokens, token scaling)",
}
