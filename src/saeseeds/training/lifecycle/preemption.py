"""Stopping on SIGTERM or SIGINT without losing work: the signal a scheduler sends before it
preempts a job (SLURM: SIGTERM, then SIGKILL after a grace period) and Ctrl-C.

:class:`StopSignals` owns both signals for the whole of a training run. During the training loop
a signal only sets a flag; :class:`CheckpointOnSignal` sees it at the end of the current step,
writes ``checkpoints/last.ckpt`` there (the same point of the loop as the periodic checkpoints,
so resuming is exact) and stops the run with :class:`Preempted`. Outside the loop (loading data,
writing the run folder) there is no unsaved training state, so the signal stops the run at once;
every file write is atomic, so nothing is left half-written. Either way no ``COMPLETE`` is
written and the process exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), so
a scheduler or a ``train && analyze`` chain sees a failure. A second Ctrl-C quits without
waiting for the step to end.

Lightning installs its own SIGTERM handler when ``fit`` starts (it would stop with exit status 0
and no checkpoint); :meth:`CheckpointOnSignal.on_train_start` puts ours back.

Under a job scheduler's Python runner that handles a signal itself (submitit's preemption and
timeout signal, SIGUSR2 by default: it requeues the job and exits), that signal is deferred the
same way, and the runner's handler is called once the checkpoint is written, so the requeued job
resumes from the current step (its folder holds the checkpoint; a multirun job resumes by
itself).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Signals taken over only when a Python handler is already installed for them (submitit's).
RUNNER_SIGNALS = (signal.SIGUSR2,)


class Preempted(SystemExit):
    """Training stopped by a signal; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Context manager that handles SIGTERM and SIGINT (and a runner's preemption signal) for
    one run, in the main thread only."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            for signum in RUNNER_SIGNALS:
                if callable(signal.getsignal(signum)):
                    self._previous[signum] = signal.getsignal(signum)
            self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def install(self) -> None:
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in self._previous:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: quit now, without the checkpoint
        if self.received is not None:
            return  # already stopping
        self.received = signum
        if not self.in_training:
            message = f"Stopped by {signal_name(signum)} outside the training loop; no COMPLETE."
            log.warning("%s", message)
            self.stop(message)
        log.warning("%s received: stopping after the current step.", signal_name(signum))

    def stop(self, message: str) -> None:
        """Hand the signal to the runner that handled it before us, if any (submitit requeues
        and exits there); otherwise stop with :class:`Preempted`."""
        signum = self.received
        assert signum is not None
        previous = self._previous.get(signum)
        if signum in RUNNER_SIGNALS and callable(previous):
            previous(signum, None)
        raise Preempted(signum, message)


class CheckpointOnSignal(Callback):
    """Writes ``last.ckpt`` at the current step when a stop signal arrived, then stops; also
    writes it when training ends, so a signal while the run folder is written loses nothing."""

    def __init__(self, signals: StopSignals, checkpoint_path: Path, resume_hint: str):
        self.signals = signals
        self.checkpoint_path = Path(checkpoint_path)
        self.resume_hint = resume_hint

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.install()  # replaces the SIGTERM handler Lightning set at the start of fit
        self.signals.in_training = True
        if self.signals.received is not None:  # arrived while Lightning's handler was in place
            self._stop(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.signals.received is not None:
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signals.received is not None:  # arrived after the last step
            self._stop(trainer)
        self.signals.in_training = False
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.signals.in_training = False

    def _stop(self, trainer: L.Trainer) -> None:
        signum = self.signals.received
        assert signum is not None
        self.signals.in_training = False
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        message = (
            f"Stopped by {signal_name(signum)} at step {trainer.global_step}: checkpoint saved to "
            f"{self.checkpoint_path}; no COMPLETE. {self.resume_hint}"
        )
        log.warning("%s", message)
        self.signals.stop(message)
