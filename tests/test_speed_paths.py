"""The fast paths change speed, never results: streaming equals in-memory, channels_last and
--fast settings, compile without per-step recompilation."""
import pytest
import torch
from PIL import Image

from ganforge import checkpoint, rundir
from ganforge.config import TrainConfig
from ganforge.interfaces import StreamingData
from ganforge.plugins import get_registry
from ganforge.data import load_data
from ganforge.device import fast_settings
from ganforge.training import train


def weights(run_dir):
    state = checkpoint.load(rundir.find(run_dir))
    return {f"{p}.{k}": v for p in ("G", "D") for k, v in state[p].items()}


def run(tmp_path, name, **settings):
    base = dict(arch="dcgan", loss="lsgan", image_size=16, latent_dim=8, batch_size=16, steps=6,
                arch_options={"width": 8}, out_dir=str(tmp_path), name=name, log_every=3, checkpoint_every=4)
    return train(TrainConfig(**{**base, **settings}), progress=False)


def test_streaming_draws_exactly_the_in_memory_batches(tmp_path):
    # 1797 digits / 16 = 112 batches an epoch: 120 steps cross an epoch boundary
    memory = run(tmp_path, "memory", steps=120, conditional=True)
    stream = run(tmp_path, "stream", steps=120, conditional=True, data_path="stream")
    a, b = weights(memory), weights(stream)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_resume_mid_epoch_is_exact(tmp_path):
    straight = run(tmp_path, "straight", steps=10, data_path="stream")
    cut = run(tmp_path, "cut", steps=6, data_path="stream")  # checkpoint at 4 and 6
    (cut / "checkpoints" / "step-6.safetensors").unlink()
    cfg = TrainConfig(**{**checkpoint.load(rundir.find(cut))["config"], "steps": 10})
    train(cfg, cut, resume=True, progress=False)
    a, b = weights(straight), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_large_folders_stream_automatically(tmp_path):
    for i in range(20):
        Image.new("RGB", (24, 20), (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
    small = get_registry().create("datasets", "folder", tmp_path, 16, False)
    large = get_registry().create("datasets", "folder", tmp_path, 16, False, max_memory_mb=0)
    assert not isinstance(small, StreamingData) and isinstance(large, StreamingData)
    assert len(large) == 20 and large.shape == (3, 16, 16)
    assert torch.equal(large.dataset[3][0], small.x[3])
    with pytest.raises(Exception, match="too large to hold in memory; drop --data-path memory"):
        load_data("folder", str(tmp_path), 16, options={"max_memory_mb": 0}, path="memory")
    run_dir = run(tmp_path / "runs", "folder", dataset="folder", data_root=str(tmp_path), batch_size=4,
                  steps=3, data_options={"max_memory_mb": 0})
    assert rundir.find(run_dir).name == "step-3.safetensors"


def test_channels_last_trains_the_same_model(tmp_path):
    plain = weights(run(tmp_path, "plain"))
    nhwc = weights(run(tmp_path, "nhwc", channels_last=True))
    assert plain.keys() == nhwc.keys()
    for k in plain:  # same computation in another memory layout: equal up to float rounding
        torch.testing.assert_close(plain[k], nhwc[k], rtol=1e-3, atol=1e-4)


def test_fast_settings_follow_measurements(monkeypatch):
    import ganforge.device as device_module

    monkeypatch.setattr(device_module, "_bf16_speedup", lambda device: 0.01)  # emulated bf16 (AVX2 CPUs)
    assert fast_settings("cpu") == {"channels_last": True}
    monkeypatch.setattr(device_module, "_bf16_speedup", lambda device: 2.5)  # AVX-512 BF16 / AMX
    assert fast_settings("cpu") == {"channels_last": True, "precision": "bf16"}
