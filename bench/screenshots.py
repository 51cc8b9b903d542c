"""Screenshots of every page in a real browser (headless Debian Chromium via Playwright).

    python bench/screenshots.py STORE [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {"overview": "", "utterance": "utterance", "clusters": "clusters", "dynamics": "dynamics",
         "contributions": "contributions", "causal": "causal", "upload": "upload"}
"""Screenshot name -> URL path (the first page, Overview, is the app's root)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "loralens.cli", "app", "--store", args.store, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000}, device_scale_factor=1)
            for name, path in PAGES.items():
                page.goto(f"{url}/{path}", wait_until="networkidle")
                page.wait_for_timeout(2000)
                # wait until the script run is over: no spinner, no "running" status widget
                page.wait_for_function("() => !document.querySelector('[data-testid=stSpinner]') && "
                                       "!document.querySelector('[data-testid=stStatusWidget]')", timeout=300_000)
                page.wait_for_timeout(1500)
                assert page.get_by_test_id("stException").count() == 0, name
                assert page.get_by_text("Page not found").count() == 0, name
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                print(f"{args.out / name}.png")
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
