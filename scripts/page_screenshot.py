"""Screenshot of the web page for the README: ``python scripts/page_screenshot.py`` (after ``make test``
has installed chromium). Starts ``samclip serve`` with the shipped model on a free loopback port, opens
``docs/images/scene.png``, clicks the triangle at (135, 144) and writes ``docs/images/page.png``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from samclip.testing import serve_subprocess

ROOT = Path(__file__).resolve().parents[1]
CLICK = (135, 144)  # the same object as `samclip segment --point 135,144` in scripts/readme_images.sh


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, serve_subprocess("tiny-synthetic", Path(tmp) / "server.log") as (_, url):
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
            tmp_png = out.with_suffix(".tmp.png")
            page.screenshot(path=str(tmp_png))
            tmp_png.replace(out)
            print(f"wrote {out} (label: {page.locator('#mask-label').get_attribute('data-label')})")
            browser.close()


if __name__ == "__main__":
    main()
