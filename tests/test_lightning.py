import pytest
import torch
from torch import nn

from explanations import Gaussian, compile_model
from explanations.events import Above
from storage import open_run
from tracker.costs import training_step_flops
from train.models import mlp
from train.tasks import RegressionTask

lightning = pytest.importorskip("lightning")


class Regression(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = mlp([4, 16, 2], "tanh", seed=0, bias_std=0.1)

    def training_step(self, batch, index):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_lightning_callback_tracks_a_fit(tmp_path):
    from tracker.lightning import TrackerCallback

    D = Gaussian.standard(4)
    x, y = RegressionTask(D, 2, seed=0).sample(30 * 256, torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256)
    callback = TrackerCallback(D, module="net", events={"high": Above(0, 1.0)}, path=tmp_path / "run.h5", every=10)
    trainer = lightning.Trainer(max_steps=30, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                                enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    model = Regression()
    trainer.fit(model, loader)
    ledger = callback.tracker.ledger
    assert ledger.steps == 30 and ledger.ratio <= 1.0 and ledger.overruns == 0
    assert ledger.training_flops == 30 * training_step_flops(compile_model(model.net), 256)
    run = open_run(tmp_path / "run.h5")
    assert run.steps == [10, 20, 30] and callback.tracker.explanation is not None
