import json
import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from explanations import Gaussian, compile_model
from explanations.events import Above
from storage import open_run
from tracker import Tracker
from tracker.costs import training_step_flops
from train.models import mlp
from train.tasks import RegressionTask

BATCHES = (512, 256)      # unequal on purpose: the ledger must sum the ranks' rows
STEPS = 10


def worker(rank: int, port: int, folder: str) -> None:
    """One rank; leaves by os._exit, skipping interpreter teardown, where gloo's worker
    threads can abort the process (pytorch/pytorch#179291)."""
    try:
        train_rank(rank, port, folder)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def train_rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = nn.parallel.DistributedDataParallel(mlp([4, 16, 2], "relu", seed=0, bias_std=0.1))
        D = Gaussian.standard(4)
        task = RegressionTask(D, 2, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(rank)
        with Tracker(model, optimizer, D, events={"high": Above(0, 1.0)}, path=os.path.join(folder, "run.h5"),
                     every=5) as tr:
            for _ in range(STEPS):
                x, y = task.sample(BATCHES[rank], generator)
                loss = nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                assert tr.ledger.explanation_flops <= tr.ledger.budget * tr.ledger.training_flops
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as out:
            json.dump({"training_flops": tr.ledger.training_flops, "steps": tr.step,
                       "has_explanation": tr.explanation is not None}, out)
        dist.barrier()            # no rank exits while another still talks to it (gloo aborts)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_one_writer_ledger_counts_all(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = STEPS * training_step_flops(compile_model(mlp([4, 16, 2], "relu", seed=0)), sum(BATCHES))
    assert [r["training_flops"] for r in ranks] == [expected, expected]
    assert [r["steps"] for r in ranks] == [STEPS, STEPS]
    assert [r["has_explanation"] for r in ranks] == [True, False]
    run = open_run(tmp_path / "run.h5")
    assert run.steps == [5, 10] and run.meta["world_size"] == 2
    assert run.last.ledger["training_flops"] == expected


def stop_worker(rank: int, port: int, folder: str) -> None:
    """A rank whose model's head gains an output at step 3: rank 0's Tracker stops, and both
    ranks must still finish (rank 0 once left the rows' all_reduce, and rank 1 hung in it)."""
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=2)
        model = mlp([4, 8, 2], "relu", seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        tracker = Tracker(model, optimizer, Gaussian.standard(4), method="gaussian")
        for step in range(8):
            if step == 3:
                model[2] = nn.Linear(8, 3)
                optimizer.add_param_group({"params": model[2].parameters()})
            loss = model(torch.randn(8, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with open(os.path.join(folder, f"stopped{rank}.json"), "w") as out:
            json.dump({"stopped": tracker.stopped is not None}, out)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_a_tracker_that_stops_keeps_the_ranks_in_step(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mp.spawn(stop_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"stopped{r}.json").read_text())["stopped"] for r in range(2)] == [True, False]
