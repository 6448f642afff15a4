"""The web page end to end: a real server (uvicorn subprocess on loopback) driven by headless Chromium.

Needs /usr/bin/chromium; the session fixture tries ``scripts/install_chromium.sh`` once (root + apt)
and skips with the reason when it is still missing. With the tiny RANDOM model the label is not the
right category, so the main test checks the mechanics: the overlay drawn on the canvas is the
server's mask and covers the clicked pixel, the label comes from the vocabulary, the semantic map
shows a legend with both words. ``test_trained_model_labels_clicked_object`` checks the category with
the shipped ``tiny-synthetic`` model on held-out single-object scenes and skips while that does not exist.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import samclip
from samclip.data import SHAPES, generate_scene, single_object_scene, split_seeds
from samclip.predictor import Predictor
from samclip.serve import rle_decode
from samclip.testing import serve_subprocess, tiny_merged_model

pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZE = 128
TIMEOUT_MS = 30_000
CLICK_LABEL_MIN_ACCURACY = 0.75  # trained model, held-out single-object scenes (chance: 1/12)


build_tiny_merged = tiny_merged_model


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        script = ROOT / "scripts" / "install_chromium.sh"
        try:
            subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing and scripts/install_chromium.sh could not install it (needs root + apt)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):  # noqa: ANN001, ANN201
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("browser_model") / "merged"
    samclip.save_pretrained(build_tiny_merged(), folder)
    return folder


@pytest.fixture(scope="module")
def server(model_folder, tmp_path_factory):  # noqa: ANN001, ANN201
    log = tmp_path_factory.mktemp("server_logs") / "server.log"
    with serve_subprocess(str(model_folder), log, timeout=90) as (_, url):
        yield url


# ------------------------------------------------------------------------------------------- helpers
def open_page(browser, url: str, image_path: Path):  # noqa: ANN001, ANN201
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "/")
    page.set_input_files("#file-input", str(image_path))
    page.wait_for_function("() => window.samclipState.imageId && !window.samclipState.busy")
    return page


def click_image(page, x: float, y: float, button: str = "left") -> None:  # noqa: ANN001
    """Click the pixel (x, y) of the original image (its centre) on the displayed canvas."""
    box = page.locator("#prompt-canvas").bounding_box()
    st = page.evaluate("() => ({w: window.samclipState.width, h: window.samclipState.height})")
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / st["w"], box["y"] + (y + 0.5) * box["height"] / st["h"],
                     button=button)


def overlay_alpha(page) -> np.ndarray:  # noqa: ANN001
    """HxW alpha of the overlay canvas (the mask / map layer, at the image's resolution)."""
    data = page.evaluate("""() => {
        const c = document.getElementById('overlay-canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const a = new Array(c.width * c.height);
        for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];
        return {w: c.width, h: c.height, a: a};
    }""")
    return np.array(data["a"], dtype=np.uint8).reshape(data["h"], data["w"])


def covered_point(url: str, png: bytes, scene, vocab: list[str]) -> tuple[int, int]:
    """A pixel on an object whose /label mask (the page's request) covers it: with a random model, not
    every click gives a mask containing the click, so pick such a pixel through the API itself."""
    with httpx.Client(base_url=url, timeout=30) as c:
        iid = c.post("/images", files={"file": ("s.png", png, "image/png")}).json()["image_id"]
        rng = np.random.default_rng(0)
        for mask in scene.instance_masks:
            ys, xs = np.nonzero(mask)
            for k in rng.permutation(len(xs))[:8]:
                x, y = int(xs[k]), int(ys[k])
                r = c.post(f"/images/{iid}/label", json={"points": [[x, y]], "point_labels": [1], "labels": vocab,
                                                         "multimask": True}).json()
                if rle_decode(r["mask"]["segmentation"])[y, x]:
                    return x, y
    pytest.fail("no object pixel whose predicted mask covers it")


# --------------------------------------------------------------------------------------------- tests
def test_click_label_and_semantic_map(browser, server, tmp_path) -> None:  # noqa: ANN001
    scene = generate_scene(3, SIZE)
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    x, y = covered_point(server, path.read_bytes(), scene, list(SHAPES))
    page = open_page(browser, server, path)
    try:
        st = page.evaluate("() => window.samclipState")
        assert (st["width"], st["height"]) == (SIZE, SIZE)

        click_image(page, x, y)
        page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")
        st = page.evaluate("() => window.samclipState")
        assert st["points"] == [[x, y]] and st["pointLabels"] == [1]
        alpha = overlay_alpha(page)
        assert alpha[y, x] > 0, "the overlay does not cover the clicked pixel"
        assert int((alpha > 0).sum()) == st["lastMaskPixels"] > 0  # the drawn overlay is the server's mask
        label = page.locator("#mask-label")
        assert label.get_attribute("data-label") in SHAPES and st["lastLabel"] == label.get_attribute("data-label")
        assert label.inner_text().strip()

        # "label with the crop too": the same click labelled by pooling="max+crop", with the mirrored reads
        page.check("#label-crop")
        click_image(page, x, y)
        page.wait_for_function("() => window.samclipState.lastRequest.pooling === 'max+crop' && "
                               "window.samclipState.points.length === 2 && !window.samclipState.busy")
        assert page.evaluate("() => window.samclipState.lastRequest.tta") is True
        assert page.locator("#mask-label").get_attribute("data-label") in SHAPES
        page.uncheck("#label-crop")
        page.keyboard.press("Escape")  # clear the prompts
        click_image(page, x, y)
        page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")

        # right click adds a background point; the page re-segments with both prompts
        click_image(page, 1, 1, button="right")
        page.wait_for_function("() => window.samclipState.pointLabels.length === 2 && !window.samclipState.busy")
        assert page.evaluate("() => window.samclipState.pointLabels") == [1, 0]

        # words -> semantic map with a legend of both words; the canvas changes
        before = overlay_alpha(page)
        version = page.evaluate("() => window.samclipState.overlayVersion")
        page.fill("#sem-words", "star, ring")
        page.click("#sem-run")
        page.wait_for_function(f"() => window.samclipState.lastMode === 'semseg' && "
                               f"window.samclipState.overlayVersion > {version}")
        names = page.locator("#legend li").evaluate_all("els => els.map(e => e.dataset.name)")
        assert names == ["star", "ring"]
        assert page.locator("#legend").get_attribute("data-mode") == "semseg"
        assert not np.array_equal(before, overlay_alpha(page)), "the canvas did not change"
        assert page.evaluate("() => window.samclipState.lastRequest.crop_margin") == 0  # "+ crops" needs refine
        page.check("#sem-refine")
        page.check("#sem-crops")
        version = page.evaluate("() => window.samclipState.overlayVersion")
        page.click("#sem-run")
        page.wait_for_function(f"() => window.samclipState.lastMode === 'semseg' && "
                               f"window.samclipState.overlayVersion > {version}")
        assert page.evaluate("() => window.samclipState.lastRequest") == {
            "labels": ["star", "ring"], "refine": True, "crop_margin": 0.7, "png": True}
        assert page.evaluate("() => window.samclipState.lastResponse.refined")

        # phrase -> every instance: the legend lists the instances, the overlay is their union
        version = page.evaluate("() => window.samclipState.overlayVersion")
        page.fill("#text-phrase", "star")
        page.press("#text-phrase", "Enter")
        page.wait_for_function(f"() => window.samclipState.lastMode === 'text' && "
                               f"window.samclipState.overlayVersion > {version} && !window.samclipState.busy")
        st = page.evaluate("() => window.samclipState")
        assert st["lastRequest"]["phrase"] == "star" and "star" not in st["lastRequest"].get("vocabulary", [])
        instances = st["lastResponse"]["instances"]
        names = page.locator("#legend li").evaluate_all("els => els.map(e => e.dataset.name)")
        assert names == [f"star {k}" for k in range(1, len(instances) + 1)]
        union = np.zeros((SIZE, SIZE), bool)
        for inst in instances:
            union |= rle_decode(inst["segmentation"]).astype(bool)
        assert np.array_equal(overlay_alpha(page) > 0, union)
        version = page.evaluate("() => window.samclipState.overlayVersion")
        page.check("#text-every")  # candidates from the everything mode
        page.click("#text-run")
        page.wait_for_function(f"() => window.samclipState.lastMode === 'text' && "
                               f"window.samclipState.overlayVersion > {version} && !window.samclipState.busy")
        assert page.evaluate("() => window.samclipState.lastRequest.candidates") == "everything"

        # drag = box prompt, in original-image pixels; "zoom in" sends zoom with the prompts
        page.check("#prompt-zoom")
        box = page.locator("#prompt-canvas").bounding_box()
        sx, sy = box["width"] / SIZE, box["height"] / SIZE
        page.mouse.move(box["x"] + 10 * sx, box["y"] + 20 * sy)
        page.mouse.down()
        page.mouse.move(box["x"] + 40 * sx, box["y"] + 50 * sy, steps=5)
        page.mouse.move(box["x"] + 70 * sx, box["y"] + 90 * sy, steps=5)
        page.mouse.up()
        page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")
        got = page.evaluate("() => window.samclipState.box")
        assert np.allclose(got, [10, 20, 70, 90], atol=1.0), got
        assert page.evaluate("() => window.samclipState.lastRequest.zoom") is True
        assert page.evaluate("() => window.samclipState.lastRequest.pooling") == "zoom"  # labels read zoomed too
        assert page.locator("#status").get_attribute("data-state") != "error"

        # everything: all masks with labels from the vocabulary
        page.click("#everything-run")
        page.wait_for_function("() => window.samclipState.lastMode === 'everything' && !window.samclipState.busy")
        assert page.locator("#legend").get_attribute("data-mode") == "everything"
        assert page.locator("#status").get_attribute("data-state") != "error"
    finally:
        page.close()


def test_page_reports_errors(browser, server, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a png")
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(server + "/")
        page.set_input_files("#file-input", str(bad))
        page.wait_for_function("() => document.getElementById('status').dataset.state === 'error'")
        assert "invalid_image" in page.locator("#status").inner_text()
        assert httpx.get(server + "/health").status_code == 200
    finally:
        page.close()


def test_trained_model_labels_clicked_object(browser, tmp_path) -> None:  # noqa: ANN001
    """With the shipped trained model: on held-out single-object scene-world images (the first 12 seeds of
    the test split, at 192 px), clicking the object draws a mask over it and labels it; the page's label
    is the model's own (Predictor.predict + label_masks on the same click), and most labels are the
    object's true category (chance is 1/12).

    The bar is CLICK_LABEL_MIN_ACCURACY, not 100%: one-pass labelling reads an 8x8 grid of CLIP-head
    tokens at 128 px, and the shipped tiny model labels such clicks right 82.5% of the time on the first 40
    of these scenes (11 of these 12; its whole-image zero-shot is 95.5%); ``samclip eval``'s labelling
    benchmark measures click / box labelling on crowded scenes."""
    try:
        model = samclip.load_model("tiny-synthetic")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"the trained tiny-synthetic merged model is not available: {err}")
    predictor = Predictor(model)
    results = []
    with serve_subprocess("tiny-synthetic", tmp_path / "server.log", timeout=90) as (_, url):
        for seed in split_seeds("test", 12):
            scene = single_object_scene(seed, 192)
            path = tmp_path / f"scene{seed}.png"
            Image.fromarray(scene.image).save(path)
            obj = scene.objects[0]
            x, y = (int(v) for v in obj.prompt_point)
            predictor.set_image(scene.image)
            masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
            idx, _ = predictor.label_masks(masks[int(np.argmax(scores))][None], list(SHAPES))
            page = open_page(browser, url, path)
            try:
                click_image(page, x, y)
                page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")
                assert overlay_alpha(page)[y, x] > 0, f"seed {seed}: the overlay does not cover the clicked object"
                shown = page.locator("#mask-label").get_attribute("data-label")
                results.append((obj.category, SHAPES[int(idx[0])], shown))
                if len(results) == 1:  # the phrase search on the first scene: its instances drawn, one is the object
                    page.fill("#text-phrase", obj.category)
                    page.click("#text-run")
                    page.wait_for_function("() => window.samclipState.lastMode === 'text' && "
                                           "!window.samclipState.busy")
                    instances = page.evaluate("() => window.samclipState.lastResponse.instances")
                    masks = [rle_decode(i["segmentation"]).astype(bool) for i in instances]
                    assert masks and np.array_equal(overlay_alpha(page) > 0, np.any(masks, axis=0))
                    truth = scene.instance_masks[0]
                    assert max((m & truth).sum() / (m | truth).sum() for m in masks) > 0.5
            finally:
                page.close()
    assert all(model_label == shown for _, model_label, shown in results), results
    accuracy = sum(truth == shown for truth, _, shown in results) / len(results)
    assert accuracy >= CLICK_LABEL_MIN_ACCURACY, f"click labels right {accuracy:.0%} of the time: {results}"


def test_page_asks_once_for_the_api_key_of_a_guarded_server(browser, model_folder, tmp_path) -> None:  # noqa: ANN001
    """`samclip serve --api-key-file`: the page gets 401 on its first upload, asks for the key (a prompt dialog),
    keeps it for the tab and sends it with every later request."""
    (tmp_path / "key").write_text("open-sesame\n")
    scene = generate_scene(3, SIZE)
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    dialogs: list[str] = []
    with serve_subprocess(str(model_folder), tmp_path / "server.log", "--api-key-file", str(tmp_path / "key"),
                          timeout=90) as (_, url):
        assert httpx.get(url + "/info").status_code == 401
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("dialog", lambda d: (dialogs.append(d.type), d.accept("open-sesame")))
        try:
            page.goto(url + "/")
            page.set_input_files("#file-input", str(path))
            page.wait_for_function("() => window.samclipState.imageId && !window.samclipState.busy")
            click_image(page, 60, 60)
            page.wait_for_function("() => window.samclipState.lastMode === 'mask' && !window.samclipState.busy")
            assert dialogs == ["prompt"]  # asked once; the click reused the key
            assert page.evaluate("() => window.samclipState.errors") == 0
        finally:
            page.close()
