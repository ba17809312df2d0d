"""Reproductions of the published seed-stability studies on the embedded model.

``experiments`` says what each study trains (``conf/experiment/*.yaml`` and the passes
``scripts/run_studies.py`` adds), ``summaries`` reads what ``analyze.py`` wrote, ``masking`` is
the masking experiment of Gerasimov et al., ``claims`` judges each published claim against our
numbers, and ``page`` and ``figures`` write ``docs/results.md``. The analysis package never
imports this one.
"""
