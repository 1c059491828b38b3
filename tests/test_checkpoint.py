"""Checkpoints: pickle-free round trips, and refusal of anything that is not one."""
import pickle

import pytest
import torch

from ganforge import checkpoint, rundir
from ganforge.errors import UsageError


def adam_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_models_optimizers_and_rng(tmp_path):
    model, opt = adam_state()
    state = {"step": 7, "model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
             "nested": {"list": [1, 2.5, "x", None], "tensors": [torch.arange(3)]}}
    path = checkpoint.save(tmp_path / "step-7.safetensors", state)
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = checkpoint.load(path)
    assert loaded["step"] == 7 and loaded["nested"]["list"] == [1, 2.5, "x", None]
    assert torch.equal(loaded["nested"]["tensors"][0], torch.arange(3))
    assert torch.equal(loaded["rng"], state["rng"])
    assert list(loaded["opt"]["state"]) == [0, 1, 2, 3]  # int keys survive (JSON would make them str)

    model2, opt2 = adam_state()
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["opt"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_pickle_offered_as_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "step-1.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    torch.save({"x": 1}, tmp_path / "model.pt")
    for bad in (path, tmp_path / "model.pt"):
        with pytest.raises(UsageError, match="is not a readable ganforge checkpoint"):
            checkpoint.load(bad)
    assert not marker.exists()


def test_plain_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="is not a readable ganforge checkpoint"):
        checkpoint.load(tmp_path / "w.safetensors")


def test_truncated_checkpoint_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "step-1.safetensors", {"w": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(UsageError, match="is not a readable ganforge checkpoint"):
        checkpoint.load(path)


def test_find_picks_the_latest_or_a_named_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for step in (900, 1000, 50):
        checkpoint.save(tmp_path / "checkpoints" / f"step-{step}.safetensors", {"step": step})
    assert rundir.find(tmp_path).name == "step-1000.safetensors"  # numeric, not string order
    assert rundir.find(tmp_path, "step-50").name == "step-50.safetensors"
    with pytest.raises(UsageError) as err:
        rundir.find(tmp_path, "step-7")
    assert str(err.value) == f"no checkpoint 'step-7' in {tmp_path}; available: step-50, step-900, step-1000"
    with pytest.raises(UsageError, match="has no checkpoints"):
        rundir.find(tmp_path / "empty")
