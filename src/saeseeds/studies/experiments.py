"""What each study trains: its experiment config, the passes that share its sweep folder, and the
smoke (``--tiny``) version. Read by ``scripts/run_studies.py``; imports nothing heavy.

A pass is one command into the experiment's sweep folder: ``python train.py -m
+experiment=NAME <pass overrides>`` (or, for the architectures, the calibration script
``scripts/sweep_architectures.py``). The overrides of a command are, in this order: the
experiment, the smoke overrides (``--tiny`` only), the pass's own, the pass's smoke overrides
(``--tiny`` only), the user's; a later one wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRAIN = "train"  # python train.py -m +experiment=NAME ...
CALIBRATED = "calibrated"  # python scripts/sweep_architectures.py ... +experiment=NAME

# The multi-seed GPT-2 study trained on about 1k tokens; 128 per batch makes 8 steps an epoch.
STUDY_BUDGET = ("data.n_tokens=1024", "data.batch_size=128")
# Small enough for a smoke run of the whole pipeline on the embedded model in minutes.
SMOKE_DATA = ("data.batch_size=512", "trainer.max_epochs=2")
# The token-scaling study's smoke budgets: nested, each seen once, 8 to 32 steps of 256 tokens;
# small shards, so that the smoke store holds a few thousand tokens, not one 65,536-token shard.
SMOKE_BUDGETS = ("data.n_tokens=2048,4096,8192", "data.batch_size=256", "data.shard_tokens=4096")

# Jedryszek & Crook's Top-K weight penalty, 1e-4 (their language-model grid: 0 and 1e-4): their
# loss is ‖x − x̂‖² + λ(‖W_enc‖² + ‖W_dec‖²) on activations scaled to E‖x‖² = d_in; ours divides
# both terms by d_in on the same scale, so the same λ weighs the same against the reconstruction.
METHODS_WEIGHT_L2 = ("sae=topk", "sae.unit_norm_decoder=false", "sae.weight_l2=0.0001")
# Its smoke version: one epoch of 16 steps, a store of one 16k-token shard. Few overrides: a job
# folder's name longer than 200 characters is cut to its start and the job's number, which every
# pass (train.py call) numbers from 0 again, so two passes' long names would share a folder.
SMOKE_METHODS = ("data.n_tokens=16384", "data.shard_tokens=16384")
SMOKE_K = ("sae.k=8",)
# Bussmann et al.'s absorption claim needs features with known parents and children: Top-K,
# BatchTopK (their baseline) and Matryoshka on scripts/sweep_architectures.py's hierarchical
# synthetic world (HIERARCHICAL_WORLD, at the k = 3 its measurement in docs/synthetic.md used),
# 3 seeds on one batch stream. Its smoke version: a quarter of the tokens, 2 epochs.
ABSORPTION = ("sae=topk,batchtopk,matryoshka", "sae.k=3", "seeds=[1,2,3]", "order_seed=0")
SMOKE_ABSORPTION = ("data.n_tokens=4096", "trainer.max_epochs=2")
ABSORPTION_FOLDER = "absorption"  # <out>/<study>/absorption: its own sweep folder


@dataclass(frozen=True)
class Pass:
    """One training command into the experiment's sweep folder."""

    label: str
    overrides: tuple[str, ...] = ()
    tiny: tuple[str, ...] = ()
    """This pass's own overrides of the smoke version (after the experiment's)."""
    calibrated: str | None = None
    """An architecture without k (relu_l1, jumprelu) whose sparsity coefficient
    ``scripts/run_studies.py`` first searches, on the pass's data and budget, for held-out L0 =
    the experiment's ``calibration["--k"]``, and adds to the pass's overrides."""


@dataclass(frozen=True)
class Experiment:
    """One study: ``conf/experiment/<name>.yaml`` and how the script runs it."""

    name: str
    title: str
    kind: str = TRAIN
    passes: tuple[Pass, ...] = (Pass("the project's token budget"),)
    tiny: tuple[str, ...] = ()
    """Overrides of the smoke version, for every pass."""
    calibration: dict[str, str] = field(default_factory=dict)
    """``--k``/``--seeds`` of sweep_architectures.py (``kind=calibrated``), or ``--k`` and
    ``--max-probes`` of the calibrated passes' search; ``tiny_calibration`` replaces them in the
    smoke version."""
    tiny_calibration: dict[str, str] = field(default_factory=dict)
    absorption: tuple[str, ...] = ()
    """Overrides of a training step after the passes, on the hierarchical synthetic world, into
    ``<out>/<name>/absorption``; empty: none. Neither the experiment's config nor the user's
    overrides apply there (the world has its own data and budget); ``tiny_absorption`` is
    added in the smoke version."""
    tiny_absorption: tuple[str, ...] = ()
    masking: bool = False
    """Run the masking experiment on its groups."""
    masking_skip: dict[str, Any] = field(default_factory=dict)
    """Groups whose condition has all these values are not masked."""

    def masked(self, condition: dict[str, Any]) -> bool:
        """Whether the masking experiment runs on a group with this (flat) condition config."""
        if not self.masking:
            return False
        return not all(condition.get(key) == value for key, value in self.masking_skip.items())


EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (
        Experiment(
            name="seed_study",
            title="The multi-seed GPT-2 study",
            passes=(
                Pass("the project's token budget (131k), with both controls"),
                Pass("the study's own budget (~1k tokens), with both controls", STUDY_BUDGET),
            ),
            tiny=("seed=1,2,3", "data.n_tokens=4096", *SMOKE_DATA),
            masking=True,
            # The masking claim is about trained SAEs; 1k tokens leave most features dead.
            masking_skip={"data.n_tokens": 1024},
        ),
        Experiment(
            name="size_and_tokens",
            title="Dictionary size and training tokens (Paulo & Belrose 2025)",
            tiny=(
                "seed=1,2,3",
                "sae.n_features=64,256",
                "sae.k=8",
                "data.n_tokens=2048,4096",
                *SMOKE_DATA,
            ),
        ),
        Experiment(
            name="architectures",
            title="Top-K vs ReLU+L1 vs BatchTopK at matched L0 (Paulo & Belrose 2025)",
            kind=CALIBRATED,
            # Each architecture with its own geometry control (the same λ or k, Gaussian data).
            calibration={"--k": "32", "--seeds": "1,2,3", "--control": "gaussian"},
            tiny_calibration={
                "--k": "8",
                "--seeds": "1,2,3",
                "--max-probes": "4",
                "--control": "gaussian",
            },
            tiny=("sae.n_features=64", "data.n_tokens=4096", *SMOKE_DATA),
        ),
        Experiment(
            name="token_scaling",
            title="Stability against training tokens, each seen once",
            passes=(Pass("131k, 1M and 4M tokens, with the geometry control"),),
            tiny=("sae.n_features=64,256", "sae.k=8", *SMOKE_BUDGETS),
        ),
        Experiment(
            name="stability_methods",
            title="Stability by training method at matched L0, beyond geometry",
            passes=(
                Pass("Top-K, BatchTopK, Matryoshka, archetypal (L0 = k)", tiny=SMOKE_K),
                Pass("Top-K with an L2 weight penalty", METHODS_WEIGHT_L2, SMOKE_K),
                Pass("ReLU+L1 at its calibrated λ", ("sae=relu_l1",), calibrated="relu_l1"),
                Pass("JumpReLU at its calibrated λ", ("sae=jumprelu",), calibrated="jumprelu"),
            ),
            calibration={"--k": "32", "--max-probes": "8"},
            tiny_calibration={"--k": "8", "--max-probes": "2"},
            tiny=SMOKE_METHODS,
            absorption=ABSORPTION,
            tiny_absorption=SMOKE_ABSORPTION,
        ),
    )
}


def command_overrides(
    experiment: Experiment, study_pass: Pass, tiny: bool, user: list[str]
) -> list[str]:
    """The Hydra overrides of one pass, in the order that makes a later one win."""
    return [
        f"+experiment={experiment.name}",
        *(experiment.tiny if tiny else ()),
        *study_pass.overrides,
        *(study_pass.tiny if tiny else ()),
        *user,
    ]
