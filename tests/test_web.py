"""``ganforge export --format web``: the portable latents, the runtime files, bad input, and the page
itself in headless Chromium, whose outputs must equal the Python sampler's."""
import base64
import functools
import hashlib
import http.server
import io
import math
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ganforge import web
from ganforge.cli import app
from ganforge.inference import Sampler, latents

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def mulberry32_normals(seed: int, count: int) -> list:
    """The latents' definition written out step by step, as JavaScript runs it."""
    a, u = seed, []
    for _ in range(2 * count):
        a = (a + 0x6D2B79F5) & 0xFFFFFFFF
        t = ((a ^ (a >> 15)) * (a | 1)) & 0xFFFFFFFF
        t = (t ^ (t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF))) & 0xFFFFFFFF
        u.append(((t ^ (t >> 14)) & 0xFFFFFFFF) / 2**32)
    return [math.sqrt(-2 * math.log(1 - u[2 * i])) * math.cos(2 * math.pi * u[2 * i + 1]) for i in range(count)]


@pytest.mark.parametrize("seed", [0, 1, 123456789, 2**32 - 1])
def test_latents_follow_their_definition(seed):
    z = latents(3, 5, seed)
    assert z.dtype == np.float32 and z.shape == (3, 5)
    np.testing.assert_array_equal(z.ravel(), np.float32(mulberry32_normals(seed, 15)))


def test_latents_are_standard_normal_and_seeds_differ():
    z = latents(4000, 50, 7)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.05
    assert not np.array_equal(latents(2, 4, 7), latents(2, 4, 8))
    with pytest.raises(Exception, match=r"a seed must be in 0\.\.4294967295, got -1"):
        latents(1, 2, -1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: images, class-conditional images, 2-D points, and images from resnet."""
    root = tmp_path_factory.mktemp("web-runs")
    image = ["--arch", "dcgan", "--dataset", "digits", "--image-size", "16", "--arch-opt", "width=8",
             "--latent-dim", "16", "--batch-size", "16"]
    cases = {"image": image, "conditional": [*image, "--conditional"],
             "points": ["--dataset", "ring", "--batch-size", "64", "--data-opt", "n=512"],
             "resnet": ["--arch", "resnet", *image[2:]]}  # bilinear resizing and grouped convolutions
    for name, args in cases.items():
        result = invoke("train", *args, "--steps", "3", "--no-progress", "--out-dir", root, "--name", name)
        assert result.exit_code == 0, result.output
    return root


def fake_runtime(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in web.RUNTIME_FILES:
        (folder / name).write_text(f"// {name}\n")
    return folder


def test_export_writes_the_page_the_verified_model_and_the_runtime(runs, tmp_path):
    runtime = fake_runtime(tmp_path / "node_modules" / "onnxruntime-web" / "dist")
    result = invoke("export", runs / "image", "--format", "web", "--out", tmp_path / "site", "--runtime",
                    tmp_path)  # the folder npm install ran in: node_modules/onnxruntime-web/dist is found
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'site'} (verified against PyTorch: max abs difference ")
    assert result.output.endswith(f"serve it, e.g.: python -m http.server -d {tmp_path / 'site'}\n")
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(
        ["index.html", "generator.onnx", *web.RUNTIME_FILES])
    assert (tmp_path / "site" / web.RUNTIME_FILES[0]).read_text() == (runtime / web.RUNTIME_FILES[0]).read_text()
    assert Sampler(tmp_path / "site" / "generator.onnx").metadata["arch"] == "dcgan"
    assert (tmp_path / "site" / "index.html").stat().st_size <= 30_000  # the page without the runtime
    # an exported generator.onnx becomes a page too
    result = invoke("export", tmp_path / "site" / "generator.onnx", "--format", "web", "--out", tmp_path / "again",
                    "--runtime", runtime)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'again'} (from {tmp_path / 'site' / 'generator.onnx'})\n")
    assert (tmp_path / "again" / "generator.onnx").read_bytes() == (tmp_path / "site" / "generator.onnx").read_bytes()


def test_bad_input_is_one_line_and_nothing_half_written(runs, tmp_path):
    runtime = fake_runtime(tmp_path / "rt")
    other_version = tmp_path / "old-npm" / "node_modules" / "onnxruntime-web"
    fake_runtime(other_version / "dist")
    (other_version / "package.json").write_text('{"name": "onnxruntime-web", "version": "1.29.0"}')
    site = tmp_path / "site"
    site.mkdir()
    (site / "mine.txt").write_text("keep me")
    cases = [
        (["export", runs / "image", "-f", "web", "-o", site, "--runtime", runtime],
         f"--out {site} exists and is not empty; pick another folder or pass --overwrite"),
        (["export", runs / "image", "-f", "web", "-o", tmp_path / "new", "--runtime", tmp_path / "nothing"],
         f"--runtime {tmp_path / 'nothing'} has no onnxruntime-web runtime files (ort.webgpu.min.js ...); "
         "npm install onnxruntime-web@1.30.0 and pass --runtime node_modules/onnxruntime-web"),
        (["export", tmp_path / "missing", "-f", "web", "-o", tmp_path / "new", "--runtime", runtime],
         f"run directory {tmp_path / 'missing'} does not exist"),
        (["export", site / "mine.txt", "-f", "web", "-o", tmp_path / "new", "--runtime", runtime],
         f"{site / 'mine.txt'} is not an ONNX file; the web page runs generator.onnx (export a run, or pass its .onnx)"),
        (["export", runs / "image", "-f", "onnx", "--runtime", runtime],
         "--runtime and --overwrite are for --format web; drop them or add --format web"),
        (["export", runs / "image", "-f", "web", "-o", tmp_path / "new", "--runtime", other_version],
         f"--runtime {other_version} has onnxruntime-web 1.29.0; the page is built and tested for 1.30.0: "
         "npm install onnxruntime-web@1.30.0"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert (result.exit_code, result.output) == (2, f"Error: {message}\n"), args
    assert [p.name for p in site.iterdir()] == ["mine.txt"] and not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".old"))]
    result = invoke("export", runs / "image", "-f", "web", "-o", site, "--runtime", runtime, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (site / "mine.txt").exists() and (site / "index.html").is_file()


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request."""

    def log_message(self, *args):
        pass


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local npm registry on 127.0.0.1 serving ``tarball`` bytes at the pinned version's path."""
    root = tmp_path / "registry"
    (root / "onnxruntime-web" / "-").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))

    def serve(data: bytes):
        (root / web.ORT_WEB_TARBALL).write_bytes(data)
    yield serve
    server.shutdown()


def test_the_runtime_is_fetched_once_and_checked(registry, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in web.RUNTIME_FILES:
            data = f"// {name}".encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    registry(buffer.getvalue())
    with pytest.raises(web.UsageError, match=r"does not have the published checksum of onnxruntime-web 1\.30\.0; "
                                             r"refusing it"):
        web.runtime()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    monkeypatch.setattr(web, "ORT_WEB_INTEGRITY",
                        "sha512-" + base64.b64encode(hashlib.sha512(buffer.getvalue()).digest()).decode())
    folder = web.runtime()
    assert folder == tmp_path / "cache" / "onnxruntime-web-1.30.0"
    assert (folder / web.RUNTIME_FILES[2]).read_text() == f"// {web.RUNTIME_FILES[2]}"
    registry(b"")  # a second export does not ask the registry again
    assert web.runtime() == folder


def test_offline_is_one_line(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens on the discard port
    monkeypatch.setenv("GANFORGE_CACHE", str(tmp_path / "cache"))
    result = invoke("export", runs / "image", "-f", "web", "-o", tmp_path / "site")
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot download onnxruntime-web 1.30.0 from "
                                    "http://127.0.0.1:9/onnxruntime-web/-/onnxruntime-web-1.30.0.tgz (")
    assert result.output.endswith("); offline, npm install onnxruntime-web@1.30.0 and pass --runtime "
                                  "node_modules/onnxruntime-web on a machine with network access and copy it here\n")
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "site").exists()


# ---- the page in headless Chromium

@pytest.fixture(scope="module")
def real_runtime():
    """The pinned onnxruntime-web files: ganforge's cache, fetched from the npm registry if need be."""
    try:
        return web.runtime()
    except web.UsageError as exc:
        pytest.skip(f"no onnxruntime-web runtime files: {exc}")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser, site: Path):
    """The exported page served from 127.0.0.1, once its first render is done; and its console messages."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page()
    messages = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    page.goto(f"http://127.0.0.1:{server.server_port}/index.html?seed=5")
    page.wait_for_function("document.body.dataset.ready === '1' || document.body.dataset.error", timeout=60_000)
    return page, messages, server


@pytest.mark.parametrize("case", ["image", "conditional", "points", "resnet"])
def test_the_page_samples_what_python_samples(runs, real_runtime, browser, tmp_path, case):
    site = tmp_path / "site"
    assert invoke("export", runs / case, "-f", "web", "-o", site, "--runtime", real_runtime).exit_code == 0
    sampler = Sampler(site / "generator.onnx")
    page, messages, server = open_page(browser, site)
    try:
        assert page.evaluate("document.body.dataset.error || ''") == ""
        state = page.evaluate("({seed: ganforge.seed, n: ganforge.n, shape: ganforge.shape, backend: ganforge.backend,"
                              " z: Array.from(ganforge.latents), x: Array.from(ganforge.output)})")
        n = 1000 if case == "points" else 64
        assert (state["seed"], state["n"], state["shape"]) == (5, n, [n, *sampler.output_shape])
        assert state["backend"] in ("wasm", "webgpu")
        z = latents(n, sampler.latent_dim, 5)
        np.testing.assert_allclose(np.float32(state["z"]).reshape(z.shape), z, atol=1e-6)
        expected = sampler.sample(n, seed=5)
        assert np.abs(np.float32(state["x"]).reshape(expected.shape) - expected).max() <= 1e-4
        if case == "conditional":  # a chosen class, another seed
            x = page.evaluate("ganforge.render({seed: 77, cls: 3}).then(() => Array.from(ganforge.output))")
            expected = sampler.sample(64, seed=77, cls=3)
            assert np.abs(np.float32(x).reshape(expected.shape) - expected).max() <= 1e-4
        page.screenshot(path=str(tmp_path / f"{case}.png"))
        if os.environ.get("GANFORGE_SCREENSHOTS"):
            shutil.copy(tmp_path / f"{case}.png", Path(os.environ["GANFORGE_SCREENSHOTS"]) / f"web-{case}.png")
        # Chromium's own line when the browser has no GPU for WebGPU (the page then runs on WebAssembly)
        no_gpu = "warning: No available adapters."
        assert [m for m in messages if m.split(":")[0] in ("error", "warning", "pageerror") and m != no_gpu] == []
    finally:
        page.close()
        server.shutdown()
