"""The plugin guide's example plugin, extracted from docs/plugins.md and trained with, so the docs cannot rot."""
import re
import types
from pathlib import Path

import torch

from ganforge.config import TrainConfig
from ganforge.plugins import plugin_registered
from ganforge.train import train

GUIDE = Path(__file__).parents[1] / "docs" / "plugins.md"


def guide_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_plugin_registers_and_trains(tmp_path):
    module = types.ModuleType("ganforge_softhinge")
    exec(compile(guide_blocks("python")[0], "ganforge_softhinge.py", "exec"), module.__dict__)
    assert 'softhinge = "ganforge_softhinge"' in guide_blocks("toml")[0]
    with plugin_registered(module, name="softhinge") as registry:
        loss = registry.create("losses", "softhinge", margin=0.5)
        D = lambda x, labels=None: x  # noqa: E731
        r, f = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -3.0])
        expected = torch.nn.functional.softplus(0.5 - r).mean() + torch.nn.functional.softplus(0.5 + f).mean()
        torch.testing.assert_close(loss.discriminator_loss(D, r, f), expected)
        cfg = TrainConfig(arch="mlp", loss="softhinge", dataset="ring", steps=3, batch_size=16,
                          data_options={"n": 64}, out_dir=str(tmp_path))
        run_dir = train(cfg, progress=False)
    assert (run_dir / "checkpoints" / "step-3.safetensors").is_file()
    assert '"package": "(in-process)"' in (run_dir / "run.json").read_text()
