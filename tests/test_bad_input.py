"""The bad-input catalogue: mistakes a new user makes with either app, as the user makes them.

Each case runs the real entry script in a subprocess (two at a time) and asserts what the user
sees and what is left on disk: the exit status; one message that names the bad value and what
would be valid; no traceback; and no partial output (a refused command leaves no folder behind,
and a folder that existed keeps every file as it was, Hydra's ``train.log`` aside). A mistake in a
config value is refused before torch or Lightning is imported (Python's ``-X importtime`` report
says what was), so it costs about a second. The cases that already behaved well are here too, so
that they stay that way.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.analysis.run_folders import random_directions, write_run_folder
from tests.helpers import REPO_ROOT, TINY_SAE, TINY_SYNTHETIC, compose_train
from tests.training.test_run import InterruptAtStep

TRAIN = [*TINY_SAE, *TINY_SYNTHETIC, "logger=none", "trainer.checkpoint_every_n_steps=5"]
RELU_L1 = [option for option in TRAIN if not option.startswith("sae.k=")] + ["sae=relu_l1"]
# An activation file whose run was interrupted, then overwritten with other data (same shape).
ON_FILE = [
    "data=activations",
    "data.path={tmp}/replaced.npy",
    "data.batch_size=256",
    "data.heldout_tokens=256",
    "seed=0",
]
TOO_LONG = "a" * 300  # a folder name longer than file systems allow (255 bytes)
ABOVE_2_64 = str(2**64 + 1)
# Files a refused command may add to or change in a folder that existed: Hydra's log file.
LOG_FILES = {"train.log", "analyze.log"}


@dataclass
class Case:
    """One mistake: the command line (``{x}`` names a prepared file or folder), the words the
    message must contain (the bad value, what is valid), and the exit status."""

    id: str
    script: str
    args: list[str]
    expect: list[str]
    status: int = 2
    existing: str | None = None  # a prepared folder the command points at (copied per case)
    file_size_limit: int | None = None  # bytes; simulates a full disk (writes fail with EFBIG)
    may_add: tuple[str, ...] = ()  # files an accepted job may add to ``existing`` (.hydra/)
    # Refused before torch or Lightning is imported: a typo costs about a second, not five.
    before_torch: bool = False


def train_case(id: str, args: list[str], expect: list[str], **kwargs) -> Case:
    common = TRAIN if "data=activations" not in args else [*TINY_SAE, "logger=none"]
    return Case(id, "train.py", [*common, *args], expect, **kwargs)


def config_case(id: str, args: list[str], expect: list[str], **kwargs) -> Case:
    """A train.py case refused before torch or Lightning is imported."""
    return train_case(id, args, expect, before_torch=True, **kwargs)


def analyze_case(id: str, args: list[str], expect: list[str], **kwargs) -> Case:
    return Case(id, "analyze.py", ["progress=false", "logger=none", *args], expect, **kwargs)


CASES = [
    # ---- config values (train.py) ----
    config_case("k-not-below-n", ["sae.k=64"], ["sae.k=64 must be in 1..63"]),
    config_case(
        "n-features-not-int",
        ["sae.n_features=abc"],
        ["Value 'abc'", "could not be converted to Integer"],
        status=1,
    ),
    config_case("unknown-sae", ["sae=huge"], ["Could not find 'sae/huge'", "topk"], status=1),
    config_case("seed-not-int", ["seed=abc"], ["seed='abc' is not valid", "[0, 2^32)"]),
    config_case("seed-negative", ["seed=-1"], ["seed=-1 is not valid", "[0, 2^32)"]),
    config_case("seed-too-big", ["seed=4294967296"], ["seed=4294967296", "[0, 2^32)"]),
    config_case("precision", ["trainer.precision=fp8"], ["trainer.precision='fp8'", "bf16-mixed"]),
    config_case(
        "accelerator-unknown", ["trainer.accelerator=quantum"], ["'quantum'", "'auto', 'cpu'"]
    ),
    train_case(
        "accelerator-gpu-without-gpu",
        ["trainer.accelerator=gpu"],
        ["trainer.accelerator=gpu but", "no CUDA GPU", "trainer.accelerator=auto or cpu"],
    ),
    train_case(
        "trainer-gpu-without-gpu",
        ["trainer=gpu"],
        ["trainer.accelerator=gpu but", "trainer=default"],
    ),
    config_case("devices-zero", ["trainer.devices=0"], ["trainer.devices=0 is not valid", "-1"]),
    config_case(
        "max-epochs-zero",
        ["trainer.max_epochs=0"],
        ["trainer.max_epochs=0", "untrained", "trainer.max_epochs >= 1"],
    ),
    config_case("max-steps-zero", ["trainer.max_steps=0"], ["trainer.max_steps=0", "positive"]),
    config_case(
        "checkpoint-interval",
        ["trainer.checkpoint_every_n_steps=0"],
        ["trainer.checkpoint_every_n_steps=0 must be > 0"],
    ),
    train_case(
        "unknown-lightning-argument",
        ["+trainer.kwargs.bogus_option=1"],
        ["bogus_option", "not valid for Lightning"],
    ),
    config_case("logger-mode", ["logger=wandb", "logger.mode=loud"], ["logger.mode='loud'"]),
    config_case(
        "log-interval-zero",
        ["trainer.log_every_n_steps=0"],
        ["trainer.log_every_n_steps=0 is not valid", "N >= 1"],
    ),
    # ---- data (train.py) ----
    config_case(
        "activations-without-path",
        ["data=activations"],
        ["data.path is required", "data.path=FILE"],
    ),
    train_case(
        "activations-missing-file",
        ["data=activations", "data.path={tmp}/missing.npy"],
        ["missing.npy", "no such activations file"],
    ),
    train_case(
        "activations-wrong-suffix",
        ["data=activations", "data.path={tmp}/acts.txt"],
        ["acts.txt", "activation files must be one of"],
    ),
    train_case(
        "fewer-tokens-than-a-batch",
        ["data.n_tokens=100", "data.batch_size=256"],
        ["smaller than one batch"],
    ),
    train_case(
        "synthetic-noise-negative",
        ["data.noise_std=-1"],
        ["data.noise_std=-1.0 is not valid", ">= 0"],
    ),
    train_case(
        "synthetic-sampler-unknown",
        ["data.sampler=dense"],
        ["data.sampler='dense' is not valid", "null", "sparse"],
    ),
    Case(
        "hook-layer-negative",
        "train.py",
        ["logger=none", "hook.layer=-1"],
        ["hook.layer=-1 is not valid", "layers count from 0"],
    ),
    Case(
        "hook-layer-out-of-range",
        "train.py",
        ["logger=none", "hook.layer=99"],
        ["hook.layer=99 is out of range", "valid layers are 0 to 29"],
    ),
    # ---- resuming (train.py) ----
    train_case(
        "resume-without-checkpoint",
        ["resume=true"],
        ["resume=true but", "last.ckpt does not exist", "ckpt_path=FILE"],
    ),
    config_case(
        "resume-and-ckpt-path", ["resume=true", "ckpt_path=x.ckpt"], ["either resume=true or"]
    ),
    train_case(
        "ckpt-path-missing",
        ["ckpt_path={tmp}/nothing.ckpt"],
        ["ckpt_path={tmp}/nothing.ckpt", "no such checkpoint file"],
    ),
    train_case(
        "ckpt-path-corrupt",
        ["ckpt_path={tmp}/corrupt.ckpt"],
        ["corrupt.ckpt is truncated, corrupt or not a torch checkpoint", "last.ckpt"],
    ),
    train_case(
        "ckpt-path-truncated",
        ["ckpt_path={tmp}/truncated.ckpt"],
        ["truncated.ckpt is truncated", "intact checkpoints/last.ckpt"],
    ),
    train_case(
        "ckpt-path-foreign",
        ["ckpt_path={tmp}/foreign.ckpt"],
        ["foreign.ckpt is not a Lightning training checkpoint", "checkpoints/last.ckpt"],
    ),
    train_case(
        "ckpt-path-unsafe-pickle",
        ["ckpt_path={tmp}/unsafe.ckpt"],
        ["unsafe.ckpt is not a checkpoint that can be loaded safely", "checkpoints/last.ckpt"],
    ),
    train_case(
        "ckpt-path-other-size",
        ["sae.n_features=32", "ckpt_path={interrupted}/checkpoints/last.ckpt"],
        ["another config (sae.n_features=64 vs 32", "same seed and config"],
    ),
    train_case(
        "ckpt-path-other-size-unrecorded",
        ["sae.n_features=32", "ckpt_path={tmp}/unrecorded.ckpt"],
        [
            "unrecorded.ckpt holds an SAE of another size: saes.0.W_enc is [16, 64] there and "
            "[16, 32] here",
            "same seed and config",
        ],
    ),
    train_case(
        "resume-other-seed",
        ["seed=4", "resume=true", "hydra.run.dir={existing}"],
        ["another config (seed=0 vs 4", "Resume with the same seed and config"],
        existing="interrupted",
    ),
    train_case(
        "resume-other-hyperparameters",
        ["sae.k=8", "sae.lr=0.01", "resume=true", "hydra.run.dir={existing}"],
        ["sae.k=4 vs 8", "sae.lr=0.004 vs 0.01", "same seed and config"],
        existing="interrupted",
    ),
    train_case(
        "interrupted-folder-without-resume",
        ["hydra.run.dir={existing}"],
        ["holds an interrupted run", "resume=true"],
        existing="interrupted",
    ),
    train_case(
        "complete-folder-other-k",
        ["sae.k=8", "hydra.run.dir={existing}"],
        ["already holds a complete run with another config (sae.k=4 vs 8", "new output folder"],
        existing="complete",
    ),
    train_case(
        "resume-on-other-data",
        [*ON_FILE, "resume=true", "hydra.run.dir={existing}"],
        ["was trained on other data than this run loaded (file_sha256=", "Restore the data"],
        existing="interrupted_on_file",
        may_add=(".hydra/", ".saeseeds.lock"),
    ),
    train_case(
        "ckpt-path-on-other-data",
        [*ON_FILE, "ckpt_path={interrupted_on_file}/checkpoints/last.ckpt"],
        ["last.ckpt was trained on other data", "file_sha256=", "checkpoint vs now"],
    ),
    # ---- numbers that are not numbers (train.py) ----
    config_case("lr-infinite", ["sae.lr=inf"], ["sae.lr=inf is not valid", "must be finite"]),
    config_case("auxk-alpha-nan", ["sae.auxk_alpha=nan"], ["sae.auxk_alpha=nan is not valid"]),
    Case(
        "l1-coefficient-nan",
        "train.py",
        [*RELU_L1, "sae.l1_coefficient=nan"],
        ["sae.l1_coefficient=nan is not valid", "must be finite"],
        before_torch=True,
    ),
    Case(
        "init-decoder-norm-infinite",
        "train.py",
        [*RELU_L1, "sae.init_decoder_norm=inf"],
        ["sae.init_decoder_norm=inf is not valid", "must be finite"],
        before_torch=True,
    ),
    train_case(
        "loss-becomes-infinite",
        [
            "data=activations",
            "data.path={tmp}/huge.npy",
            "data.heldout_tokens=256",
            "sae.normalize=none",
        ],
        [
            "the training loss became NaN or infinite (in step 1)",
            "no checkpoint, weights or COMPLETE",
        ],
    ),
    # ---- seeds (train.py) ----
    config_case(
        "data-seed-above-2-64",
        [f"data.data_seed={ABOVE_2_64}"],
        [f"data.data_seed={ABOVE_2_64} is not valid", "every seed is an integer in [0, 2^32)"],
    ),
    config_case("data-seed-negative", ["data.data_seed=-1"], ["data.data_seed=-1 is not valid"]),
    config_case(
        "control-seed-above-2-64",
        [f"data.control_seed={ABOVE_2_64}"],
        [f"data.control_seed={ABOVE_2_64} is not valid", "[0, 2^32)"],
    ),
    config_case(
        "split-seed-above-2-64",
        ["data=activations", "data.path={tmp}/replaced.npy", f"data.split_seed={ABOVE_2_64}"],
        [f"data.split_seed={ABOVE_2_64} is not valid", "[0, 2^32)"],
    ),
    config_case(
        "model-seed-above-2-64",
        [f"model.seed={ABOVE_2_64}"],
        [f"model.seed={ABOVE_2_64} is not valid", "[0, 2^32)"],
    ),
    # ---- malformed inputs and machines (train.py) ----
    Case(
        "jsonl-corpus-nested-deep",
        "train.py",
        ["logger=none", "data=text_files", "data.corpus.paths=[{tmp}/deep.jsonl]"],
        ["deep.jsonl:2 is nested too deeply to read"],
    ),
    Case(
        "model-eval-dtype",
        "train.py",
        ["logger=none", "model.eval_dtype=fp16"],
        ["model.eval_dtype='fp16' is not valid", "'auto', 'float32', 'bfloat16'"],
    ),
    Case(
        "model-device-cuda-without-gpu",
        "train.py",
        ["logger=none", "model.device=cuda"],
        ["model.device=cuda but", "no CUDA GPU", "model.device=auto", "model.device=cpu"],
    ),
    config_case(
        "run-folder-name-too-long",
        [f"hydra.run.dir={{tmp}}/{TOO_LONG}"],
        ["cannot write the output folder", "is 300 bytes long", "hydra.run.dir=PATH"],
    ),
    # ---- output folders (train.py) ----
    config_case(
        "unwritable-output-folder",
        ["hydra.run.dir={tmp}/a_file/run"],
        ["cannot write the output folder", "is not a folder", "hydra.run.dir=PATH"],
    ),
    Case(
        "unwritable-sweep-folder",
        "train.py",
        ["-m", *TRAIN, "seed=1,2", "hydra.sweep.dir={tmp}/a_file/sweep"],
        ["cannot write the output folder", "is not a folder", "hydra.sweep.dir=PATH"],
        before_torch=True,
    ),
    train_case(
        "full-disk-while-training",
        # Snapshots off: the one left to write is smaller than the limit and would be written.
        ["resume=true", "hydra.run.dir={existing}", "trainer.snapshots=false"],
        ["cannot write", "last.ckpt", "File too large", "free some space"],
        existing="interrupted",
        file_size_limit=20_000,
        may_add=(".hydra/", ".saeseeds.lock"),
    ),
    # ---- build_store.py ----
    Case(
        "build-store-n-tokens-not-int",
        "build_store.py",
        ["data.n_tokens=abc"],
        ["Value 'abc'", "could not be converted to Integer"],
        status=1,
        before_torch=True,
    ),
    Case(
        "build-store-threads-zero",
        "build_store.py",
        ["threads=0"],
        ["threads=0 is not valid", "positive number of torch CPU threads"],
    ),
    Case(
        "build-store-part-out-of-range",
        "build_store.py",
        ["store.part=5", "store.parts=2"],
        ["store.part=5 must be in 0..1 (store.parts=2)"],
    ),
    Case(
        "build-store-of-synthetic-data",
        "build_store.py",
        ["data=synthetic"],
        ["build_store.py builds stores of text data"],
    ),
    # ---- analyze.py ----
    analyze_case("sweep-dir-empty-list", ["sweep_dir=[]"], ["sweep_dir=[] names no folder"]),
    analyze_case("sweep-dir-a-number", ["sweep_dir=5"], ["sweep_dir 5 does not exist"]),
    analyze_case(
        "bootstrap-seed-negative",
        ["sweep_dir={tmp}/good_sweep", "bootstrap.seed=-1"],
        ["bootstrap.seed=-1 is not valid", "[0, 2^32)"],
    ),
    analyze_case(
        "shared-threshold-out-of-range",
        ["sweep_dir={tmp}/good_sweep", "shared_threshold=2"],
        ["shared_threshold=2.0 is not valid", "[-1, 1]"],
    ),
    analyze_case(
        "sweep-dir-missing",
        ["sweep_dir={tmp}/nope"],
        ["sweep_dir {tmp}/nope does not exist"],
    ),
    analyze_case(
        "sweep-dir-glob-matches-nothing",
        ["sweep_dir='{tmp}/zz*'"],
        ["sweep_dir glob", "matches no folder"],
    ),
    analyze_case("no-multirun-yet", ["outputs_root={tmp}/empty"], ["No sweep_dir given"]),
    analyze_case(
        "nothing-complete",
        ["sweep_dir={tmp}/incomplete_sweep"],
        ["Nothing to analyse", "incomplete: no COMPLETE marker"],
    ),
    analyze_case(
        "single-seed",
        ["sweep_dir={tmp}/single_seed"],
        ["only one seed (1)", "stability needs >= 2 seeds"],
    ),
    analyze_case(
        "unknown-solver",
        ["sweep_dir={tmp}/good_sweep", "solver=hungarian"],
        ["Invalid value 'hungarian'", "lapjv, scipy"],
        status=1,
    ),
    analyze_case(
        "threshold-out-of-range",
        ["sweep_dir={tmp}/good_sweep", "thresholds=[1.5]"],
        ["thresholds: 1.5 is not a cosine in [-1, 1]"],
    ),
    analyze_case(
        "device-cuda-without-gpu",
        ["sweep_dir={tmp}/good_sweep", "device=cuda"],
        ["device=cuda but", "no CUDA GPU", "device=auto", "device=cpu"],
    ),
    analyze_case(
        "unwritable-report-folder",
        ["sweep_dir={tmp}/good_sweep", "hydra.run.dir={tmp}/a_file/report"],
        ["cannot write the report folder", "is not a folder", "hydra.run.dir=PATH"],
    ),
    analyze_case(
        "report-folder-name-too-long",
        ["sweep_dir={tmp}/good_sweep", f"hydra.run.dir={{tmp}}/{TOO_LONG}"],
        ["cannot write the report folder", "is 300 bytes long", "hydra.run.dir=PATH"],
    ),
    analyze_case(
        "cfg-json-number-too-large",
        ["sweep_dir={tmp}/overflow_sweep"],
        ["cfg.json is unreadable: the number 1e400 is too large for a float"],
    ),
    analyze_case(
        "environment-json-nested-deep",
        ["sweep_dir={tmp}/nested_sweep"],
        ["environment.json is unreadable: it is nested too deeply to read"],
    ),
    analyze_case(
        "full-disk-while-reporting",
        ["sweep_dir={tmp}/good_sweep"],
        ["cannot write", "File too large"],
        file_size_limit=12_000,
    ),
]


def _tree(folder: Path, ignore: set[str]) -> dict[str, str]:
    """{relative path: sha256} of every file, without Hydra's log files."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in ignore
    }


def _prepare(root: Path) -> dict[str, Path]:
    """The files and folders the cases point at."""
    from saeseeds.training.run import train

    (root / "acts.txt").write_text("1 2 3\n")
    (root / "a_file").write_text("not a folder\n")
    (root / "corrupt.ckpt").write_bytes(os.urandom(4096))
    torch.save({"W_enc": torch.zeros(2, 2)}, root / "foreign.ckpt")
    torch.save({"state_dict": {}, "opaque": Path("/")}, root / "unsafe.ckpt")
    (root / "empty").mkdir()

    interrupted = root / "interrupted"
    cfg = compose_train([*TRAIN, "seed=0"], interrupted)
    with pytest.raises(SystemExit):
        train(cfg, extra_callbacks=[InterruptAtStep(22)])
    last = (interrupted / "checkpoints" / "last.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(last[: len(last) // 2])
    unrecorded = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    unrecorded.pop("saeseeds")  # as written before checkpoints carried their config
    torch.save(unrecorded, root / "unrecorded.ckpt")

    complete = root / "complete"
    result = run([*TRAIN, "seed=0", f"hydra.run.dir={complete}"], "train.py", root)
    assert result.returncode == 0, result.stderr[-2000:]

    base = random_directions(8, 4, seed=0)
    for seed in (1, 2):
        write_run_folder(root / f"good_sweep/seed={seed}", np.roll(base, seed, axis=0), seed=seed)
        write_run_folder(root / f"incomplete_sweep/seed={seed}", base, seed=seed, complete=False)
    write_run_folder(root / "single_seed/seed=1", base, seed=1)
    for seed in (1, 2):
        write_run_folder(root / f"overflow_sweep/seed={seed}", np.roll(base, seed, 0), seed=seed)
        write_run_folder(root / f"nested_sweep/seed={seed}", np.roll(base, seed, 0), seed=seed)
    cfg_json = root / "overflow_sweep/seed=2/cfg.json"
    cfg_json.write_text(cfg_json.read_text().replace('"d_in": 4', '"d_in": 1e400'))
    (root / "nested_sweep/seed=2/environment.json").write_text(NESTED)
    (root / "deep.jsonl").write_text('{"text": "fine"}\n' + NESTED + "\n")
    rows = np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32)
    np.save(root / "huge.npy", rows * 1e20)  # squares overflow float32: an infinite loss
    return {
        "interrupted": interrupted,
        "complete": complete,
        "interrupted_on_file": interrupted_on_file(root),
    }


# Valid JSON nested deeper than Python's parser can follow (RecursionError).
NESTED = "[" * 100_000 + "]" * 100_000


def interrupted_on_file(root: Path) -> Path:
    """A run on ``replaced.npy`` stopped at step 6; then the file is overwritten with other data
    of the same shape."""
    from saeseeds.training.run import train

    rng = np.random.default_rng(0)
    np.save(root / "replaced.npy", rng.standard_normal((2048, 16)).astype(np.float32))
    folder = root / "interrupted_on_file"
    on_file = [arg.format(tmp=root) for arg in ON_FILE]
    cfg = compose_train(
        [*TINY_SAE, "logger=none", "trainer.checkpoint_every_n_steps=5", *on_file], folder
    )
    with pytest.raises(SystemExit):
        train(cfg, extra_callbacks=[InterruptAtStep(6)])
    np.save(root / "replaced.npy", rng.standard_normal((2048, 16)).astype(np.float32))
    return folder


def run(
    args: list[str],
    script: str,
    cwd: Path,
    file_size_limit: int | None = None,
    import_times: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run an entry script as a user would; ``import_times``: Python's ``-X importtime`` report
    of every module imported goes to stderr too."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_API_KEY", None)
    # Two cases run side by side on the machine's cores: threads that wait by spinning would
    # slow both several-fold (the results do not depend on it).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    report_imports = ["-X", "importtime"] if import_times else []
    return subprocess.run(
        [sys.executable, *report_imports, str(REPO_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size if file_size_limit else None,
    )


def split_import_times(stderr: str) -> tuple[set[str], str]:
    """The top-level packages that ``-X importtime`` reports imported, and the rest of stderr."""
    imported, rest = set(), []
    for line in stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            rest.append(line)
    return imported, "".join(rest)


@dataclass
class Outcome:
    result: subprocess.CompletedProcess[str]
    seconds: float
    root: Path
    output_dir: Path
    before: dict[str, str]
    after: dict[str, str]
    leftovers: list[str]
    imported: set[str]  # top-level packages imported (cases refused before torch only)


def _run_case(case: Case, root: Path, prepared: dict[str, Path]) -> Outcome:
    case_dir = root / "cases" / case.id
    case_dir.mkdir(parents=True)
    existing = case_dir / "existing"
    if case.existing is not None:
        shutil.copytree(prepared[case.existing], existing)
    names = {"tmp": root, "existing": existing, **prepared}
    args = [arg.format(**names) for arg in case.args]
    output_dir = existing if case.existing is not None else case_dir / "out"
    if not any(arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for arg in args):
        args.append(f"hydra.run.dir={output_dir}")
    before = _tree(output_dir, LOG_FILES)
    started = time.perf_counter()
    result = run(args, case.script, case_dir, case.file_size_limit, case.before_torch)
    seconds = time.perf_counter() - started
    imported, result.stderr = split_import_times(result.stderr)
    after = (
        {
            name: digest
            for name, digest in _tree(output_dir, LOG_FILES).items()
            if not (name.startswith(case.may_add) and name not in before)
        }
        if case.may_add
        else _tree(output_dir, LOG_FILES)
    )
    return Outcome(result, seconds, root, output_dir, before, after, [], imported)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case, run two at a time (the machine has two cores)."""
    root = tmp_path_factory.mktemp("bad_input")
    prepared = _prepare(root)
    # The cases refused in about a second go last, so no worker is left alone with a long one.
    order = sorted(CASES, key=lambda case: case.before_torch)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case.id: pool.submit(_run_case, case, root, prepared) for case in order}
        outcomes = {case_id: future.result() for case_id, future in futures.items()}
    # Half-written files are looked for once every case has ended: while two cases run side by
    # side, one case's scan would see the other's atomic write in flight. A leftover in a case's
    # own folder is that case's; one anywhere else is charged to every case.
    leftovers = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.name.endswith(".tmp") or ".tmp-" in path.name
    ]
    for case_id, outcome in outcomes.items():
        outcome.leftovers = [
            path
            for path in leftovers
            if path.startswith(f"cases/{case_id}/") or not path.startswith("cases/")
        ]
    return outcomes


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.id]
    result = outcome.result
    seen = result.stdout + result.stderr
    assert result.returncode == case.status, seen[-3000:]
    assert "Traceback" not in seen, seen[-3000:]
    for words in case.expect:
        assert words.format(tmp=outcome.root) in result.stderr, result.stderr[-3000:]
    # No partial output: nothing new where the command pointed, nothing half-written anywhere.
    assert outcome.after == outcome.before, (outcome.before, outcome.after)
    if case.existing is None:
        assert not outcome.output_dir.exists(), sorted(outcome.output_dir.rglob("*"))
    assert outcome.leftovers == []
    if case.before_torch:  # the report was read (Hydra is in it), and names neither
        assert "hydra" in outcome.imported, result.stderr[-3000:]
        assert not outcome.imported & {"torch", "lightning"}, "imported torch before refusing"


def test_malformed_records_are_listed_and_the_report_is_written(tmp_path):
    """Files nested too deeply for Python's parser, or holding a number no float holds, cost the
    folder they are in (listed with the file named), or only their examples; the report is
    written whole."""
    from saeseeds import contract

    base = random_directions(8, 4, seed=0)
    sweep = tmp_path / "sweep"
    for seed in (1, 2, 3, 4):
        write_run_folder(sweep / f"seed={seed}", np.roll(base, seed, axis=0), seed=seed)
    (sweep / "seed=1" / contract.TOP_EXAMPLES_FILE).write_text(NESTED)  # costs its examples
    (sweep / "seed=3" / contract.ENVIRONMENT_FILE).write_text(NESTED)
    cfg_json = sweep / "seed=4" / contract.CFG_FILE
    cfg_json.write_text(cfg_json.read_text().replace('"d_in": 4', '"d_in": 1e400'))
    (sweep / contract.JOB_RECORDS_DIR).mkdir()
    (sweep / contract.JOB_RECORDS_DIR / "seed=5.json").write_text(NESTED)

    report = tmp_path / "report"
    args = [f"sweep_dir={sweep}", f"hydra.run.dir={report}", "progress=false", "logger=none"]
    result = run(args, "analyze.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((report / "summary.json").read_text())
    reasons = {Path(e["path"]).name: e["reason"] for e in summary["skipped_runs"]}
    assert reasons == {
        "seed=3": "environment.json is unreadable: it is nested too deeply to read",
        "seed=4": "cfg.json is unreadable: the number 1e400 is too large for a float",
    }
    (group,) = summary["groups"].values()
    assert group["seeds"] == [1, 2]
    assert (report / "report.md").is_file() and (report / "features.csv").is_file()
