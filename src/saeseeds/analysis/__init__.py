"""The stability-analysis app: are the features of SAEs trained with different seeds the same?

It reads run folders through the run-folder contract (docs/contract.md, version 1) and
never imports training code (``saeseeds.sae``, ``saeseeds.data``, ``saeseeds.config``, Lightning
modules). Entry point: :func:`saeseeds.analysis.app.run_analysis`, called by ``analyze.py``.
"""
