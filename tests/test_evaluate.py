"""Evaluation end to end: the Evaluator, ``ganforge evaluate``, the cached MNIST classifier,
``--eval-every``/``--keep-best``, PacGAN packing and the toy datasets' recommended settings."""
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ganforge
from ganforge import checkpoint, hookimpl, rundir
from ganforge.builtin.datasets import grid, mnist, ring, stacked_mnist
from ganforge.builtin.extractors import classifier
from ganforge.builtin.losses import gradient_penalty
from ganforge.cli import app
from ganforge.config import TrainConfig
from ganforge.layering import resolve
from ganforge.errors import UsageError
from ganforge.evaluation import Evaluator
from ganforge.interfaces import Data, FeatureExtractor
from ganforge.plugins import get_registry, plugin_registered
from ganforge.layering import recommended_settings
from ganforge.models import Packed
from ganforge.training import train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
runner = CliRunner()
TINY = {"arch": "mlp", "dataset": "ring", "data_options": {"n": 512}, "arch_options": {"hidden": 16},
        "batch_size": 32, "latent_dim": 2, "pack": 1, "log_every": 5, "sample_every": 1000}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_run(tmp_path, **settings) -> Path:
    cfg = resolve(TrainConfig().to_dict(), TINY, {"out_dir": str(tmp_path), "name": "run", **settings})
    return train(cfg, progress=False)


def real_ring(z, labels=None):
    """A 'generator' that returns real ring samples: the toy metrics of the data itself."""
    return ring(n=len(z), seed=int(abs(z[0, 0].item()) * 1e6)).x


def test_evaluator_scores_real_data_as_real_and_is_deterministic():
    evaluator = Evaluator(ring())
    first = evaluator(real_ring, 2)
    assert evaluator.samples == 2500 and first["modes"] == 8 and first["high_quality"] > 0.98
    assert evaluator(real_ring, 2) == first
    z1, z2 = evaluator.latents(2, None)[0], Evaluator(ring(), seed=1).latents(2, None)[0]
    assert not torch.equal(z1, z2)


def test_evaluator_generates_in_batches_of_the_given_size():
    sizes = []

    def generate(z, labels):
        sizes.append(len(z))
        return torch.zeros(len(z), 2)

    Evaluator(ring(), samples=1100, batch_size=500)(generate, 2)
    assert sizes == [500, 500, 100]


def test_conditional_generators_get_every_class_in_equal_shares():
    z, labels = Evaluator(ring(), samples=2500).latents(2, 10)
    assert np.bincount(labels.numpy()).tolist() == [250] * 10


def test_evaluator_errors_name_the_problem():
    with pytest.raises(UsageError, match="the toy metrics need a Gaussian-mixture dataset"):
        Evaluator(Data(torch.zeros(10, 2)), ["toy"])
    with pytest.raises(UsageError, match="metric 'is' needs an extractor that predicts classes; 'raw' does not"):
        Evaluator(ring(n=100), ["is"])
    with pytest.raises(UsageError, match="makes samples of shape \\(3,\\), the dataset has \\(2,\\)"):
        Evaluator(ring(n=100))(lambda z, labels: torch.zeros(len(z), 3), 2)


class MeanFeatures(FeatureExtractor):
    description = "the mean of each sample"

    def __call__(self, x):
        return x.flatten(1).mean(1, keepdim=True), None


class ExtractorPlugin:
    @hookimpl
    def register_feature_extractors(self, register):
        register("mean", lambda reference, device: MeanFeatures())


def test_a_plugin_feature_extractor_is_used_by_name():
    with plugin_registered(ExtractorPlugin()) as registry:
        data = Data(torch.randn(400, 3))
        evaluator = Evaluator(data, ["fid"], "mean", registry=registry)
        shifted = evaluator(lambda z, labels: torch.randn(len(z), 3, generator=torch.Generator()) + 1, 2)
    # features are the per-sample means: N(0, 1/3) real against N(1, 1/3) generated -> FID about 1
    assert shifted["fid"] == pytest.approx(1.0, abs=0.2)
    assert isinstance(evaluator.extractor, MeanFeatures)


def test_evaluate_a_run_and_its_onnx_export_give_the_same_numbers(tmp_path):
    run = tiny_run(tmp_path, steps=30, ema=True)
    result = invoke("evaluate", run, "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert "against ring: 2500 samples, seed 0" in result.output and "high_quality" in result.output
    from_run = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert set(from_run) == {"modes", "high_quality", "reverse_kl"}
    assert (tmp_path / "r.png").stat().st_size > 0
    assert invoke("export", run, "-f", "onnx", "-o", tmp_path / "g.onnx").exit_code == 0
    result = invoke("evaluate", tmp_path / "g.onnx", "--metrics", "toy,fid", "--samples", 2500,
                    "--json", tmp_path / "o.json")
    assert result.exit_code == 0, result.output
    from_onnx = json.loads((tmp_path / "o.json").read_text())["metrics"]
    assert from_onnx["modes"] == from_run["modes"]
    assert from_onnx["high_quality"] == pytest.approx(from_run["high_quality"], abs=1 / 2500)
    assert from_onnx["fid"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--metrics", "fdi"], "Error: unknown metric 'fdi'; choose from toy, fid"),
    (["--metrics", "is"], "Error: metric 'is' needs an extractor that predicts classes"),
    (["--checkpoint", "best"], "Error: no checkpoint 'best' in"),
    (["--dataset", "mnist", "--data-root", "/nonexistent", "--no-download"], "Error: MNIST (train) not found"),
    (["--samples", "1"], "Error: --samples must be at least 2, got 1"),
])
def test_evaluate_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    run = tiny_run(tmp_path, steps=2)
    result = invoke("evaluate", run, *args)
    assert result.exit_code == 2
    assert result.output.startswith(message) and len(result.output.strip().splitlines()) == 1, result.output


def test_evaluate_a_missing_source(tmp_path):
    result = invoke("evaluate", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist; pass a run directory or an exported generator" in result.output


def test_inception_offline_says_what_to_do(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(inception_module, "load_state_dict_from_url", offline)
    images = Data(torch.zeros(8, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(UsageError, match=r"could not get the Inception weights .*offline\? Download https://github"
                                         r".*or use --extractor classifier"):
        Evaluator(images, ["fid"])


def test_image_metrics_with_raw_features_skip_class_metrics_they_cannot_give(tmp_path):
    result = invoke("train", "--arch", "mlp", "--arch-opt", "hidden=16", "--dataset", "digits", "--steps", 2,
                    "--batch-size", 16, "--out-dir", tmp_path, "--name", "d", "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tmp_path / "d", "--extractor", "raw", "--samples", 300, "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "d.json").read_text())["metrics"]) == {
        "fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}


# ---------------------------------------------------------------- the MNIST classifier

@pytest.fixture(scope="module")
def mnist_classifier(tmp_path_factory):
    data = mnist(SHARED_DATA, image_size=28, download=False, split="test")
    cache = tmp_path_factory.mktemp("cache")
    return data, classifier(data, "cpu", cache_dir=str(cache)), cache


def test_the_cached_classifier_is_accurate_on_held_out_mnist(mnist_classifier):
    data, extractor, cache = mnist_classifier
    state = checkpoint.load(next(cache.glob("classifier-*.safetensors")))
    assert state["held_out"] == 1000 and state["trained_on"] == 9000
    assert state["accuracy"] >= 0.97
    assert "97." in extractor.description or "98." in extractor.description or "99." in extractor.description


def test_the_classifier_is_trained_once_then_loaded_from_the_cache(mnist_classifier, monkeypatch):
    data, extractor, cache = mnist_classifier
    import ganforge.builtin.extractors as extractors

    monkeypatch.setattr(extractors, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    again = classifier(data, "cpu", cache_dir=str(cache))
    x = data.batch(torch.arange(64))[0]
    assert torch.equal(again(x)[0], extractor(x)[0])


def test_classifier_metrics_on_real_mnist(mnist_classifier):
    data, extractor, cache = mnist_classifier
    with plugin_registered(ExtractorPlugin()) as registry:
        registry_extractor = Evaluator(data, None, "classifier", 4000, registry=registry,
                                       extractor_options={"cache_dir": str(cache)})
    half = data.batch(torch.arange(5000, 9000))[0]
    chunks = iter(half.split(500))
    real = registry_extractor(lambda z, labels: next(chunks), 2)
    assert real["inception_score"] > 9.0 and real["class_kl"] < 0.01
    ones = data.x[data.labels == 1][:1].repeat(4000, 1, 1, 1)
    one_digit = registry_extractor(lambda z, labels: Data(ones[:len(z)]).batch(torch.arange(len(z)))[0], 2)
    assert one_digit["class_kl"] == pytest.approx(np.log(10), abs=0.01)   # every sample one class
    assert one_digit["inception_score"] < 1.1 and one_digit["fid"] > 10 * real["fid"]
    assert one_digit["recall"] < 0.05 and one_digit["coverage"] < 0.05


def test_a_second_classifier_of_another_net_and_seed_is_cached_apart(tmp_path):
    """Two independently trained extractors (FID in two feature spaces): ``net=strided`` and a seed."""
    from ganforge.builtin.datasets import digits

    data = digits(image_size=16)
    first = classifier(data, "cpu", cache_dir=str(tmp_path), epochs=1)
    second = classifier(data, "cpu", cache_dir=str(tmp_path), epochs=1, net="strided", seed=1)
    assert len(list(tmp_path.glob("classifier-*.safetensors"))) == 2
    assert first.description.startswith("classifier: small CNN trained on 1618 images")
    assert second.description.startswith("classifier: strided CNN (seed 1) trained on 1618 images")
    x = data.batch(torch.arange(32))[0]
    assert second(x)[0].shape == first(x)[0].shape == (32, 128) and second(x)[1].shape == (32, 10)
    again = classifier(data, "cpu", cache_dir=str(tmp_path), epochs=1, net="strided", seed=1)
    assert torch.equal(again(x)[0], second(x)[0]) and len(list(tmp_path.glob("classifier-*"))) == 2
    with pytest.raises(UsageError, match="classifier option net must be 'cnn' or 'strided', got 'vit'"):
        classifier(data, "cpu", cache_dir=str(tmp_path), net="vit")


def test_stacked_mnist_is_scored_by_classifying_each_channel(mnist_classifier):
    data, extractor, cache = mnist_classifier  # the stacks' channels are these digits: the same cached classifier
    stacked = stacked_mnist(SHARED_DATA, image_size=28, download=False, split="test")
    with pytest.MonkeyPatch.context() as patch:
        import ganforge.builtin.extractors as extractors

        patch.setattr(extractors, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
        evaluator = Evaluator(stacked, ["modes"], extractor_options={"cache_dir": str(cache)})
    assert evaluator.samples == 26_000 and evaluator.extractor.data_classes == 1000
    x = stacked.batch(torch.arange(200))[0]
    features, logits = evaluator.extractor(x)
    digit_features, digit_logits = extractor(x.reshape(600, 1, 28, 28))
    assert torch.equal(features, digit_features.reshape(200, 3 * 128))
    per_channel = digit_logits.argmax(1).view(200, 3)
    assert torch.equal(logits.argmax(1), per_channel[:, 0] * 100 + per_channel[:, 1] * 10 + per_channel[:, 2])
    assert (logits.argmax(1) == stacked.labels[:200]).float().mean() > 0.9  # three digits right at ~98% each

    other = stacked_mnist(SHARED_DATA, image_size=28, download=False, split="test", n=26_000, seed=1)
    chunks = iter(other.batch(torch.arange(26_000))[0].split(500))
    real = evaluator(lambda z, labels: next(chunks), 2)
    assert real["modes"] == 1000 and real["reverse_kl"] < 0.05  # the finite-sample floor, about 0.025
    first = stacked.batch(torch.zeros(500, dtype=torch.long))[0]
    collapsed = Evaluator(stacked, ["modes"], samples=500, extractor_options={"cache_dir": str(cache)})(
        lambda z, labels: first[:len(z)], 2)
    assert collapsed == {"modes": 1, "reverse_kl": pytest.approx(np.log(1000))}


def test_stacked_data_defaults_to_modes_and_fid_with_the_classifier(monkeypatch):
    made = []

    class Fake(FeatureExtractor):
        data_classes = 1000

        def __call__(self, x):
            return x.flatten(1)[:, :4], torch.zeros(len(x), 1000)

    stacked = Data(torch.zeros(50, 3, 16, 16, dtype=torch.uint8), torch.arange(50), 1000,
                   stacked_from=Data(torch.zeros(50, 1, 16, 16, dtype=torch.uint8), torch.arange(50) % 10))
    registry = get_registry()
    monkeypatch.setattr(registry, "create", lambda kind, name, *a, **k: made.append(name) or Fake())
    evaluator = Evaluator(stacked, registry=registry)
    assert made == ["classifier"] and evaluator.groups == ["modes", "fid"] and evaluator.samples == 26_000
    assert Evaluator(stacked, samples=100, registry=registry).samples == 100


# ---------------------------------------------------------------- --eval-every and --keep-best

def scripted(values, key):
    """An Evaluator.__call__ replacement returning the given values in turn."""
    it = iter(values)
    return lambda self, generate, latent_dim, num_classes=None: {key: next(it)}


@pytest.mark.parametrize("key, values, best_step", [("high_quality", [0.5, 0.9, 0.7], 20), ("fid", [3.0, 1.0, 2.0], 20),
                                                    ("fid", [1.0, 2.0, 3.0], 10)])
def test_keep_best_keeps_the_better_checkpoint(tmp_path, monkeypatch, key, values, best_step):
    monkeypatch.setattr(Evaluator, "__call__", scripted(values, key))
    run = tiny_run(tmp_path, steps=30, eval_every=10, checkpoint_every=10, keep_checkpoints=5, keep_best=key,
                   eval_metrics="toy" if key == "high_quality" else "fid")
    best = checkpoint.load(run / "checkpoints" / "best.safetensors")
    assert best["step"] == best_step and best["best"] == {"metric": key, "value": values[best_step // 10 - 1],
                                                          "step": best_step}
    same_step = checkpoint.load(run / "checkpoints" / f"step-{best_step}.safetensors")
    assert all(torch.equal(best["G"][k], same_step["G"][k]) for k in same_step["G"])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r[key] for r in logged if key in r] == values
    assert (run / "eval.png").is_file()


def test_a_resumed_run_remembers_its_best(tmp_path, monkeypatch):
    monkeypatch.setattr(Evaluator, "__call__", scripted([0.5, 0.9, 0.7, 0.8], "high_quality"))
    run = tiny_run(tmp_path, steps=20, eval_every=10, keep_best="high_quality")
    cfg = resolve(TrainConfig().to_dict(), TINY, {"out_dir": str(tmp_path), "name": "run", "steps": 40,
                                                 "eval_every": 10, "keep_best": "high_quality"})
    train(cfg, run, resume=True, progress=False)
    assert checkpoint.load(run / "checkpoints" / "best.safetensors")["best"]["step"] == 20


def test_keep_best_with_real_metrics_matches_the_log(tmp_path):
    run = tiny_run(tmp_path, steps=40, eval_every=10, keep_best="high_quality", eval_samples=500)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "high_quality" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    best = checkpoint.load(run / "checkpoints" / "best.safetensors")["best"]
    first_best = max(evals, key=lambda r: (r["high_quality"], -r["step"]))
    assert best == {"metric": "high_quality", "value": first_best["high_quality"], "step": first_best["step"]}
    result = invoke("export", run, "--checkpoint", "best", "-f", "onnx", "-o", tmp_path / "best.onnx")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("settings, message", [
    ({"keep_best": "fid"}, "--keep-best fid needs --eval-every N"),
    ({"keep_best": "fid", "eval_every": 5}, "--keep-best fid is not among the metrics evaluated (toy)"),
    ({"pack": 3}, "batch size 32 is not a multiple of --pack 3; use a batch size such as 30"),
])
def test_evaluation_and_pack_settings_are_checked_before_anything_is_written(tmp_path, settings, message):
    with pytest.raises(UsageError, match=message.replace("(", "\\(").replace(")", "\\)")):
        tiny_run(tmp_path, steps=2, **settings)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- PacGAN packing and toy defaults

def test_a_packed_discriminator_sees_consecutive_samples_side_by_side():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, labels=None):
            seen.append(x)
            return x.sum(1)

    x = torch.arange(12.0).view(6, 2)
    out = Packed(Spy(), 3)(x)
    assert seen[0].tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]] and out.shape == (2,)
    images = torch.randn(4, 1, 8, 8)
    Packed(Spy(), 2)(images)
    assert seen[1].shape == (2, 2, 8, 8) and torch.equal(seen[1][1, 0], images[2, 0])


def test_the_gradient_penalty_takes_one_norm_per_pack():
    w = torch.tensor([3.0, 4.0, 0.0, 0.0])  # D(pack) = w . pack: the gradient of a pack is w, norm 5

    class Linear(torch.nn.Module):
        def forward(self, x, labels=None):
            return x @ w

    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    assert gradient_penalty(Packed(Linear(), 2), real, fake).item() == pytest.approx((5 - 1) ** 2)


def test_toy_datasets_recommend_their_settings_and_losses_and_flags_win(tmp_path):
    ring_defaults = recommended_settings("bce", "ring")
    assert ring_defaults["arch"] == "mlp" and ring_defaults["pack"] == 2 and ring_defaults["standardize"] is True
    assert ring_defaults["arch_options"] == {"hidden": 128, "layers": 3}
    assert recommended_settings("wgan", "gaussian1d")["lr_d"] == 5e-5   # the loss's recommendation wins
    assert recommended_settings("wgan-gp", "ring")["lr_d"] == 1e-3   # ... and the dataset's for that loss over it
    assert "arch_options" not in recommended_settings("bce", "ring", arch="sngan")  # options of mlp only
    assert recommended_settings("bce", "digits")["arch_options"] == {"d_norm": "none"}  # the image recipe's dcgan
    assert "arch_options" not in recommended_settings("bce", "digits", arch="mlp")
    result = invoke("train", "--dataset", "ring", "--data-opt", "n=512", "--steps", 2, "--out-dir", tmp_path,
                    "--name", "r", "--batch-size", 64, "--arch-opt", "hidden=8", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = (tmp_path / "r" / "config.toml").read_text()
    assert 'arch = "mlp"\n' in recorded and "pack = 2\n" in recorded and "latent_dim = 2\n" in recorded
    assert "batch_size = 64\n" in recorded   # the flag over the dataset's 256
    assert 'arch_options = {"hidden" = 8, "layers" = 3}\n' in recorded  # option tables merge key by key


def test_standardized_models_work_in_unit_scale_and_export_in_data_units(tmp_path):
    run = tiny_run(tmp_path, steps=5, standardize=True, dataset="grid", pack=2)
    state = checkpoint.load(run / "checkpoints" / "step-5.safetensors")
    data = grid(n=512).x
    assert torch.allclose(state["G"]["mean"], data.mean(0)) and torch.allclose(state["G"]["std"], data.std(0))
    assert torch.equal(state["D"]["std"], state["G"]["std"]) and state["G"]["std"].min() > 2  # grid: about 2.83
    from ganforge.models import load_generator

    G, _ = load_generator(run)
    z = torch.randn(16, 2)
    assert torch.allclose(G(z), G.mean + G.std * G.net(z))
    result = invoke("export", run, "-f", "onnx", "-o", tmp_path / "g.onnx")
    assert result.exit_code == 0, result.output
    from ganforge.inference import Sampler

    assert np.allclose(Sampler(tmp_path / "g.onnx").generate(z.numpy()), G(z).detach().numpy(), atol=1e-5)
    with pytest.raises(UsageError, match="--standardize is for vector data"):
        train(TrainConfig(arch="mlp", dataset="digits", standardize=True, steps=1, out_dir=str(tmp_path)),
              progress=False)


# ---------------------------------------------------------------- intra-class FID and the autoencoder

class Identity(FeatureExtractor):
    description = "the samples themselves"

    def __call__(self, x):
        return x.flatten(1).float(), None


class IdentityPlugin:
    @hookimpl
    def register_feature_extractors(self, register):
        register("identity", lambda reference, device: Identity())


def labelled_blobs(n=2000, classes=4):
    """Class c: 2-D points around (c, 0), labels in order."""
    labels = torch.arange(n) % classes
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(5)) * 0.3 + torch.stack(
        [labels.float(), torch.zeros(n)], 1)
    return Data(x, labels, classes)


def test_intra_fid_scores_each_class_of_a_conditional_generator_and_is_in_the_defaults():
    data = labelled_blobs()
    with plugin_registered(IdentityPlugin()) as registry:
        evaluator = Evaluator(data, None, "identity", registry=registry)
        assert evaluator.groups == ["fid", "kid", "precision-recall", "density-coverage", "intra-fid"]

        def good(z, labels):  # each class where it belongs
            return z * 0.3 + torch.stack([labels.float(), torch.zeros(len(z))], 1)

        right = evaluator(good, 2, 4)
        per_class = evaluator.details["intra_fid"]
        swapped = evaluator(lambda z, labels: good(z, (labels + 1) % 4), 2, 4)  # every class drawn as the next
        assert len(per_class) == 4 and right["intra_fid"] == pytest.approx(np.mean(per_class))
        assert right["intra_fid"] < 0.05 and swapped["intra_fid"] > 0.9  # |(c+1) - c|^2 = 1 at least
        assert swapped["fid"] < 0.3 < swapped["intra_fid"]  # the classes' mixture: FID hardly sees the swap

        unconditional = evaluator(lambda z, labels: good(z, torch.randint(4, (len(z),))), 2)
        assert "intra_fid" not in unconditional and evaluator.details == {}  # defaults: skipped
        few = Evaluator(data, None, "identity", samples=399, registry=registry)  # under 100 a class
        assert "intra-fid" not in few.groups
        explicit = Evaluator(data, ["intra-fid"], "identity", registry=registry)
        with pytest.raises(UsageError, match="metric 'intra-fid' compares each class's samples: it needs a "
                                             "class-conditional generator"):
            explicit(lambda z, labels: z, 2)
        with pytest.raises(UsageError, match="metric 'intra-fid': the generator draws 3 classes, the dataset has 4"):
            explicit(good, 2, 3)
        with pytest.raises(UsageError, match="metric 'intra-fid' compares each class's samples: it needs a "
                                             "labelled dataset"):
            Evaluator(Data(data.x), ["intra-fid"], "identity", registry=registry)


def test_intra_fid_per_class_in_evaluate_output_and_json(tmp_path):
    result = invoke("train", "--arch", "mlp", "--arch-opt", "hidden=16", "--dataset", "digits", "--steps", 2,
                    "--batch-size", 16, "--out-dir", tmp_path, "--name", "d", "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tmp_path / "d", "--extractor", "raw", "--samples", 300, "--metrics", "fid,intra-fid",
                    "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "d.json").read_text())
    assert set(saved["metrics"]) == {"fid", "intra_fid"} and len(saved["per_class"]["intra_fid"]) == 10
    assert saved["metrics"]["intra_fid"] == pytest.approx(np.mean(saved["per_class"]["intra_fid"]))
    assert "       per class  0: " in result.output
    result = invoke("train", "--arch", "mlp", "--dataset", "digits", "--unconditional", "--steps", 2,
                    "--eval-every", 1, "--eval-metrics", "intra-fid", "--eval-extractor", "raw", "--out-dir", tmp_path,
                    "--name", "u")
    assert result.exit_code == 2 and not (tmp_path / "u").exists()
    assert "--eval-metrics intra-fid compares each class's samples: it needs a class-conditional run" in result.output


def test_the_autoencoder_is_deterministic_cached_and_leaves_the_random_stream_alone(tmp_path, monkeypatch):
    """Trained without labels on the digits (28x28: sides padded up to multiples of 8), once per cache; the
    same data and settings give the same weights in another cache; the caller's random draws are untouched."""
    import ganforge.builtin.extractors as extractors
    from ganforge.builtin.datasets import digits
    from ganforge.builtin.extractors import autoencoder

    data = digits(image_size=28)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = autoencoder(data, "cpu", cache_dir=str(tmp_path / "a"), epochs=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = autoencoder(data, "cpu", cache_dir=str(tmp_path / "b"), epochs=2)
    x = data.batch(torch.arange(64))[0]
    features, logits = first(x)
    assert features.shape == (64, 64) and logits is None
    assert torch.equal(features, second(x)[0])
    assert first.description.startswith("autoencoder: 64-d code of a convolutional autoencoder trained without "
                                        "labels on 1618 images, 2 epochs, reconstruction MSE ")
    assert "held-out image's nearest training code has its label" in first.description
    monkeypatch.setattr(extractors, "train_autoencoder", lambda *a, **k: pytest.fail("trained again"))
    assert torch.equal(autoencoder(data, "cpu", cache_dir=str(tmp_path / "a"), epochs=2)(x)[0], features)
    assert len(list((tmp_path / "a").glob("autoencoder-*.safetensors"))) == 1
    with pytest.raises(pytest.fail.Exception, match="trained again"):  # another seed is another network
        autoencoder(data, "cpu", cache_dir=str(tmp_path / "a"), epochs=2, seed=1)
    with pytest.raises(UsageError, match="the autoencoder extractor needs an image dataset held in memory"):
        autoencoder(ring(n=100), "cpu", cache_dir=str(tmp_path))
    with pytest.raises(UsageError, match="autoencoder options code and epochs must be positive, got code=0"):
        autoencoder(data, "cpu", code=0)


def test_the_autoencoder_judges_digits_without_labels(tmp_path):
    """On unlabelled stacks as on digits: real digits score near their floor, a blur of them far from it."""
    from ganforge.builtin.datasets import digits

    data = digits()
    evaluator = Evaluator(Data(data.x), ["fid", "precision-recall"], "autoencoder", samples=800,
                          extractor_options={"cache_dir": str(tmp_path), "epochs": 3})
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    others = data.batch(order[800:1600])[0]
    real = evaluator.score(others)
    blurred = evaluator.score(torch.nn.functional.avg_pool2d(others, 5, 1, 2))
    assert blurred["fid"] > 3 * real["fid"] and blurred["precision"] < real["precision"]


def test_evaluating_during_training_leaves_the_runs_random_draws_alone(tmp_path, monkeypatch):
    """Building the extractor (a classifier's weights drawn and trained) happens in a random stream of its own:
    a run with --eval-every ends with the weights of the same run without it."""
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    settings = {"dataset": "digits", "latent_dim": 16, "image_size": 16, "arch_options": {"width": 8},
                "batch_size": 16, "steps": 4, "sample_every": 100, "out_dir": str(tmp_path)}
    plain = ganforge.train(**settings, name="p")
    evaluated = ganforge.train(**settings, name="e", eval_every=2, eval_extractor="classifier", eval_metrics="fid",
                               eval_samples=200)
    a, b = (checkpoint.load(rundir.checkpoints(run)[-1]) for run in (plain, evaluated))
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    assert (evaluated / "metrics.jsonl").read_text().count('"fid"') == 2


def test_keep_best_cannot_name_intra_fid_in_an_unconditional_run(tmp_path):
    result = invoke("train", "--arch", "mlp", "--dataset", "digits", "--unconditional", "--steps", 2,
                    "--eval-every", 1, "--eval-extractor", "raw", "--eval-samples", 1000, "--keep-best", "intra_fid",
                    "--out-dir", tmp_path, "--name", "u")
    assert result.exit_code == 2 and not (tmp_path / "u").exists()
    assert "--keep-best intra_fid is not among the metrics evaluated (fid, kid, precision-recall, density-coverage)" \
        in result.output
