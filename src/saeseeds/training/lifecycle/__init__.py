"""A job's lifecycle machinery, apart from what it trains: whether each folder starts, resumes,
is skipped or is refused (:mod:`.resume`); the records a job leaves for its sweep
(:mod:`.records`) and the sweep's summary (:mod:`.sweep`); atomic checkpoints and the record in
each (:mod:`.checkpoint_io`, :mod:`.lightning_plugins`); and the checkpoint on a stop signal
(:mod:`.preemption`).
"""
