"""How fast the exported web page shows its first grid: headless Chromium on this machine.

    python benchmarks/web_page.py [--repeats 5]

Trains a default DCGAN for 2 steps on the embedded digits (the size of the network is what
matters: 32x32 images, latent 100, ganforge's default widths), exports it with --format web,
serves the folder on 127.0.0.1 and opens the page --repeats times in a fresh browser page. It
prints the page's size without the runtime, the time from navigation to the first grid of 64
drawn (``ganforge.firstRenderMs``), and the time of a later render with a new seed.
"""
import argparse
import functools
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for command in (["train", "--steps", "2", "--no-progress", "--out-dir", str(tmp), "--name", "run"],
                        ["export", str(tmp / "run"), "--format", "web", "--out", str(tmp / "site")]):
            subprocess.run([sys.executable, "-m", "ganforge", *command], check=True, capture_output=True)
        page_kb = (tmp / "site" / "index.html").stat().st_size / 1024
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp / "site")))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        first, later, backend = [], [], None
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            for _ in range(args.repeats):
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
                page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
                first.append(page.evaluate("ganforge.firstRenderMs"))
                backend = page.evaluate("ganforge.backend")
                later.append(page.evaluate("ganforge.render({seed: 99}).then(() => ganforge.renderMs)"))
                page.close()
            browser.close()
        server.shutdown()
    print(f"page without the runtime: {page_kb:.1f} KB; backend {backend}; {args.repeats} page loads")
    print(f"first grid of 64 (navigation to drawn): median {statistics.median(first):.0f} ms "
          f"(min {min(first):.0f}, max {max(first):.0f})")
    print(f"a new grid of 64 (generator + drawing):  median {statistics.median(later):.0f} ms "
          f"(min {min(later):.0f}, max {max(later):.0f})")


if __name__ == "__main__":
    main()
