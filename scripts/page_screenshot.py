"""Screenshot of the web page for the README: ``python scripts/page_screenshot.py`` (after ``make test``
has installed chromium). Starts ``samclip serve`` with the shipped model on a free loopback port, opens
``docs/images/scene.png``, clicks the triangle at (135, 144) and writes ``docs/images/page.png``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CLICK = (135, 144)  # the same object as `samclip segment --point 135,144` in scripts/readme_images.sh


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "samclip.cli", "serve", "--model", "tiny-synthetic",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless=new", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(url + "/")
            page.set_input_files("#file-input", str(ROOT / "docs/images/scene.png"))
            page.wait_for_function("() => window.samclipState.imageId && !window.samclipState.busy")
            box = page.locator("#prompt-canvas").bounding_box()
            st = page.evaluate("() => ({w: window.samclipState.width, h: window.samclipState.height})")
            page.mouse.click(box["x"] + (CLICK[0] + 0.5) * box["width"] / st["w"],
                             box["y"] + (CLICK[1] + 0.5) * box["height"] / st["h"])
            page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")
            out = ROOT / "docs/images/page.png"
            tmp = out.with_suffix(".tmp.png")
            page.screenshot(path=str(tmp))
            tmp.replace(out)
            print(f"wrote {out} (label: {page.locator('#mask-label').get_attribute('data-label')})")
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
