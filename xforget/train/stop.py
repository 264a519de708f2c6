"""Stopping a training run cleanly on SIGINT / SIGTERM (the loop checkpoints the step, then returns)."""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch

from xforget.train.distributed import DistInfo, all_reduce_sum


class StopRequest:
    """SIGINT / SIGTERM during the training loop: the first asks the loop to checkpoint the current step and
    stop; a second exits at once (exit code 128 + signal number; checkpoints are atomic, so the latest complete
    one stays). Under torchrun the ranks agree on stopping at the same step (one all-reduce per step)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device, self.signal, self._old = info, device, None, {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT of a background job in a script
                self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            sys.stderr.write(f"\n{name} again: exiting at once (the latest complete checkpoint is kept)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal = name
        sys.stderr.write(f"\n{name}: finishing this step and saving a checkpoint (again to exit at once)\n")
        sys.stderr.flush()

    def requested(self) -> bool:
        if not self.info.enabled:
            return self.signal is not None
        flag = all_reduce_sum(torch.tensor([1.0 if self.signal else 0.0], device=self.device), self.info)
        if flag.item() > 0 and self.signal is None:
            self.signal = "SIGTERM"  # another rank was signalled
        return flag.item() > 0
