"""Run logging on rank 0: a plain-text log (config first), TensorBoard scalars and images.
Other ranks get a logger that does nothing, so call sites need no `if rank == 0`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np




class RunLogger:
    def __init__(self, run_dir, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self.run_dir = Path(run_dir)
        self._text = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._text = open(self.run_dir / "log.txt", "a", buffering=1)

    def log(self, message: str, echo: bool = True) -> None:
        """Append to log.txt; also print unless echo=False (the full config goes to the file only)."""
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        if echo:
            print(message, file=sys.stdout, flush=True)
        self._text.write(line + "\n")

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._tb

    def scalars(self, values: dict, step: int) -> None:
        if self.enabled:
            for key, value in values.items():
                if value is not None:
                    self.tb.add_scalar(key, value, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.enabled:
            self.tb.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._text is not None:
            self._text.close()
