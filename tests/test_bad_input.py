"""Every user-facing mistake: one line naming the problem and the fix, exit code 2, no traceback,
nothing in an existing run damaged, nothing new written."""
import shutil

import pytest
import torch
from typer.testing import CliRunner

from ganforge.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A finished run whose files must survive every bad command untouched."""
    root = tmp_path_factory.mktemp("existing")
    result = runner.invoke(app, ["train", "--arch", "mlp", "--dataset", "ring", "--data-opt", "n=256",
                                 "--arch-opt", "hidden=16", "--batch-size", "32", "--steps", "2", "--no-progress",
                                 "--out-dir", str(root), "--name", "run"])
    assert result.exit_code == 0, result.output
    return root / "run"


def incompatible(tmp, run):
    """A copy of the run whose config asks for a wider model than its checkpoint holds."""
    copy = tmp / "wider"
    shutil.copytree(run, copy)
    config = copy / "config.toml"
    config.write_text(config.read_text().replace('"hidden" = 16', '"hidden" = 32'))
    return copy


def all_corrupt(tmp, run):
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "a.png").write_bytes(b"not a png")
    return tmp / "imgs"


def empty_dir(tmp, run):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def config_file(text):
    def make(tmp, run):
        (tmp / "c.toml").write_text(text)
        return tmp / "c.toml"
    return make


CASES = {  # id: (arguments, message); "RUN" is the existing run, callables(tmp, run) make a path
    "unknown arch": (["train", "--arch", "dcgam"], "unknown architecture 'dcgam'; did you mean 'dcgan'? "
                                                   "Available: dcgan, mlp, resnet."),
    "unknown loss": (["train", "--loss", "nope"], "unknown loss 'nope'. Available: bce, hinge, lsgan, minimax, "
                                                  "rpgan, wgan, wgan-gp."),
    "unknown dataset": (["train", "--dataset", "cifar"], "unknown dataset 'cifar'; did you mean 'cifar10'?"),
    "unknown arch option": (["train", "--arch-opt", "depth=3"],
                            "architecture 'dcgan' has no option 'depth'; its options: width, upsample, d_norm"),
    "unknown loss option": (["train", "--loss-opt", "gp=1"], "loss 'bce' has no option 'gp'; its options: none"),
    "image size": (["train", "--image-size", "24"], "dcgan needs square power-of-two images of at least 16x16, "
                                                    "got 24x24; set --image-size to 16, 32, 64, ..."),
    "batch size": (["train", "--batch-size", "0"], "--batch-size must be positive, got 0"),
    "batch size over data": (["train", "--batch-size", "5000"],
                             "batch size 5000 is larger than the dataset (1797 samples); lower --batch-size"),
    "steps": (["train", "--steps", "-5"], "--steps must be positive, got -5"),
    "learning rate": (["train", "--lr-d", "0"], "--lr-d must be positive, got 0.0"),
    "both learning rates": (["train", "--lr", "-1"], "--lr must be positive, got -1.0"),
    "ema decay": (["train", "--ema-decay", "1"], "--ema-decay must be between 0 and 1, got 1.0"),
    "ema ramp-up": (["train", "--ema-rampup", "0"], "--ema-rampup must be in (0, 1], got 0.0"),
    "betas": (["train", "--betas", "0.5"], "--betas takes two numbers as 'beta1,beta2' (e.g. 0.5,0.999)"),
    "option syntax": (["train", "--arch-opt", "width"], "--arch-opt takes key=value (e.g. --arch-opt width=32)"),
    "data root missing": (["train", "--dataset", "folder", "--data-root", "nowhere"],
                          "data root nowhere is not a directory; pass --data-root DIR"),
    "data root empty": (["train", "--dataset", "folder", "--data-root", empty_dir], "no images (.bmp, .gif, "
                        ".jpeg, .jpg, .png, .tif, .tiff, .webp) found under {tmp}/empty"),
    "corrupt images": (["train", "--dataset", "folder", "--data-root", all_corrupt],
                       "none of the 1 image files under {tmp}/imgs could be read"),
    "mnist absent": (["train", "--dataset", "mnist", "--data-root", "nowhere", "--no-download"],
                     "MNIST (train) not found under nowhere; put the files there or allow downloading"),
    "config unknown key": (["train", "--config", config_file("lr = 0.1\n")],
                           "unknown config key 'lr' in {tmp}/c.toml; did you mean 'lr_g'?"),
    "config wrong type": (["train", "--config", config_file("steps = 'many'\n")],
                          "config key 'steps' in {tmp}/c.toml must be an integer, got 'many'"),
    "config not toml": (["train", "--config", config_file("steps = \n")],
                        "config file {tmp}/c.toml is not valid TOML: "),
    "config missing": (["train", "--config", "missing.toml"], "config file missing.toml does not exist"),
    "resume not a run": (["train", "--resume", "."], ". is not a ganforge run (no config.toml); "
                                                     "pass a directory made by ganforge train"),
    "incompatible checkpoint": (["train", "--resume", incompatible], "checkpoint {tmp}/wider/checkpoints/"
                                "step-2.safetensors does not fit the run's models: Error(s) in loading"),
    "fp16 on cpu": (["train", "--precision", "fp16", "--device", "cpu"],
                    "--precision fp16 needs a CUDA GPU (device is cpu); use --precision bf16"),
    "cuda without gpu": (["train", "--device", "cuda"], "--device cuda but no CUDA GPU is available; "
                                                        "use --device cpu (or auto)"),
    "bad precision": (["train", "--precision", "fp8"], "--precision must be fp32, bf16 or fp16, got 'fp8'"),
    "resume with config": (["train", "--resume", "RUN", "--config", "x.toml"],
                           "--resume continues a run with its own config; drop --config"),
    "resume changes arch": (["train", "--resume", "RUN", "--arch", "dcgan"],
                            "--arch cannot change when resuming (the run has 'mlp'); start a new run instead"),
    "resume with overwrite": (["train", "--resume", "RUN", "--overwrite"],
                              "--overwrite starts a new run; it cannot go with --resume"),
    "steps and epochs": (["train", "--steps", "5", "--epochs", "2"],
                         "--steps and --epochs both set the length of training; give one"),
    "bad run name": (["train", "--name", "../escape"], "--name must be a plain directory name"),
    "on-nonfinite": (["train", "--on-nonfinite", "ignore"], "--on-nonfinite must be stop or skip, got 'ignore'"),
    "devices": (["train", "--devices", "0"], "--devices must be at least 1, got 0"),
    "export format": (["export", "RUN", "--format", "tflite"],
                      "unknown format 'tflite'; use one of: onnx, torchscript, all"),
    "export checkpoint": (["export", "RUN", "--checkpoint", "step-9"],
                          "no checkpoint 'step-9' in {run}; available: step-2"),
    "export not a run": (["export", "nowhere"], "run directory nowhere does not exist"),
    "sample missing model": (["sample", "missing.onnx"], "model file missing.onnx does not exist"),
    "sample format": (["sample", "x.onnx", "--format", "bmp"], "unknown format 'bmp'; use png, jpg, npy or gif"),
    "sample count": (["sample", "x.onnx", "-n", "0"], "-n must be positive, got 0"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_harmless(case, existing, tmp_path, monkeypatch, builtins_only):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args, message = CASES[case]
    args = [str(existing) if a == "RUN" else str(a(tmp_path, existing)) if callable(a) else a for a in args]
    if args[0] == "train":
        args.append("--no-progress")
    before = {p: p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    present = set(tmp_path.rglob("*"))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: " + message.format(tmp=tmp_path, run=existing)), result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert before == {p: p.read_bytes() for p in existing.rglob("*") if p.is_file()}
    assert set(tmp_path.rglob("*")) == present  # nothing new written
