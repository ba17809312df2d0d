"""``python -m saeseeds.imports saelens|sparsify SRC [SRC ...] DEST``: import SAEs as run folders.

Every SAE found under the SRC folders becomes the run folder
``DEST/<hook>/<architecture>-<n_features>/seed=<seed>``;
``python analyze.py sweep_dir=DEST`` then analyses them like trained runs. All sources are read
and checked before anything is written; each run folder appears complete or not at all. A user's
error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from saeseeds.errors import DataError, OutputError, UserError
from saeseeds.imports import saelens, sparsify
from saeseeds.imports.heldout import ActivationRows, heldout_statistics
from saeseeds.imports.source import ImportedSAE
from saeseeds.imports.writer import write_run
from saeseeds.io import writable_folder_problem

# library -> (find the SAE folders under a source, read one SAE folder with an optional seed)
LIBRARIES: dict[str, tuple[Callable[[Path], list[Path]], Callable[..., ImportedSAE]]] = {
    "saelens": (saelens.find_folders, saelens.read_saelens),
    "sparsify": (sparsify.find_folders, sparsify.read_sparsify),
}


def read_sources(library: str, sources: list[Path], seeds: list[int] | None) -> list[ImportedSAE]:
    """Every SAE under ``sources``; ``seeds`` (one per source, each holding one SAE) override."""
    find, read = LIBRARIES[library]
    if seeds is not None and len(seeds) != len(sources):
        raise DataError(f"--seed gives {len(seeds)} seed(s) for {len(sources)} source(s)")
    imported = []
    for index, source in enumerate(sources):
        if not source.is_dir():
            raise DataError(f"source {source} does not exist or is not a folder")
        folders = find(source)
        if seeds is not None and len(folders) != 1:
            raise DataError(
                f"--seed needs each source to hold one SAE; {source} holds {len(folders)} "
                f"({', '.join(str(folder) for folder in folders[:3])}, ...). Name each SAE folder "
                "as its own source"
            )
        given = seeds[index] if seeds is not None else None
        imported.extend(read(folder, given) for folder in folders)
    return imported


def check_destination(dest: Path, imported: list[ImportedSAE]) -> None:
    """No two imports share a run folder and none exists yet; DEST can be written."""
    owners: dict[str, ImportedSAE] = {}
    for sae in imported:
        other = owners.setdefault(sae.run_name, sae)
        if other is not sae:
            raise DataError(
                f"{other.source_dir} and {sae.source_dir} both give hook {sae.hook_name!r} "
                f"seed {sae.seed} ({other.seed_origin}; {sae.seed_origin}); give each source its "
                "seed with --seed N, or import them into different destinations"
            )
        if (dest / sae.run_name).exists():
            raise OutputError(
                f"{dest / sae.run_name} already exists; choose a new destination or remove it"
            )
    problem = writable_folder_problem(dest)
    if problem is not None:
        raise OutputError(f"cannot write into {dest}: {problem}")


def import_saes(
    library: str,
    sources: list[Path],
    dest: Path,
    seeds: list[int] | None = None,
    activations: Path | None = None,
    activations_key: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Import every SAE under ``sources`` into ``dest``; returns the run folders written."""
    imported = read_sources(library, sources, seeds)
    check_destination(dest, imported)
    rows = ActivationRows(activations, activations_key) if activations is not None else None
    if rows is not None:
        hooks = sorted({sae.hook_name for sae in imported})
        if len(hooks) > 1:
            raise DataError(
                f"--activations are from one hook, and the sources hold SAEs at {hooks}; import "
                "one hook at a time (name its folder as the source)"
            )
        for sae in imported:
            if sae.d_in != rows.d_in:
                raise DataError(
                    f"--activations {activations} has d_in={rows.d_in}; {sae.source_dir} "
                    f"has d_in={sae.d_in}"
                )
    heldout = rows.provenance() if rows is not None else None
    written = []
    for sae in imported:
        stats = heldout_statistics(sae, rows, progress) if rows is not None else None
        written.append(write_run(dest / sae.run_name, sae, stats, heldout))
        print(f"{sae.source_dir} -> {dest / sae.run_name} (seed {sae.seed}: {sae.seed_origin})")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saeseeds.imports",
        description="Import SAEs trained with SAE Lens 6 or sparsify as saeseeds run folders.",
    )
    parser.add_argument("library", choices=sorted(LIBRARIES), help="the library that saved SRC")
    parser.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SRC",
        help="an SAE folder, or a folder holding several (a sparsify run)",
    )
    parser.add_argument(
        "dest",
        type=Path,
        metavar="DEST",
        help="the run folders go to DEST/<hook>/<architecture>-<n_features>/seed=<seed>",
    )
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        metavar="N",
        help="one seed per SRC (each holding one SAE), for sources that record "
        "none or the same one",
    )
    parser.add_argument(
        "--activations",
        type=Path,
        metavar="FILE",
        help="held-out activations at the SAEs' hook, an [N, d_in] matrix in a "
        ".npy or .safetensors file: adds feature_stats and metrics",
    )
    parser.add_argument(
        "--activations-key",
        metavar="NAME",
        help="the tensor to read from a .safetensors file holding several",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        written = import_saes(
            args.library,
            args.sources,
            args.dest,
            args.seed,
            args.activations,
            args.activations_key,
            progress=not args.no_progress,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"Imported {len(written)} SAE(s). Analyse them: python analyze.py sweep_dir={args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
