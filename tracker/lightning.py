"""`TrackerCallback`: the Tracker as a PyTorch Lightning callback (optional dependency).

    trainer = lightning.Trainer(callbacks=[TrackerCallback(D, module="net", method="cumulant",
                                                           events={...}, path="run.h5", every=50)])

At fit start it attaches a `Tracker` to the LightningModule (or its submodule `module`,
the network π explains) and to the trainer's first optimizer; at fit end, or when fit
raises, it closes the Tracker (last checkpoint). Under Lightning's DDP strategy the
Tracker sees torch.distributed and behaves as under plain DDP. Under "ddp_spawn" it lives
in the spawned processes: the run file is written, but `callback.tracker` stays None in
the process that called fit (read the file with `open_run`). Works with `lightning`
or the older `pytorch_lightning` package; without either, constructing it raises
ImportError.
"""
from __future__ import annotations

import importlib

from explanations import Gaussian

from .tracker import Tracker


def _callback_base() -> type:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    return object


class TrackerCallback(_callback_base()):
    """Attach a Tracker for the duration of `trainer.fit` (module docstring)."""

    def __init__(self, distribution: Gaussian, *, module: str | None = None, **tracker_options: object) -> None:
        if type(self).__mro__[1] is object:
            raise ImportError("TrackerCallback needs PyTorch Lightning: pip install lightning")
        super().__init__()
        self.distribution, self.module, self.tracker_options = distribution, module, tracker_options
        self.tracker: Tracker | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        model = pl_module.get_submodule(self.module) if self.module else pl_module
        if not trainer.optimizers:
            raise ValueError("TrackerCallback needs the LightningModule to configure an optimizer")
        self.tracker = Tracker(model, trainer.optimizers[0], self.distribution, **self.tracker_options)

    def _close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()
