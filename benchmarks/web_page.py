"""The exported web page in headless Chromium on this machine: how soon it shows a grid, how fast it
interpolates, and whether its main thread stays free (long tasks, the browser's name for 50 ms or
more without a break to handle input).

    python benchmarks/web_page.py [--repeats 3] [--before REV] [--run RUN_DIR]

Trains a default DCGAN for 2 steps on the embedded digits (the network's size is what matters:
32x32 images, latent 100, ganforge's default widths; or pass a trained --run), exports it with
--format web, and opens three variants side by side in one browser, --repeats page loads each:

- ``before``: the page of git revision --before (inference on the main thread), plain HTTP;
- ``worker, 1 thread``: this page over plain HTTP (not cross-origin isolated: one WebAssembly thread);
- ``worker, threads``: this page served by ``ganforge serve`` (cross-origin isolated: threads).

For each: the first grid of 64 (navigation to drawn), a later grid (5 clicks
on New samples), interpolation
frames/s over 3 s (requestAnimationFrame calls: one per frame in both pages), and the long tasks
that started during the 5 grids and during those 3 s.
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
WATCH = """
window.__frames = 0;
const raf = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (cb) => { window.__frames++; return raf(cb); };
window.__long = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push([e.startTime, e.duration]); })
  .observe({ type: "longtask", buffered: true });
"""
LONG_IN = "([t0, t1]) => window.__long.filter(([s]) => s >= t0 && s < t1).map(([, d]) => d)"


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def measure(browser, url: str) -> dict:
    page = browser.new_page()
    page.add_init_script(WATCH)
    page.goto(url)
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
    out = {"first": page.evaluate("ganforge.firstRenderMs"), "threads": page.evaluate("ganforge.threads || 1")}
    t0 = page.evaluate("performance.now()")
    out["later"] = []
    for _ in range(5):  # through the page's own button: script run by the test harness is not a page task
        page.evaluate("ganforge.renderMs = -1")
        page.click("#new")
        page.wait_for_function("ganforge.renderMs > 0", timeout=60_000)
        out["later"].append(page.evaluate("ganforge.renderMs"))
    grids = [t0, page.evaluate("performance.now()")]
    t0, f0 = page.evaluate("[performance.now(), window.__frames]")
    page.click("#play")
    page.wait_for_timeout(3000)
    t1, f1 = page.evaluate("[performance.now(), window.__frames]")
    page.click("#play")
    out["fps"] = (f1 - f0) / (t1 - t0) * 1000
    page.wait_for_timeout(1000)  # the observer reports long tasks when the page is idle
    out["grid_long"] = page.evaluate(f"({LONG_IN})({grids})")
    out["interp_long"] = page.evaluate(f"({LONG_IN})({[t0, t1]})")
    page.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="3a2472d~1", help="git revision of the page to compare with")
    parser.add_argument("--run", help="a trained run to export instead of a 2-step one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from ganforge.web import server as isolated_server

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or str(tmp / "run")
        if not args.run:
            subprocess.run([sys.executable, "-m", "ganforge", "train", "--steps", "2", "--no-progress", "--out-dir",
                            str(tmp), "--name", "run"], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "ganforge", "export", run, "--format", "web", "--out",
                        str(tmp / "site")], check=True, capture_output=True)
        shutil.copytree(tmp / "site", tmp / "before")
        old = subprocess.run(["git", "show", f"{args.before}:ganforge/static/index.html"], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parent).stdout
        (tmp / "before" / "index.html").write_text(old)
        servers = {"before": http.server.ThreadingHTTPServer(
                       ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp / "before"))),
                   "worker, 1 thread": http.server.ThreadingHTTPServer(
                       ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp / "site"))),
                   "worker, threads": isolated_server(tmp / "site", port=0)}
        for s in servers.values():
            threading.Thread(target=s.serve_forever, daemon=True).start()
        results = {name: [] for name in servers}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            for _ in range(args.repeats):  # interleaved, so a busy moment hits every variant alike
                for name, s in servers.items():
                    results[name].append(measure(browser, f"http://127.0.0.1:{s.server_port}/index.html?seed=1"))
            browser.close()
        for s in servers.values():
            s.shutdown()

    print(f"{args.repeats} page loads each, medians; long tasks: count / total ms / longest ms over all loads")
    print(f"{'variant':18} {'threads':>7} {'first grid':>10} {'later grid':>10} {'interp fps':>10} "
          f"{'long tasks (5 grids)':>22} {'long tasks (3 s interp)':>24}")
    for name, rows in results.items():
        def longs(key):
            d = [x for r in rows for x in r[key]]
            return f"{len(d)} / {sum(d):.0f} / {max(d, default=0):.0f}"
        print(f"{name:18} {rows[0]['threads']:>7} {statistics.median(r['first'] for r in rows):>8.0f}ms "
              f"{statistics.median(x for r in rows for x in r['later']):>8.0f}ms "
              f"{statistics.median(r['fps'] for r in rows):>10.1f} {longs('grid_long'):>22} {longs('interp_long'):>24}")


if __name__ == "__main__":
    main()
