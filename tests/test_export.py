"""Export to ONNX and TorchScript, verification, metadata, and the torch-free sampler."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganforge import checkpoint, rundir
from ganforge.cli import app
from ganforge.config import TrainConfig
from ganforge.errors import UsageError
from ganforge.exporting import ExportMismatch, check_inference_batchnorm, export
from ganforge.models import load_generator
from ganforge.inference import Sampler
from ganforge.plugins import get_registry
from ganforge.training import train

runner = CliRunner()


def make_run(root, **settings):
    base = dict(steps=2, batch_size=16, log_every=1, out_dir=str(root), sample_every=100, checkpoint_every=100)
    return train(TrainConfig(**{**base, **settings}), progress=False)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A class-conditional DCGAN with BatchNorm and an EMA generator."""
    return make_run(tmp_path_factory.mktemp("img"), arch="dcgan", dataset="digits", image_size=16, latent_dim=8,
                    conditional=True, ema=True, arch_options={"width": 8})


@pytest.fixture(scope="module")
def points_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("pts"), arch="mlp", dataset="ring", latent_dim=3,
                    arch_options={"hidden": 16}, data_options={"n": 256})


@pytest.fixture(scope="module")
def exported(image_run, points_run):
    """{"image.onnx": path, "image.pt": path, "points.onnx": ..., "points.pt": ...}"""
    return {f"{name}{path.suffix}": path for name, run in (("image", image_run), ("points", points_run))
            for path, _ in export(run)}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Every registered architecture, built-in or from a plugin, must export and verify.
EXPORT_CASES = [("digits", {"image_size": 32}), ("ring", {"data_options": {"n": 64}}),
                ("digits", {"image_size": 32, "conditional": True}), ("digits", {"image_size": 16}),
                ("digits", {"image_size": 64, "conditional": True})]


@pytest.mark.parametrize("dataset,settings", EXPORT_CASES,
                         ids=["images", "points", "conditional", "images-16", "conditional-64"])
@pytest.mark.parametrize("arch", get_registry().names("architectures"))
def test_every_architecture_exports_and_verifies(tmp_path, monkeypatch, arch, dataset, settings):
    monkeypatch.setattr("ganforge.callbacks.SAMPLES", 4)  # the run's sample grids are not what this tests: small
    try:
        run_dir = make_run(tmp_path, arch=arch, dataset=dataset, steps=1, **settings)
    except UsageError:  # the architecture refuses this data (dcgan or resnet and points); the arch tests check refusals
        builtin = get_registry().get("architectures", arch).plugin.builtin
        assert not builtin or (arch in ("dcgan", "resnet") and dataset == "ring")
        return
    for path, diff in export(run_dir):
        assert path.is_file() and diff <= 1e-4
        assert Sampler(path).sample(3, seed=0).shape[0] == 3


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_metadata_travels_with_the_file(exported, fmt):
    sampler = Sampler(exported[f"image.{fmt}"])
    meta = sampler.metadata
    assert (sampler.latent_dim, sampler.output_shape, sampler.num_classes) == (8, (1, 16, 16), 10)
    assert meta["value_range"] == [-1.0, 1.0] and meta["latent_distribution"] == "normal"
    assert (meta["arch"], meta["loss"], meta["dataset"], meta["step"], meta["generator"]) == (
        "dcgan", "bce", "digits", 2, "ema")
    assert meta["ganforge_version"] and meta["inputs"] == ["z", "labels"]
    points = Sampler(exported[f"points.{fmt}"])
    assert points.output_shape == (2,) and points.value_range is None and points.num_classes is None


def test_onnx_is_valid_with_a_dynamic_batch_and_no_training_batchnorm(exported):
    path = exported["image.onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    check_inference_batchnorm(model)
    sampler = Sampler(path)
    assert sampler.sample(1, seed=0).shape == (1, 1, 16, 16)
    assert sampler.sample(3000, seed=0).shape == (3000, 1, 16, 16)


def test_training_mode_batchnorm_is_caught():
    node = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                                 training_mode=1)
    graph = onnx.helper.make_graph([node], "g", [], [])
    with pytest.raises(ExportMismatch, match="BatchNormalization in training mode"):
        check_inference_batchnorm(onnx.helper.make_model(graph))


@pytest.mark.parametrize("run_name", ["image", "points"])
@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_export_matches_the_ema_generator_and_raw_picks_the_other(tmp_path, request, exported, run_name, fmt):
    run_dir = request.getfixturevalue(f"{run_name}_run")
    sampler = Sampler(run_dir / "export" / f"generator.{fmt}")
    z = sampler.latents(5, seed=3)
    labels = sampler.labels(5)
    state = checkpoint.load(rundir.find(run_dir))
    G, meta = load_generator(run_dir)
    with torch.no_grad():
        args = (torch.from_numpy(z),) + ((torch.from_numpy(labels),) if labels is not None else ())
        expected = G(*args).numpy()
    np.testing.assert_allclose(sampler.generate(z, labels), expected, atol=1e-5)
    assert meta["generator"] == ("ema" if state["ema"] is not None else "raw")
    if state["ema"] is not None:
        raw_G, raw_meta = load_generator(run_dir, raw=True)
        assert raw_meta["generator"] == "raw"
        assert not torch.equal(next(raw_G.parameters()), next(G.parameters()))


def test_verification_fails_on_a_broken_export_and_keeps_the_old_file(points_run, monkeypatch):
    import ganforge.exporting as export_module

    good = points_run / "export" / "generator.onnx"
    before = good.read_bytes()
    original = export_module.to_onnx

    def broken(G, meta, path, opset=None):  # exports a generator whose weights were nudged
        import copy

        bad = copy.deepcopy(G)
        with torch.no_grad():
            next(bad.parameters()).add_(0.05)
        original(bad, meta, path, opset)

    monkeypatch.setattr(export_module, "to_onnx", broken)
    result = invoke("export", points_run, "--format", "onnx")
    assert result.exit_code == 1
    assert result.output.startswith("Error: the onnx export does not match PyTorch: max abs difference ")
    assert good.read_bytes() == before
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".tmp")]


def test_export_cli_names_and_checkpoints(image_run, tmp_path):
    result = invoke("export", image_run, "--format", "onnx", "--out", tmp_path / "g.onnx", "--checkpoint", "step-2")
    assert result.exit_code == 0, result.output
    assert "verified against PyTorch: max abs difference" in result.output
    assert Sampler(tmp_path / "g.onnx").metadata["step"] == 2
    result = invoke("export", image_run, "--out", tmp_path / "g.pt")  # format from the suffix
    assert result.exit_code == 0 and (tmp_path / "g.pt").is_file()


def test_seed_is_deterministic_and_class_is_respected(exported):
    path = exported["image.onnx"]
    sampler = Sampler(path)
    a, b, c = sampler.sample(8, seed=1), sampler.sample(8, seed=1), sampler.sample(8, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    sevens = sampler.sample(4, seed=1, cls=7)
    np.testing.assert_array_equal(sevens, sampler.generate(sampler.latents(4, 1), np.full(4, 7)))
    assert a.min() >= -1 and a.max() <= 1


def test_sample_cli_writes_png_npy_gif(exported, tmp_path):
    onnx_path = exported["image.onnx"]
    pts_path = exported["points.onnx"]
    assert invoke("sample", onnx_path, "-n", 16, "--seed", 0, "--out", tmp_path / "grid.png").exit_code == 0
    assert Image.open(tmp_path / "grid.png").format == "PNG"
    assert invoke("sample", onnx_path, "-n", 16, "--seed", 0, "--out", tmp_path / "grid.jpg").exit_code == 0
    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"  # the format its name says
    assert invoke("sample", onnx_path, "-n", 5, "--seed", 0, "--class", 3, "--out", tmp_path / "x.npy").exit_code == 0
    x = np.load(tmp_path / "x.npy", allow_pickle=False)
    np.testing.assert_array_equal(x, Sampler(onnx_path).sample(5, seed=0, cls=3))
    assert invoke("sample", pts_path, "-n", 500, "--out", tmp_path / "pts.png").exit_code == 0
    assert Image.open(tmp_path / "pts.png").size == (480, 480)  # a scatter plot
    result = invoke("sample", onnx_path, "--interpolate", 3, "-n", 4, "--out", tmp_path / "walk.gif")
    assert result.exit_code == 0, result.output
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.format == "GIF" and gif.n_frames == 12  # 4 keyframes x 3 frames, looping
    pt_path = exported["image.pt"]
    assert invoke("sample", pt_path, "-n", 5, "--seed", 0, "--class", 3, "--out", tmp_path / "y.npy").exit_code == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x, atol=1e-5)  # same latents, same samples


def test_sample_onnx_never_imports_torch(exported, tmp_path):
    path = exported["image.onnx"]
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "from ganforge.cli import app\n"
            f"app(['sample', {str(path)!r}, '-n', '4', '--seed', '0', '--class', '1', '--out', 'g.png'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.png").is_file()


def test_torchscript_loads_without_ganforge(exported, tmp_path):
    path = exported["image.pt"]
    code = ("import sys, json, torch; sys.modules['ganforge'] = None\n"
            "extra = {'ganforge.json': ''}\n"
            f"m = torch.jit.load({str(path)!r}, _extra_files=extra)\n"
            "meta = json.loads(extra['ganforge.json'])\n"
            "x = m(torch.randn(3, meta['latent_dim']), torch.tensor([0, 1, 2]))\n"
            "print(json.dumps([list(x.shape), meta['output_shape']]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[3, 1, 16, 16], [1, 16, 16]]


def test_sample_bad_input(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = exported["image.onnx"]
    pts = exported["points.onnx"]
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (tmp_path / "model.txt").write_text("x")
    cases = [
        (["sample", "missing.onnx"], "Error: model file missing.onnx does not exist"),
        (["sample", "corrupt.onnx"], "Error: corrupt.onnx is not a valid ONNX model ("),
        (["sample", "model.txt"], "Error: model.txt is neither .onnx nor .pt (TorchScript)"),
        (["sample", pts, "--class", 1], "Error: generator.onnx is not class-conditional: drop --class"),
        (["sample", img, "--class", 10], "Error: --class must be in 0..9 for generator.onnx, got 10"),
        (["sample", img, "-n", 0], "Error: -n must be positive, got 0"),
        (["sample", img, "--format", "bmp"], "Error: unknown format 'bmp'; use png, jpg, npy or gif"),
        (["sample", img, "--out", "x.txt"], "Error: cannot tell the format from x.txt: name it .png, .jpg, .npy or "
                                            ".gif, or pass --format"),
        (["sample", img, "--interpolate", 0], "Error: --interpolate takes the number of frames between key latents, "
                                              "at least 1; got 0"),
        (["sample", img, "--out", "w.gif"], "Error: --interpolate writes a gif, and a gif needs --interpolate N"),
        (["sample", img, "--out", "nodir/x.png"], "Error: output directory nodir does not exist"),
    ]
    for args, message in cases:
        result = invoke(*args, "--out", "out.png") if "--out" not in args else invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith(message), (args, result.output)
        assert result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.onnx", "model.txt"]  # nothing written


def test_export_bad_input(tmp_path, image_run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.toml").write_text("")
    cases = [
        (["export", tmp_path / "nope"], f"Error: run directory {tmp_path / 'nope'} does not exist"),
        (["export", tmp_path / "empty"], f"Error: {tmp_path / 'empty'} has no checkpoints"),
        (["export", image_run, "--format", "tflite"], "Error: unknown format 'tflite'; use one of: onnx, torchscript, all"),
        (["export", image_run, "--checkpoint", "step-9"], f"Error: no checkpoint 'step-9' in {image_run}; available: step-2"),
        (["export", image_run, "--out", tmp_path / "g.bin"], "Error: cannot tell the format from g.bin"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith(message), (args, result.output)


class WideMLP:
    """A plugin architecture (mlp under another name) from a package that may go missing."""

    from ganforge import hookimpl

    @hookimpl
    def register_architectures(self, register):
        from ganforge.builtin.architectures import mlp

        register("wide-mlp", mlp)


def test_export_and_resume_of_a_run_whose_plugin_is_gone_name_the_package(tmp_path):
    from ganforge.plugins import plugin_registered

    with plugin_registered(WideMLP(), name="wide"):
        run_dir = make_run(tmp_path, arch="wide-mlp", dataset="ring", steps=1, data_options={"n": 64})
        assert export(run_dir, ("onnx",))[0][0].is_file()
    message = ("needs architecture 'wide-mlp' from package (in-process)  (plugin 'wide'), which is not installed: "
               "pip install (in-process)")
    for args in (["export", run_dir], ["train", "--resume", run_dir, "--no-progress"]):
        result = invoke(*args)
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("dim", [2, 100])
def test_interpolation_keeps_the_latent_norm_between_the_endpoints(dim):
    """Slerp of raw 2-D latents pointing nearly opposite ways sent |z| to the hundreds; the walk keeps it in
    [min(|a|, |b|), max(|a|, |b|)] and the direction on the great circle, in any dimension."""
    from ganforge.inference import latents, slerp

    for seed in range(300):
        a, b = latents(2, dim, seed)[:1], latents(2, dim, seed)[1:]
        norms = sorted([np.linalg.norm(a), np.linalg.norm(b)])
        walk = np.concatenate([slerp(a, b, t) for t in np.linspace(0, 1, 21)])
        assert np.all(np.linalg.norm(walk, axis=1) >= norms[0] - 1e-4)
        assert np.all(np.linalg.norm(walk, axis=1) <= norms[1] + 1e-4)
        np.testing.assert_allclose(walk[[0, -1]], np.concatenate([a, b]), atol=1e-5)
        cosines = walk[1:] @ walk[:-1].T / np.outer(np.linalg.norm(walk[1:], axis=1), np.linalg.norm(walk[:-1], axis=1))
        steps = np.arccos(np.clip(np.diag(cosines), -1, 1))
        np.testing.assert_allclose(steps, steps.mean(), atol=1e-3)  # constant angular speed


def test_truncation_pulls_latents_to_the_prior_mean_in_the_sampler_and_the_cli(exported, tmp_path):
    from ganforge.inference import latents, truncate

    z = latents(5, 8, 3)
    assert truncate(z, 1.0) is z and not truncate(z, 0.0).any()
    np.testing.assert_array_equal(truncate(z, 0.5), np.float32(0.5 * z.astype(np.float64)))
    sampler = Sampler(exported["image.onnx"])
    np.testing.assert_allclose(sampler.sample(6, seed=3, truncation=0.5),
                               sampler.generate(truncate(latents(6, 8, 3), 0.5), sampler.labels(6)), atol=1e-6)
    assert np.abs(sampler.sample(6, seed=3, truncation=0.5) - sampler.sample(6, seed=3)).max() > 1e-3
    walk = sampler.interpolate(2, 3, seed=1, truncation=0.0)
    np.testing.assert_allclose(walk, np.broadcast_to(walk[0], walk.shape), atol=1e-6)  # every latent is the mean
    result = invoke("sample", exported["image.onnx"], "-n", 6, "--seed", 3, "--truncation", 0.5,
                    "--out", tmp_path / "s.npy")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), sampler.sample(6, seed=3, truncation=0.5), atol=1e-6)
    result = invoke("sample", exported["image.onnx"], "--truncation", 1.5, "--out", tmp_path / "t.png")
    assert (result.exit_code, result.output) == (2, "Error: --truncation must be between 0 and 1 (1: none), got 1.5\n")
    with pytest.raises(UsageError, match=r"^truncation must be between 0 and 1 \(1: none\), got -0.1$"):
        truncate(z, -0.1)


class Dominant(torch.nn.Module):
    """G whose first activation is ReLU(A z) with A stretching one known latent direction 20x."""

    def __init__(self, direction):
        super().__init__()
        self.latent_dim, self.output_shape = 6, (1, 4, 4)
        A = torch.randn(64, 6, generator=torch.Generator().manual_seed(0)) * 0.1
        A += 2.0 * torch.randn(64, 1, generator=torch.Generator().manual_seed(1)) @ direction[None]
        self.first, self.act, self.out = torch.nn.Linear(6, 64, bias=False), torch.nn.ReLU(), torch.nn.Linear(64, 16)
        with torch.no_grad():
            self.first.weight.copy_(A)

    def forward(self, z):
        return self.out(self.act(self.first(z))).reshape(-1, 1, 4, 4)


def test_principal_directions_find_the_direction_g_stretches_and_map_it_to_latent_space():
    from ganforge.exporting import principal_directions

    direction = torch.nn.functional.normalize(torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0]), dim=0)
    G = Dominant(direction).eval()
    meta = {"latent_dim": 6, "num_classes": None, "inputs": ["z"]}
    found = principal_directions(G, meta, k=3, n=512)
    assert found["layer"] == "act" and found["samples"] == 512 and len(found["vectors"]) == 3
    vectors = np.array(found["vectors"])
    assert vectors.shape == (3, 6)
    first = vectors[0] / np.linalg.norm(vectors[0])
    assert abs(first @ direction.numpy()) > 0.99  # the stretched direction comes first
    assert abs(np.linalg.norm(vectors[0]) - 1.0) < 0.15  # one standard deviation of z along it: about 1
    assert found["explained"][0] > 0.5 and found["explained"] == sorted(found["explained"], reverse=True)
    assert principal_directions(G, meta, k=3, n=512) == found  # deterministic


def test_image_exports_store_their_directions_and_edit_applies_them(exported):
    for fmt in ("onnx", "pt"):
        sampler = Sampler(exported[f"image.{fmt}"])
        assert sampler.directions.shape == (8, 8) and sampler.metadata["directions"]["layer"] == "net.2"
        z = sampler.latents(2, seed=4)
        values = np.array([1.5, 0, -2, 0, 0, 0, 0, 0.5])
        np.testing.assert_allclose(sampler.edit(z, values), z + values @ sampler.directions, atol=1e-6)
        with pytest.raises(UsageError, match=r"has 8 directions, got 2 values$"):
            sampler.edit(z, [1, 2])
    points = Sampler(exported["points.onnx"])
    assert points.directions is None and "directions" not in points.metadata  # no sliders for points
    with pytest.raises(UsageError, match=r"generator.onnx has no principal directions; export it again"):
        points.edit(points.latents(1, seed=0), [1.0])
