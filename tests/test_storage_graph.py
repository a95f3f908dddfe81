import h5py
import pytest
import torch
from torch import nn

from explanations import compile_model
from storage import read_graph, write_graph


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(5, 5), nn.Tanh())

    def forward(self, x):
        return self.f(x) + x


def test_graph_round_trips_through_an_hdf5_file(tmp_path):
    graph = compile_model(nn.Sequential(nn.Linear(3, 5), nn.GELU(), Skip(), nn.Linear(5, 2)))
    with h5py.File(tmp_path / "g.h5", "w") as f:
        write_graph(f.create_group("model"), graph)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        back = read_graph(f["model"])
    x = torch.randn(20, 3)
    assert torch.equal(back.forward(x), graph.forward(x))


def test_foreign_group_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("meta", data="{not json")
        f.create_group("arrays")
        f.create_group("empty")
    with h5py.File(tmp_path / "other.h5", "r") as f:
        with pytest.raises(ValueError, match="holds no π-tracker graph"):
            read_graph(f["empty"])
        with pytest.raises(ValueError, match="corrupt"):
            read_graph(f)
