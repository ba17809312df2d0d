"""Rows per second of the synthetic source's two samplers (``data.sampler``): the default, whose
cost grows with rows x n_true_features, and ``sparse``, whose cost does not depend on it. Each
world draws one training shard per sampler, rounds alternating, in this process.

    python scripts/bench_synthetic.py                                  # d_in 576: 1,024 and 32,768
    python scripts/bench_synthetic.py --worlds 4096:32 --rounds 3      # true features:k_true

The default sampler draws fewer rows in the largest worlds (``--dense-elements``), so that its
[rows, n_true_features] score and code matrices stay near 2 GiB each.
"""

from __future__ import annotations

import argparse
import time

import torch

from saeseeds.activations.synthetic import SyntheticSource


def rows_per_second(n_true: int, k: int, sampler: str | None, rows: int, d_in: int) -> float:
    source = SyntheticSource(
        d_in, n_true, k, 0.01, 0.5, 1.5, rows, 1024, 1024, data_seed=0, sampler=sampler
    )
    started = time.perf_counter()
    source.train_shard(0, rows)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["1024:16", "32768:32"])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dense-elements", type=int, default=2**29)
    args = parser.parse_args()
    print(f"d_in {args.d_in}, {torch.get_num_threads()} torch threads; rows/s per round")
    for world in args.worlds:
        n_true, k = (int(part) for part in world.split(":"))
        dense_rows = max(1024, min(args.rows, args.dense_elements // n_true))
        rates: dict[str, list[float]] = {"default": [], "sparse": []}
        for _ in range(args.rounds):
            rates["default"].append(rows_per_second(n_true, k, None, dense_rows, args.d_in))
            rates["sparse"].append(rows_per_second(n_true, k, "sparse", args.rows, args.d_in))
        best = {name: max(values) for name, values in rates.items()}
        print(
            f"n_true_features={n_true} k_true={k}: default "
            f"{', '.join(f'{rate:,.0f}' for rate in rates['default'])} ({dense_rows} rows), "
            f"sparse {', '.join(f'{rate:,.0f}' for rate in rates['sparse'])} ({args.rows} rows); "
            f"best sparse / best default {best['sparse'] / best['default']:.1f}x"
        )


if __name__ == "__main__":
    main()
