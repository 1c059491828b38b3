"""Plugins found through real entry points: a *.dist-info with entry_points.txt on sys.path,
exactly what `pip install` leaves behind. Broken ones are isolated; conflicts and disabling work."""
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ganforge.cli import app
from ganforge.plugins import get_registry

GUIDE = Path(__file__).parents[1] / "docs" / "plugins.md"
runner = CliRunner()

BROKEN = {
    "import": "import ganforge_no_such_dependency\n",
    "raising": ("from ganforge import hookimpl\n\n@hookimpl\ndef register_losses(register):\n"
                "    register('half', object)\n    raise RuntimeError('boom in hook')\n"),
    "signature": "from ganforge import hookimpl\n\n@hookimpl\ndef register_losses(register, extra):\n    pass\n",
    "misspelt": "from ganforge import hookimpl\n\n@hookimpl\ndef register_loses(register):\n    pass\n",
}
REASONS = {
    "import": "ModuleNotFoundError: No module named 'ganforge_no_such_dependency'",
    "raising": "RuntimeError: boom in hook",
    "signature": "PluginValidationError",
    "misspelt": "unknown hook register_loses",
}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_plugin_is_reported_and_the_rest_keeps_working(site, tmp_path, kind):
    site(f"ganforge-broken-{kind}", f"broken_{kind}", f"broken_{kind}", BROKEN[kind])
    result = invoke("plugins")
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if l.startswith(f"broken_{kind} "))
    assert line.startswith(f"broken_{kind}  (ganforge-broken-{kind} 1.0)  ERROR ") and REASONS[kind] in line
    assert "Traceback" not in result.output
    assert "Traceback (most recent call last)" in invoke("plugins", "--verbose").output

    result = invoke("train", "--arch", "mlp", "--dataset", "ring", "--data-opt", "n=64", "--batch-size", 16,
                    "--steps", 1, "--out-dir", tmp_path / "runs", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"Warning: plugin 'broken_{kind}' (ganforge-broken-{kind}) failed to load: " in result.output
    result = invoke("train", "--loss", "half", "--no-progress")
    assert result.exit_code == 2
    assert f"Not loaded: plugin 'broken_{kind}' (" in result.output  # the error names the broken plugin


def test_disabled_plugin_is_never_imported(site, monkeypatch):
    site("ganforge-broken-import", "broken_import", "broken_import", BROKEN["import"])
    result = invoke("--disable-plugin", "broken_import", "plugins")
    assert "broken_import  (ganforge-broken-import 1.0)  disabled" in result.output
    assert "broken_import" not in sys.modules
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "broken_import")
    assert "disabled" in invoke("plugins").output
    assert "ERROR" not in invoke("plugins").output


def test_conflicting_names_need_the_qualified_form(site, tmp_path):
    source = "from ganforge import hookimpl\nfrom ganforge.builtin.losses import {cls}\n\n" \
             "@hookimpl\ndef register_losses(register):\n    register('twin', {cls})\n"
    site("ganforge-twin-a", "twin_a", "twin_a", source.format(cls="LeastSquares"))
    site("ganforge-twin-b", "twin_b", "twin_b", source.format(cls="Hinge"))
    assert "conflict: loss 'twin' is provided by twin_a, twin_b; use twin_a:twin or twin_b:twin" \
        in invoke("plugins").output
    common = ["--arch", "mlp", "--dataset", "ring", "--data-opt", "n=64", "--batch-size", 16, "--steps", 1,
              "--out-dir", tmp_path, "--no-progress"]
    result = invoke("train", "--loss", "twin", *common)
    assert result.exit_code == 2
    assert result.output == ("Error: loss 'twin' is provided by 'twin_a' (ganforge-twin-a), 'twin_b' "
                             "(ganforge-twin-b): pick one with 'twin_a:twin' or 'twin_b:twin'\n")
    result = invoke("train", "--loss", "twin_b:twin", *common)
    assert result.exit_code == 0, result.output
    run_json = (tmp_path / "mlp-twin_b_twin-ring-001" / "run.json").read_text()
    assert '"package": "ganforge-twin-b"' in run_json and '"version": "1.0"' in run_json


def test_the_guides_plugin_installs_and_trains(site, tmp_path):
    """docs/plugins.md's complete loss plugin, installed from the guide's own text."""
    text = GUIDE.read_text()
    pyproject = re.findall(r"```toml\n(.*?)```", text, flags=re.S)[0]
    module = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    dist = re.search(r'name = "(.*?)"', pyproject).group(1)
    entry, target = re.search(r"\[project.entry-points.ganforge\]\n(\S+) = \"(.*?)\"", pyproject).groups()
    site(dist, entry, target, module, version=re.search(r'version = "(.*?)"', pyproject).group(1))
    assert "softhinge" in invoke("plugins").output
    loss = get_registry().create("losses", "softhinge", margin=0.5)
    r, f = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -3.0])
    expected = torch.nn.functional.softplus(0.5 - r).mean() + torch.nn.functional.softplus(0.5 + f).mean()
    torch.testing.assert_close(loss.discriminator_loss(lambda x, labels=None: x, r, f), expected)
    result = invoke("train", "--loss", "softhinge", "--loss-opt", "margin=0.5", "--arch", "mlp", "--dataset",
                    "ring", "--data-opt", "n=64", "--batch-size", 16, "--steps", 2, "--out-dir", tmp_path,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "loss_options = {\"margin\" = 0.5}" in (tmp_path / "mlp-softhinge-ring-001" / "config.toml").read_text()
