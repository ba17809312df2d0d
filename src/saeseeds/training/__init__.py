"""Training: what a job does, top to bottom, in this package (:mod:`.job` → :mod:`.seeds` →
:mod:`.run` → :mod:`.module` on the batches of :mod:`.datamodule` → :mod:`.finish`), and what
keeps it safe to stop and rerun in :mod:`.lifecycle` (resume, job records, atomic checkpoints,
preemption). A job trains S >= 1 seeds in one fit; one seed is S = 1.
"""
