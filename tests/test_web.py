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
from ganforge.inference import Sampler, latents, truncate

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
    cases = {"image": [*image, "--unconditional"], "conditional": [*image, "--conditional"],
             "points": ["--dataset", "ring", "--batch-size", "64", "--data-opt", "n=512"],
             "resnet": ["--arch", "resnet", *image[2:], "--unconditional"]}  # bilinear resizing, grouped convolutions
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
    assert result.output.endswith(f"serve it with: ganforge serve {tmp_path / 'site'}\n")
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == sorted(
        ["index.html", "worker.js", "generator.onnx", *web.RUNTIME_FILES])
    assert (tmp_path / "site" / web.RUNTIME_FILES[0]).read_text() == (runtime / web.RUNTIME_FILES[0]).read_text()
    assert Sampler(tmp_path / "site" / "generator.onnx").metadata["arch"] == "dcgan"
    assert (tmp_path / "site" / "index.html").stat().st_size <= 40_000  # the page without the runtime
    assert '<meta name="ganforge-backends" content="webgpu wasm">' in (tmp_path / "site" / "index.html").read_text()
    for backend in ("wasm", "webgpu"):  # one backend's runtime only
        result = invoke("export", runs / "image", "-f", "web", "-o", tmp_path / backend, "--runtime", runtime,
                        "--backend", backend)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (tmp_path / backend).iterdir()) == sorted(
            ["index.html", "worker.js", "generator.onnx", *web.BACKEND_FILES[backend]])
        assert f'<meta name="ganforge-backends" content="{backend}">' in (tmp_path / backend / "index.html").read_text()
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
         "--runtime, --overwrite and --backend are for --format web; drop them or add --format web"),
        (["export", runs / "image", "-f", "onnx", "--backend", "wasm"],
         "--runtime, --overwrite and --backend are for --format web; drop them or add --format web"),
        (["export", runs / "image", "-f", "web", "-o", tmp_path / "new", "--runtime", runtime, "--backend", "webgl"],
         "unknown --backend 'webgl'; use one of: both, wasm, webgpu"),
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


NO_GPU = "warning: No available adapters."  # Chromium's own line when WebGPU finds no GPU (the page runs WebAssembly)


def problems(messages):
    return [m for m in messages if m.split(":")[0] in ("error", "warning", "pageerror") and m != NO_GPU]


def open_page(browser, site: Path, query: str = "seed=5", isolated: bool = True, width: int = 1280):
    """The exported page served from 127.0.0.1 (by ganforge serve's server, cross-origin isolated, or a plain
    one), once its first render is done or it failed; and its console messages."""
    if isolated:
        server = web.server(site, port=0)
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page(viewport={"width": width, "height": 900})
    messages = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    page.goto(f"http://127.0.0.1:{server.server_port}/index.html?{query}")
    page.wait_for_function("document.body.dataset.ready === '1' || document.body.dataset.error", timeout=60_000)
    return page, messages, server


def state(page):
    return page.evaluate("({seed: ganforge.seed, n: ganforge.n, cls: ganforge.cls, psi: ganforge.psi, sel: ganforge.sel,"
                         " values: ganforge.values, shape: ganforge.shape, backend: ganforge.backend,"
                         " threads: ganforge.threads, isolated: ganforge.isolated, z: Array.from(ganforge.latents),"
                         " x: Array.from(ganforge.output), url: location.href})")


def close(page, server):
    page.close()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sites(runs, real_runtime, tmp_path_factory):
    """Each run exported as a page (images WebAssembly-only, as a phone would load it)."""
    root = tmp_path_factory.mktemp("sites")
    for case in ("image", "conditional", "points", "resnet"):
        backend = ["--backend", "wasm"] if case == "image" else []
        result = invoke("export", runs / case, "-f", "web", "-o", root / case, "--runtime", real_runtime, *backend)
        assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("case", ["image", "conditional", "points", "resnet"])
def test_the_worker_samples_what_python_samples(sites, browser, tmp_path, case):
    site = sites / case
    sampler = Sampler(site / "generator.onnx")
    page, messages, server = open_page(browser, site, isolated=case != "resnet")  # resnet: one thread
    try:
        assert page.evaluate("document.body.dataset.error || ''") == ""
        got = state(page)
        n = {"points": 1000, "conditional": 60}.get(case, 64)  # conditional: 6 rows of the 10 classes
        assert (got["seed"], got["n"], got["shape"]) == (5, n, [n, *sampler.output_shape])
        assert got["backend"] == "wasm" and got["isolated"] == (case != "resnet")
        hardware = page.evaluate("navigator.hardwareConcurrency")
        assert got["threads"] == (min(4, hardware) if case != "resnet" else 1)
        z = latents(n, sampler.latent_dim, 5)
        np.testing.assert_allclose(np.float32(got["z"]).reshape(z.shape), z, atol=1e-6)
        expected = sampler.sample(n, seed=5)
        assert np.abs(np.float32(got["x"]).reshape(expected.shape) - expected).max() <= 1e-4
        if case == "conditional":  # a chosen class and truncation, another seed
            x = page.evaluate("ganforge.render({seed: 77, cls: 3, psi: 0.6}).then(() => Array.from(ganforge.output))")
            expected = sampler.sample(60, seed=77, cls=3, truncation=0.6)
            assert np.abs(np.float32(x).reshape(expected.shape) - expected).max() <= 1e-4
        if case == "image":  # WebAssembly only: under 16 MB; the sliders move the sample along the stored directions
            assert sum(f.stat().st_size for f in site.iterdir()) < 16e6
            values = [1.5, -2.0, 0.0, 0.75, 0.0, 0.0, 3.0, -0.25]
            x = page.evaluate(f"ganforge.render({{psi: 0.8}}).then(() => ganforge.select(9))"
                              f".then(() => ganforge.setValues({values})).then(() => Array.from(ganforge.output))")
            edited = sampler.edit(truncate(latents(64, sampler.latent_dim, 5), 0.8)[9:10], values)
            expected = sampler.sample(64, seed=5, truncation=0.8)
            expected[9] = sampler.generate(edited)[0]
            assert np.abs(np.float32(x).reshape(expected.shape) - expected).max() <= 1e-4
            assert np.abs(expected[9] - sampler.sample(64, seed=5, truncation=0.8)[9]).max() > 1e-3  # it moved
        page.screenshot(path=str(tmp_path / f"{case}.png"))
        if os.environ.get("GANFORGE_SCREENSHOTS"):
            shutil.copy(tmp_path / f"{case}.png", Path(os.environ["GANFORGE_SCREENSHOTS"]) / f"web-{case}.png")
        assert problems(messages) == []
    finally:
        close(page, server)


def test_a_permalink_reproduces_the_view(sites, browser):  # grid, class, size, truncation, selection, sliders, A/B
    page, messages, server = open_page(browser, sites / "conditional")
    try:
        page.evaluate("ganforge.render({seed: 9, n: 20, psi: 0.7}).then(() => ganforge.select(3))"
                      ".then(() => ganforge.setValues([1.25, 0, -0.5, 0, 0, 0, 0, 2]))")
        page.fill("#seedB", "31")
        page.dispatch_event("#seedB", "change")
        before = state(page)
        assert "seed=9&n=20&psi=0.7&sel=3&v=1.25%2C0%2C-0.5%2C0%2C0%2C0%2C0%2C2&a=5&b=31" in before["url"]
        again = browser.new_page()
        again.goto(before["url"])
        again.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
        after = state(again)
        for key in ("seed", "n", "cls", "psi", "sel", "values", "z", "url"):
            assert after[key] == before[key], key
        np.testing.assert_allclose(after["x"], before["x"], atol=1e-6)  # the same images (threads may sum apart)
        assert again.input_value("#seedB") == "31" and again.input_value("#psi") == "0.7"
        again.close()
        assert problems(messages) == []
    finally:
        close(page, server)


def test_interpolation_keeps_the_norm_on_a_2d_latent_and_the_strip_shows_a_to_b(sites, browser):
    from ganforge.inference import slerp

    page, messages, server = open_page(browser, sites / "points", "seed=4&psi=0.9")
    try:
        a, b = truncate(latents(1000, 2, 4), 0.9), truncate(latents(1000, 2, 5), 0.9)
        low, high = np.minimum(*(np.linalg.norm(v, axis=1) for v in (a, b))), np.maximum(
            *(np.linalg.norm(v, axis=1) for v in (a, b)))
        for t in np.linspace(0, 1, 11):
            walk = np.float32(page.evaluate(f"Array.from(ganforge.frameLatents({t}))")).reshape(1000, 2)
            np.testing.assert_allclose(walk, slerp(a, b, t), atol=1e-5)
            norms = np.linalg.norm(walk, axis=1)
            assert np.all(norms >= low - 1e-4) and np.all(norms <= high + 1e-4)
        page.click("#play")
        page.wait_for_function("ganforge.fps !== null", timeout=30_000)
        page.click("#play")
        assert page.evaluate("document.body.dataset.error || ''") == "" and problems(messages) == []
    finally:
        close(page, server)
    page, messages, server = open_page(browser, sites / "image")
    try:  # the strip: sample #2 from seed 5 to seed 6 in 8 frames
        strip = np.float32(page.evaluate("ganforge.select(2); ganforge.strip().then(() => "
                                         "Array.from(ganforge.stripLatents))")).reshape(8, -1)
        a, b = latents(3, 16, 5)[2:], latents(3, 16, 6)[2:]
        np.testing.assert_allclose(strip, np.concatenate([slerp(a, b, t) for t in np.linspace(0, 1, 8)]), atol=1e-5)
    finally:
        close(page, server)


def test_a_phone_gets_no_sideways_scroll_and_downloads_are_named_and_clean(sites, browser, tmp_path):
    from PIL import Image

    page, messages, server = open_page(browser, sites / "image", width=390)
    try:
        page.evaluate("ganforge.select(0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "ganforge-seed-5.png"
        download.value.save_as(tmp_path / "grid.png")
        grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(int)
        assert grid.shape[:2] == tuple(page.evaluate("[canvas.height, canvas.width]"))
        assert (grid[..., 0] - grid[..., 1]).max() < 60  # grey digits, no red selection outline
        canvas = np.asarray(Image.open(io.BytesIO(page.locator("#canvas").screenshot())).convert("RGB")).astype(int)
        assert (canvas[..., 0] - canvas[..., 1]).max() > 150  # the page itself shows it
        assert problems(messages) == []
    finally:
        close(page, server)
    page, messages, server = open_page(browser, sites / "conditional", "seed=5&class=3&psi=0.5")
    try:
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "ganforge-seed-5-class-3-psi-0.5.png"
        page.select_option("#cls", "")  # every class: one column per class
        page.wait_for_function("ganforge.labels !== null && ganforge.labels[1] === 1")  # drawn: labels are set last
        assert page.evaluate("[canvas.width, ganforge.n]") == [10 * (16 * 3 + 2) + 2, 60]  # 10 columns of 48 px
    finally:
        close(page, server)


def test_errors_name_the_cause_and_disable_the_controls(sites, browser, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(sites / "image", site)
    page = browser.new_page()  # opened as a file
    try:
        page.goto((site / "index.html").as_uri())
        page.wait_for_function("document.body.dataset.error", timeout=30_000)
        assert page.evaluate("document.body.dataset.error") == (
            "this page must be served over HTTP, not opened as a file (browsers do not let a file load its model and "
            f"worker): run  ganforge serve {site}  and open the address it prints")
        assert page.evaluate("[...document.querySelectorAll('button, input, select')].every((e) => e.disabled)")
    finally:
        page.close()
    (site / "ort-wasm-simd-threaded.wasm").unlink()
    page, messages, server = open_page(browser, site)
    try:
        assert page.evaluate("document.body.dataset.error") == (
            "the runtime file ort-wasm-simd-threaded.wasm is missing from the site (HTTP 404); export the page again "
            "(ganforge export RUN --format web)")
        assert page.evaluate("[...document.querySelectorAll('button, input, select')].every((e) => e.disabled)")
    finally:
        close(page, server)


def test_ganforge_serve_sends_the_isolation_headers(sites, tmp_path):
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "ganforge", "serve", sites / "image", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {sites / 'image'} at http://127.0.0.1:") and line.endswith(
            "/ (cross-origin isolated: WebAssembly runs threaded); Ctrl-C stops\n")
        url = line.split(" at ")[1].split(" ")[0]
        for name, kind in (("index.html", "text/html"), ("worker.js", "text/javascript"),
                           ("ort-wasm-simd-threaded.mjs", "text/javascript"),
                           ("ort-wasm-simd-threaded.wasm", "application/wasm")):
            with urllib.request.urlopen(url + name) as response:
                assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
                assert response.headers["Content-Type"].startswith(kind), name
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    result = invoke("serve", tmp_path)
    assert (result.exit_code, result.output) == (2, f"Error: {tmp_path} is not an exported page (no index.html and "
                                                    "generator.onnx); make one with ganforge export RUN --format web\n")
