"""``ganforge export --format web``: a static page that samples the generator in the browser, and
``ganforge serve``, which serves it with the headers that let WebAssembly use threads.

The folder holds ``index.html`` and ``worker.js`` (ganforge/static: plain HTML and JavaScript, no
build step; the worker runs the generator, so the page never blocks), the verified
``generator.onnx`` (its metadata is what the page reads) and the runtime files of onnxruntime-web
for the chosen backends, pinned to one version. They come from ``--runtime DIR`` (an npm install of
that version) or, the first time, from the npm registry into ganforge's cache, with the tarball
checked against the registry's published SHA-512. The folder works offline after.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from ganforge.errors import UsageError
from ganforge.rundir import cache_dir

ORT_WEB_VERSION = "1.30.0"
ORT_WEB_TARBALL = f"onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# The runtime files of each backend the page can load: the WebGPU build (which also runs WebAssembly,
# for browsers without a GPU adapter) and the smaller WebAssembly-only build.
BACKEND_FILES = {
    "webgpu": ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
    "wasm": ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
}
BACKENDS = ("both", "wasm", "webgpu")
RUNTIME_FILES = BACKEND_FILES["webgpu"] + BACKEND_FILES["wasm"]
STATIC = Path(__file__).parent / "static"
BACKENDS_MARK = '<meta name="ganforge-backends" content="webgpu wasm">'  # index.html's line that export fills in
INSTALL_HINT = (f"npm install onnxruntime-web@{ORT_WEB_VERSION} and pass --runtime node_modules/onnxruntime-web")


def registry_url() -> str:
    """The npm registry: npm's own setting (``npm_config_registry``) when there is one."""
    return (os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
            or "https://registry.npmjs.org/").rstrip("/") + "/"


def runtime(given: Path | None = None) -> Path:
    """The folder holding RUNTIME_FILES: ``given`` (an npm package folder, its ``dist/``, or the files
    themselves), else ganforge's cache, filled from the npm registry the first time."""
    if given is not None:
        given = Path(given)
        for folder in (given / "dist", given / "node_modules" / "onnxruntime-web" / "dist", given):
            if all((folder / name).is_file() for name in RUNTIME_FILES):
                version = _package_version(folder)
                if version not in (None, ORT_WEB_VERSION):
                    raise UsageError(f"--runtime {given} has onnxruntime-web {version}; the page is built and tested "
                                     f"for {ORT_WEB_VERSION}: npm install onnxruntime-web@{ORT_WEB_VERSION}")
                return folder
        raise UsageError(f"--runtime {given} has no onnxruntime-web runtime files ({RUNTIME_FILES[0]} ...); "
                         f"{INSTALL_HINT}")
    folder = cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}"
    if not all((folder / name).is_file() for name in RUNTIME_FILES):
        fetch_runtime(folder)
    return folder


def _package_version(folder: Path) -> str | None:
    """The version in the package.json of the npm package that ``folder`` is (or is the dist/ of), if any."""
    for path in (folder / "package.json", folder.parent / "package.json"):
        try:
            return json.loads(path.read_text()).get("version")
        except (OSError, ValueError):
            continue
    return None


def fetch_runtime(folder: Path) -> None:
    """Download the pinned onnxruntime-web tarball, check its SHA-512, and unpack RUNTIME_FILES into
    ``folder`` (all of them or none)."""
    url = registry_url() + ORT_WEB_TARBALL
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UsageError(f"cannot download onnxruntime-web {ORT_WEB_VERSION} from {url} ({reason}); offline, "
                         f"{INSTALL_HINT} on a machine with network access and copy it here") from None
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != ORT_WEB_INTEGRITY:
        raise UsageError(f"{url} does not have the published checksum of onnxruntime-web {ORT_WEB_VERSION}; "
                         "refusing it")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in RUNTIME_FILES:  # read by name: nothing else in the archive is written anywhere
            (tmp / name).write_bytes(archive.extractfile(f"package/dist/{name}").read())
    (tmp / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": ORT_WEB_VERSION}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def export_web(write_model, out: Path, runtime_dir: Path | None = None, overwrite: bool = False,
               backend: str = "both") -> float:
    """Write the page folder ``out``: the page, the runtime of ``backend`` (both, wasm or webgpu) and
    generator.onnx, which ``write_model(path)`` writes and verifies, returning its max abs difference
    from PyTorch. Everything is written beside ``out`` first and moved into place at the end: a failure
    leaves what was there."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    backends = ("webgpu", "wasm") if backend == "both" else (backend,)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the web export writes a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pick another folder or pass --overwrite")
    files = runtime(runtime_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".tmp-{out.name}"), out.with_name(f".old-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        diff = write_model(tmp / "generator.onnx")
        page = (STATIC / "index.html").read_text()
        assert BACKENDS_MARK in page
        (tmp / "index.html").write_text(page.replace(BACKENDS_MARK, BACKENDS_MARK.replace(
            "webgpu wasm", " ".join(backends))))
        shutil.copyfile(STATIC / "worker.js", tmp / "worker.js")
        for name in (name for b in backends for name in BACKEND_FILES[b]):
            shutil.copyfile(files / name, tmp / name)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return diff


def copy_exported(source: Path):
    """``write_model`` for an ONNX file that ``ganforge export`` wrote: checked to load with its metadata,
    then copied (it was verified when it was exported)."""
    from ganforge.inference import Sampler

    source = Path(source)
    if source.suffix != ".onnx":
        raise UsageError(f"{source} is not an ONNX file; the web page runs generator.onnx (export a run, or "
                         "pass its .onnx)")
    Sampler(source)  # UsageError when it is not a ganforge export

    def write(path: Path) -> float:
        shutil.copyfile(source, path)
        return 0.0

    return write


# The headers that make a page cross-origin isolated, which WebAssembly threads (SharedArrayBuffer) need.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


def server(site: Path, port: int = 8000, bind: str = "127.0.0.1"):
    """An HTTP server for the exported page folder ``site`` that sends ISOLATION_HEADERS (call its
    ``serve_forever``); port 0 picks a free one."""
    import functools
    import http.server

    site = Path(site)
    if not (site / "index.html").is_file() or not (site / "generator.onnx").is_file():
        raise UsageError(f"{site} is not an exported page (no index.html and generator.onnx); make one with "
                         "ganforge export RUN --format web")

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

        def end_headers(self):
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
            self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def log_message(self, format, *args):  # quiet: the command prints its address once
            pass

    try:
        return http.server.ThreadingHTTPServer((bind, port), functools.partial(Handler, directory=str(site)))
    except OSError as exc:
        raise UsageError(f"cannot serve on {bind}:{port} ({exc.strerror or exc}); pick another --port") from None
