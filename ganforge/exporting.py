"""Export a run's generator to ONNX and TorchScript, each verified against PyTorch.

The exported file carries everything a sampler needs as metadata (ONNX
``metadata_props``; a ``ganforge.json`` extra file in TorchScript), so nothing
else travels with it. See :mod:`ganforge.inference` for the torch-free sampler.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ganforge import rundir, web
from ganforge.errors import ExportMismatch, UsageError
from ganforge.models import load_generator
from ganforge.rundir import atomic_write

FORMATS = {"onnx": "generator.onnx", "torchscript": "generator.pt", "web": "web"}
VERIFY_BATCHES = (1, 16)
ATOL, RTOL = 1e-4, 1e-4


def example_inputs(meta: dict, batch: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, meta["latent_dim"], generator=g)
    if meta["num_classes"]:
        return z, torch.arange(batch) % meta["num_classes"]
    return (z,)


DIRECTIONS, DIRECTION_SAMPLES = 8, 1024


def principal_directions(G, meta: dict, k: int = DIRECTIONS, n: int = DIRECTION_SAMPLES) -> dict:
    """GANSpace (Härkönen et al. 2020, their recipe for generators without a style network): the principal
    components of G's early activations (the output of the first activation function it applies) over
    ``n`` latents (classes cycling, each class's mean removed), mapped back to latent space by linear
    regression of the latents on the components' coordinates. Each vector moves a latent by one
    standard deviation of its component. Returns ``{"layer", "vectors" [k][latent_dim], "explained" [k]
    (fraction of the layer's variance), "samples"}``; deterministic (fixed latents, float64, signs fixed)."""
    import numpy as np

    from ganforge.inference import latents

    layer = early_activation(G, meta)
    z = torch.from_numpy(latents(n, meta["latent_dim"], seed=0))
    inputs = (z, torch.arange(n) % meta["num_classes"]) if meta["num_classes"] else (z,)
    captured = []

    def capture(module, args, out):
        captured.append(out.detach())
        raise _Captured  # the rest of G is not needed

    hook = layer[1].register_forward_hook(capture)
    try:
        with torch.no_grad():
            G(*inputs)
    except _Captured:
        pass
    finally:
        hook.remove()
    y = captured[0].reshape(n, -1).double().numpy()
    groups = inputs[1].numpy() if meta["num_classes"] else np.zeros(n, int)
    for c in np.unique(groups):  # conditional: the variation within each class, which the latent makes
        y[groups == c] -= y[groups == c].mean(axis=0)
    # PCA through the n x n Gram matrix: the coordinates are its eigenvectors times sqrt(eigenvalue)
    eigenvalues, eigenvectors = np.linalg.eigh(y @ y.T)
    top = np.argsort(eigenvalues)[::-1][:min(k, meta["latent_dim"])]
    coords = eigenvectors[:, top] * np.sqrt(np.maximum(eigenvalues[top], 0))
    sigma = coords.std(axis=0, ddof=1)
    per_unit = np.linalg.lstsq(coords, z.double().numpy(), rcond=None)[0]  # [k, latent_dim]
    vectors = per_unit * sigma[:, None]
    vectors *= np.sign(vectors[np.arange(len(top)), np.abs(vectors).argmax(axis=1)])[:, None]
    return {"layer": layer[0], "vectors": vectors.astype(np.float32).tolist(),
            "explained": (eigenvalues[top] / max(float(eigenvalues.clip(min=0).sum()), 1e-30)).round(4).tolist(),
            "samples": n}


class _Captured(Exception):
    """Ends G's forward pass once the early activations are captured."""


def early_activation(G, meta: dict) -> tuple:
    """(name, module) of the first activation function (torch.nn's activations) G calls, else of the
    first module it calls."""
    order = []
    hooks = [m.register_forward_hook(lambda module, args, out, name=name: order.append((name, module)))
             for name, m in G.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            G(*example_inputs(meta, 2))
    finally:
        for hook in hooks:
            hook.remove()
    activations = [(name, m) for name, m in order if type(m).__module__ == "torch.nn.modules.activation"]
    return (activations or order)[0]


def to_onnx(G, meta: dict, path: Path, opset: int | None = None) -> None:
    """Write ``G`` as ONNX with a dynamic batch axis and the metadata in ``metadata_props``."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in meta["inputs"])  # by position: forward's argument names are the plugin's
    args = example_inputs(meta, 4)
    with warnings.catch_warnings():  # z and labels share the batch axis: the exporter remarks on it
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(G, args, dynamo=True, input_names=meta["inputs"], output_names=["x"],
                                    dynamic_shapes=dynamic, opset_version=opset, verbose=False)
    model = program.model_proto
    check_inference_batchnorm(model)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def check_inference_batchnorm(model) -> None:
    """Refuse an ONNX graph with BatchNormalization in training mode (batch statistics at inference)."""
    for node in model.graph.node:
        training = any(a.name == "training_mode" and a.i == 1 for a in node.attribute)
        if node.op_type == "BatchNormalization" and (training or len(node.output) > 1):
            raise ExportMismatch("the ONNX graph has BatchNormalization in training mode; "
                                 "export the generator in eval mode")


def to_torchscript(G, meta: dict, path: Path) -> None:
    """Write ``G`` traced to TorchScript with the metadata as the extra file ``ganforge.json``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what TorchScript users load
        traced = torch.jit.trace(G, example_inputs(meta, 4), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"ganforge.json": json.dumps(meta)})


def verify(G, path: Path, meta: dict) -> float:
    """Run the export and ``G`` on the same fixed latents at two batch sizes; the max abs difference.

    Raises ExportMismatch when they differ beyond the tolerance.
    """
    from ganforge.inference import Sampler

    sampler = Sampler(path)
    worst = 0.0
    for batch in VERIFY_BATCHES:
        inputs = example_inputs(meta, batch, seed=batch)
        with torch.no_grad():
            expected = G(*inputs).float().numpy()
        got = sampler.generate(*(t.numpy() for t in inputs))
        if got.shape != expected.shape:
            raise ExportMismatch(f"{path.name}: output shape {got.shape} at batch {batch}, PyTorch gives "
                                 f"{expected.shape}")
        diff = float(abs(got - expected).max())
        worst = max(worst, diff)
        if diff > ATOL + RTOL * float(abs(expected).max()):
            raise ExportMismatch(f"the {path.suffix[1:]} export does not match PyTorch: max abs difference "
                                 f"{diff:.3g} at batch {batch} (tolerance {ATOL:g} + {RTOL:g} x max |output|)")
    return worst


def export(run_dir, formats=("onnx", "torchscript"), out: Path | None = None,
           checkpoint_name: str | None = None, raw: bool = False, runtime: Path | None = None,
           overwrite: bool = False, backend: str = "both") -> list:
    """Export and verify; returns ``[(path, max_abs_diff), ...]``. ``out`` is a file (one format), a folder
    (``web``) or None (``<run>/export/generator.onnx``, ``generator.pt``, ``web/``). ``runtime``,
    ``overwrite`` and ``backend`` are the web export's (:func:`ganforge.web.export_web`)."""
    if out is not None and len(formats) != 1:
        raise UsageError("--out names one file: pick one --format (onnx or torchscript)")
    if "web" in formats and Path(run_dir).is_file():  # an exported generator.onnx made into a page
        path = Path(out) if out is not None else Path(run_dir).with_name("web")
        return [(path, web.export_web(web.copy_exported(run_dir), path, runtime, overwrite, backend))]
    G, meta = load_generator(run_dir, checkpoint_name, raw)
    if len(meta["output_shape"]) == 3:  # images: the web page's sliders move along them
        meta["directions"] = principal_directions(G, meta)
    results = []
    for fmt in formats:
        path = Path(out) if out is not None else Path(run_dir) / rundir.EXPORT / FORMATS[fmt]
        if fmt == "web":
            def write_onnx(tmp):
                to_onnx(G, meta, tmp)
                return verify(G, tmp, meta)

            results.append((path, web.export_web(write_onnx, path, runtime, overwrite, backend)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp, fmt=fmt):  # verified before it replaces anything
            (to_onnx if fmt == "onnx" else to_torchscript)(G, meta, tmp)
            results.append((path, verify(G, tmp, meta)))

        atomic_write(path, write)
    return results
