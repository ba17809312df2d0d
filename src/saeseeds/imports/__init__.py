"""SAEs trained with other libraries, converted into run folders of the contract.

``python -m saeseeds.imports saelens|sparsify SRC [SRC ...] DEST`` reads SAE Lens 6 folders
(:mod:`.saelens`) or sparsify checkpoints (:mod:`.sparsify`), rewrites their weights in the
contract's form (:mod:`.source`), optionally measures held-out statistics on activations the user
gives (:mod:`.heldout`), and writes one complete run folder per SAE (:mod:`.writer`) that
``analyze.py`` reads like any other. The analysis therefore knows one format only; what an import
lacks (held-out statistics, a trained control) it learns from the folder itself. This package
never trains, never reads a pickle, and never writes into the source folders.
"""
