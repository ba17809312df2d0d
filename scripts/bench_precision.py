"""What ``auto`` precision would choose on this machine, and the gains it measures: the CPU's bf16
units and torch capability, then the SAE training step (``trainer.precision=auto``) at each
``--n-features``, the language model's forward (``model.dtype=auto``) and its scoring forward
under bf16 autocast (``model.eval_dtype=auto``: the CE-loss score), each timed in float32 and bf16
exactly as the app times them (:mod:`saeseeds.precision`), but always afresh: the
cache under ``paths.model_cache_dir/precision`` is neither read nor written.

    python scripts/bench_precision.py                        # default SAE sizes and SmolLM2-135M
    python scripts/bench_precision.py --n-features 4096 16384 --threads 1
    python scripts/bench_precision.py --model /path/to/hf_folder   # another local model
    python scripts/bench_precision.py --tiny                 # seconds: checks the script runs

Run it on a quiet machine: the speed-ups are medians of a few steps, and other jobs' load falls
unevenly on the two precisions. The app chooses bf16 where the speed-up is at least
``MIN_SPEEDUP`` (printed), and for SAEs below 2^27 encoder multiply-adds per step keeps float32
without timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from saeseeds import precision
from saeseeds.activations import models
from saeseeds.config.model import ModelConfig
from saeseeds.sae import SAEConfig, architecture
from saeseeds.training import lm_eval, step_precision


def sae_rows(args: argparse.Namespace, device: precision.Device) -> list[dict]:
    rows = []
    for n_features in args.n_features:
        config_class = architecture(args.architecture).Config
        fields = config_class.__dataclass_fields__
        options = {"architecture": args.architecture, "n_features": n_features, "k": args.k}
        config: SAEConfig = config_class(**{k: v for k, v in options.items() if k in fields})
        work = min(args.batch_size, step_precision.PROBE_BATCH) * args.d_in * n_features
        choice = precision.measured_choice(
            device,
            step_precision.step_workload(args.d_in, config, args.batch_size),
            lambda dtype, config=config: step_precision.timed_step(
                args.d_in, config, args.batch_size, dtype
            ),
        )
        timed = work >= step_precision.MIN_MEASURED_WORK
        rows.append(
            {
                "workload": f"SAE step {args.architecture} {args.d_in}x{n_features} k={args.k}",
                "speedup": choice.speedup,
                "float32_s": choice.float32_s,
                "bfloat16_s": choice.bfloat16_s,
                "auto_would_choose": choice.chosen if device.bf16_units and timed else "float32",
            }
        )
    return rows


def model_row(args: argparse.Namespace, device: precision.Device) -> dict:
    name, path = ("local", args.model) if args.model else ("smollm2-135m", None)
    config = ModelConfig(name=name, path=path, dtype="auto", device="cpu")
    with tempfile.TemporaryDirectory() as empty_cache:
        # Weights come from the usual cache; the measurement goes to a throwaway one.
        hf_model, _, _ = models.load_hf(config, args.model_cache_dir)
        hf_model = hf_model.float().eval().requires_grad_(False)
        workload_choice = models.forward_dtype(config, hf_model, torch.device("cpu"), empty_cache)
    if workload_choice.speedup is None:  # not timed (no bf16 units, or a small model): time it
        n_parameters = sum(p.numel() for p in hf_model.parameters())
        shape = (config.forward_batch_size, models.PROBE_TOKENS)
        tokens = torch.randint(0, int(hf_model.config.vocab_size), shape)

        def run_in(dtype: torch.dtype):
            model = hf_model.to(dtype=dtype)
            return lambda: model(input_ids=tokens)

        with torch.no_grad():
            measured = precision.measured_choice(device, "lm_forward", run_in)
        speedup, f32, bf16 = measured.speedup, measured.float32_s, measured.bfloat16_s
        note = f"not timed by auto ({workload_choice.reason}; {n_parameters} parameters)"
    else:
        speedup = workload_choice.speedup
        f32, bf16 = workload_choice.float32_s, workload_choice.bfloat16_s
        note = workload_choice.reason
    return {
        "workload": f"LM forward {name if path is None else Path(path).name}",
        "speedup": speedup,
        "float32_s": f32,
        "bfloat16_s": bf16,
        "auto_would_choose": workload_choice.chosen,
        "note": note,
    }


def eval_row(args: argparse.Namespace, device: precision.Device) -> dict:
    """The scoring forward (CE-loss score) of the float32 model under bf16 autocast, as
    ``model.eval_dtype=auto`` times it, on ``--eval-seq-len``-token sequences."""
    name, path = ("local", args.model) if args.model else ("smollm2-135m", None)
    loaded = models.load_model(
        ModelConfig(name=name, path=path, device="cpu"), args.model_cache_dir
    )
    with tempfile.TemporaryDirectory() as empty_cache:
        choice = lm_eval.model_eval_precision(loaded, "auto", empty_cache, args.eval_seq_len)
    note = choice.reason
    if choice.speedup is None:  # not timed (no bf16 units, or a small model): time it
        choice_timed = precision.measured_choice(
            device, "lm_eval", lm_eval.eval_probe(loaded, args.eval_seq_len)
        )
        note = f"not timed by auto ({choice.reason})"
    else:
        choice_timed = choice
    label = name if path is None else Path(path).name
    return {
        "workload": f"LM scoring forward {label} (autocast)",
        "speedup": choice_timed.speedup,
        "float32_s": choice_timed.float32_s,
        "bfloat16_s": choice_timed.bfloat16_s,
        "auto_would_choose": choice.chosen,
        "note": note,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-features", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--architecture", default="topk")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="a local HF model folder (default SmolLM2)")
    parser.add_argument("--no-model", action="store_true", help="time the SAE step only")
    parser.add_argument("--model-cache-dir", default="~/.cache/saeseeds")
    parser.add_argument(
        "--eval-seq-len", type=int, default=128, help="tokens per sequence of the scoring forward"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, no model: a smoke run")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n_features, args.d_in, args.k, args.batch_size = [64], 16, 4, 256
        args.no_model = True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = precision.this_device()
    print(
        json.dumps(
            {
                "cpu": device.name,
                "bf16_units": list(device.bf16_units),
                "cpu_capability": device.cpu_capability,
                "torch": device.torch_version,
                "threads": device.threads,
                "min_speedup": precision.MIN_SPEEDUP,
            },
            indent=2,
        )
    )
    rows = sae_rows(args, device)
    if not args.no_model:
        rows.append(model_row(args, device))
        rows.append(eval_row(args, device))
    width = max(len(row["workload"]) for row in rows)
    print(f"{'workload':<{width}}  float32 s  bf16 s    speed-up  auto chooses")
    for row in rows:
        print(
            f"{row['workload']:<{width}}  {row['float32_s']:<9.4f}  {row['bfloat16_s']:<8.4f}  "
            f"{row['speedup']:<8.2f}  {row['auto_would_choose']}"
            + (f"  ({row['note']})" if row.get("note") else "")
        )


if __name__ == "__main__":
    sys.exit(main())
