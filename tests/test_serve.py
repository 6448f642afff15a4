"""HTTP service on a tiny random merged model: every endpoint, the limits, error bodies, the LRU, timeouts."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import samclip
from samclip.data import SHAPES, generate_scene
from samclip.serve import rle_decode
from samclip.serve.app import create_app
from samclip.serve.cache import ImageCache, state_nbytes
from samclip.testing import tiny_merged_model

SIZE = 96


build_tiny_merged = tiny_merged_model


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (the pixel data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp("serve_model") / "merged"
    samclip.save_pretrained(build_tiny_merged(), folder)
    return folder


@pytest.fixture(scope="module")
def scenes() -> list:
    return [generate_scene(seed, SIZE) for seed in range(3)]


@pytest.fixture(scope="module")
def app(model_folder):  # noqa: ANN001, ANN201
    return create_app(str(model_folder), max_upload_mb=0.05, max_pixels=200 * 200, max_prompts=8, cache_size=2,
                      request_timeout_s=30)


@pytest.fixture(scope="module")
def client(app):  # noqa: ANN001, ANN201
    with TestClient(app) as c:
        yield c


def upload(client: TestClient, image: np.ndarray) -> dict:
    r = client.post("/images", files={"file": ("scene.png", png_bytes(image), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(r: httpx.Response, status: int, error: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"} and body["detail"], body
    if error is not None:
        assert body["error"] == error, body
    return body


# --------------------------------------------------------------------------------------- happy paths
def test_openapi_health_info_page(client) -> None:  # noqa: ANN001
    spec = client.get("/openapi.json").json()
    for path in ("/images", "/images/{image_id}/predict", "/images/{image_id}/label", "/images/{image_id}/classify",
                 "/images/{image_id}/semseg", "/images/{image_id}/segment_text", "/images/{image_id}/everything",
                 "/health", "/info"):
        assert path in spec["paths"], path
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["img_size"] == 128 and info["patch_size"] == 16 and info["vocabulary"] == list(SHAPES)
    assert info["limits"]["max_prompts"] == 8 and info["cache"]["max_items"] == 2
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt-canvas"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_every_endpoint(client, scenes) -> None:  # noqa: ANN001
    sc = scenes[0]
    up = upload(client, sc.image)
    assert (up["width"], up["height"]) == (SIZE, SIZE) and len(up["image_id"]) == 32
    assert upload(client, sc.image)["cached"] is True  # content-addressed: no second backbone pass
    iid = up["image_id"]
    x, y = sc.objects[0].prompt_point

    r = client.post(f"/images/{iid}/predict", json={"points": [[x, y]], "png": True})
    assert r.status_code == 200, r.text
    p = r.json()
    assert len(p["masks"]) == 3 and len(p["scores"]) == 3 and 0 <= p["best"] < 3
    for m in p["masks"]:
        mask = rle_decode(m["segmentation"])
        assert mask.shape == (SIZE, SIZE) and int(mask.sum()) == m["area"]
    png = decode_data_url(p["label_map_png"])
    best = rle_decode(p["masks"][p["best"]]["segmentation"])
    assert png.size == (SIZE, SIZE) and png.mode == "P"
    assert np.array_equal(np.asarray(png) == 1, best)

    r = client.post(f"/images/{iid}/predict", json={"box": [10, 10, 60, 70], "multimask": False})
    assert r.status_code == 200 and len(r.json()["masks"]) == 1 and r.json()["label_map_png"] is None
    small = {"box": [10, 10, 24, 22], "multimask": False}  # its 42 px zoom window is smaller than the image
    plain, zoomed = (client.post(f"/images/{iid}/predict", json={**small, "zoom": z}) for z in (False, True))
    assert zoomed.status_code == 200 and zoomed.json()["masks"][0] != plain.json()["masks"][0]
    r = client.post(f"/images/{iid}/label", json={**small, "zoom": True, "labels": ["star", "ring"], "pooling": "zoom"})
    assert r.status_code == 200 and r.json()["mask"] == zoomed.json()["masks"][0]
    r = client.post(f"/images/{iid}/predict", json={"points": [[17, 16]], "zoom": True})  # a click: zoomed too
    assert r.status_code == 200 and len(r.json()["masks"]) == 3

    r = client.post(f"/images/{iid}/label", json={"points": [[x, y], [2, 2]], "point_labels": [1, 0],
                                                    "labels": ["star", "ring", "heart"]})
    lab = r.json()
    assert r.status_code == 200 and lab["label"] in ("star", "ring", "heart")
    assert abs(sum(lab["probs"].values()) - 1) < 1e-4 and rle_decode(lab["mask"]["segmentation"]).shape == (SIZE, SIZE)
    r = client.post(f"/images/{iid}/label", json={"points": [[x, y], [2, 2]], "point_labels": [1, 0],
                                                    "labels": ["star", "ring", "heart"], "pooling": "crop"})
    assert r.status_code == 200 and r.json()["mask"] == lab["mask"] and r.json()["probs"] != lab["probs"]
    assert_error(client.post(f"/images/{iid}/label", json={"points": [[x, y]], "pooling": "best"}), 422)

    r = client.post(f"/images/{iid}/classify", json={"labels": ["star", "ring"]})
    c = r.json()
    assert r.status_code == 200 and abs(sum(c["probs"]) - 1) < 1e-4 and c["top"] in ("star", "ring")
    assert len(client.post(f"/images/{iid}/classify", json={}).json()["probs"]) == len(SHAPES)  # default vocab

    r = client.post(f"/images/{iid}/semseg", json={"labels": ["star", "ring"], "refine": True})
    s = r.json()
    crops = client.post(f"/images/{iid}/semseg", json={"labels": ["star", "ring"], "refine": True, "crop_margin": 1})
    assert crops.status_code == 200 and crops.json()["refined"]
    assert r.status_code == 200 and [e["name"] for e in s["legend"]] == ["star", "ring"]
    lm = np.asarray(decode_data_url(s["label_map_png"]))
    assert lm.shape == (SIZE, SIZE) and lm.max() <= 2
    assert sum(e["area"] for e in s["legend"]) + s["background_area"] == SIZE * SIZE
    for seg in s["segments"]:
        assert np.array_equal(rle_decode(seg["segmentation"]), lm == seg["id"])

    r = client.post(f"/images/{iid}/segment_text", json={"phrase": "star", "vocabulary": ["ring"], "threshold": 0.0})
    assert r.status_code == 200 and r.json()["phrase"] == "star"
    for inst in r.json()["instances"]:
        assert rle_decode(inst["segmentation"]).shape == (SIZE, SIZE)
    unverified = {"phrase": "star", "vocabulary": ["ring"], "threshold": 0.0, "verify": False}
    r = client.post(f"/images/{iid}/segment_text", json=unverified)
    assert r.status_code == 200
    for inst in r.json()["instances"]:
        assert rle_decode(inst["segmentation"]).shape == (SIZE, SIZE)
    r = client.post(f"/images/{iid}/segment_text", json={**unverified, "verify": "perhaps"})
    assert r.status_code == 422
    every = {"phrase": "star", "vocabulary": ["ring"], "candidates": "everything"}
    r = client.post(f"/images/{iid}/segment_text", json=every)
    assert r.status_code == 200 and len(r.json()["legend"]) == len(r.json()["instances"])
    assert client.post(f"/images/{iid}/segment_text", json={**every, "candidates": "all"}).status_code == 422
    assert client.post(f"/images/{iid}/segment_text", json={**every, "verify": False}).status_code == 422

    r = client.post(f"/images/{iid}/everything", json={"labels": ["star", "ring"], "points_per_side": 4,
                                                         "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    e = r.json()
    assert r.status_code == 200 and e["count"] == len(e["masks"]) == len(e["legend"]) >= 1
    assert all(m["label"] in ("star", "ring") for m in e["masks"])
    assert np.asarray(decode_data_url(e["label_map_png"])).max() == e["count"]
    r = client.post(f"/images/{iid}/everything", json={"labels": ["star", "ring"], "points_per_side": 4,
                                                         "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                                         "pooling": "crop"})
    ec = r.json()["masks"]
    assert r.status_code == 200 and [m["area"] for m in ec] == [m["area"] for m in e["masks"]]
    assert [m["label_score"] for m in ec] != [m["label_score"] for m in e["masks"]]
    r = client.post(f"/images/{iid}/everything", json={"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                         "stability_score_thresh": 0.0, "crop_n_layers": 1})
    assert r.status_code == 200 and r.json()["count"] >= 1  # the four crops' masks beside the image's
    assert_error(client.post(f"/images/{iid}/everything", json={"crop_n_layers": 3}), 422)

    assert client.get(f"/images/{iid}").json() == {"image_id": iid, "width": SIZE, "height": SIZE}


# ---------------------------------------------------------------------------------------- robustness
def test_bad_uploads(client, scenes) -> None:  # noqa: ANN001
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)  # ~77 kB > 0.05 MB
    r = client.post("/images", files={"file": ("big.png", png_bytes(noise), "image/png")})
    assert_error(r, 413, "payload_too_large")
    huge = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # over the multipart slack too
    assert_error(client.post("/images", files={"file": ("huge.png", png_bytes(huge), "image/png")}),
                 413, "payload_too_large")

    def chunked():  # no Content-Length: the limit is enforced while streaming  # noqa: ANN202
        yield b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(200):
            yield b"\x00" * 1024
        yield b"\r\n--xx--\r\n"

    r = client.post("/images", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert_error(r, 413, "payload_too_large")
    assert_error(client.post("/images", files={"file": ("x.png", b"definitely not an image", "image/png")}),
                 400, "invalid_image")
    truncated = png_bytes(scenes[1].image)
    assert_error(client.post("/images", files={"file": ("t.png", truncated[: len(truncated) // 2], "image/png")}),
                 400, "invalid_image")
    assert_error(client.post("/images", files={"file": ("e.png", b"", "image/png")}), 400, "invalid_image")
    body = assert_error(client.post("/images", files={"file": ("bomb.png", png_claiming(100_000, 100_000))}),
                        413, "image_too_large")
    assert "too large" in body["detail"]
    cheap_but_big = png_bytes(np.zeros((300, 300, 3), np.uint8))  # 90k pixels > max_pixels 40k, few bytes
    assert_error(client.post("/images", files={"file": ("b.png", cheap_but_big)}), 413, "image_too_large")
    assert_error(client.post("/images", data={"nofile": "1"}), 422, "invalid_request")
    for arr in (np.full((8, 8), 0.5, np.float32), np.full((8, 8), 70000, np.int32)):  # 'F' / 'I' modes: refused,
        buf = io.BytesIO()  # never clipped to a black or white image
        Image.fromarray(arr).save(buf, format="TIFF")
        body = assert_error(client.post("/images", files={"file": ("x.tiff", buf.getvalue())}), 400, "invalid_image")
        assert "32-bit" in body["detail"]
    assert client.get("/health").json()["status"] == "ok"


def test_bad_requests(client, scenes) -> None:  # noqa: ANN001
    iid = upload(client, scenes[0].image)["image_id"]
    url = f"/images/{iid}/predict"
    assert_error(client.post("/images/deadbeef/predict", json={"points": [[1, 1]]}), 404, "image_not_found")
    assert_error(client.post("/images/deadbeef/classify", json={}), 404, "image_not_found")
    assert_error(client.post(url, content=b'{"points": [[1, 1]', headers={"content-type": "application/json"}),
                 422, "malformed_json")
    assert_error(client.post(url, json={"points": [[SIZE + 5, 1]]}), 422, "invalid_prompt")
    assert_error(client.post(url, json={"points": [[-1, 1]]}), 422, "invalid_prompt")
    assert_error(client.post(url, json={"box": [0, 0, SIZE + 1, 10]}), 422, "invalid_prompt")
    assert_error(client.post(url, json={"box": [50, 0, 10, 10]}), 422, "invalid_prompt")
    assert client.post(url, json={"box": [0, 0, SIZE, SIZE]}).status_code == 200  # edges are inside
    assert_error(client.post(url, json={"points": [[1, 1]] * 9}), 422, "too_many_prompts")
    assert_error(client.post(url, json={"points": [[1, 1]] * 8, "box": [0, 0, 5, 5]}), 422, "too_many_prompts")
    assert_error(client.post(f"/images/{iid}/classify", json={"labels": [f"w{i}" for i in range(9)]}),
                 422, "too_many_prompts")
    assert_error(client.post(url, json={"points": [[1, 1]], "point_labels": [2]}), 422, "invalid_request")
    assert_error(client.post(url, json={"points": [[1, 1]], "point_labels": [1, 0]}), 422, "invalid_prompt")
    assert_error(client.post(url, content=b'{"points": [[NaN, 1]]}', headers={"content-type": "application/json"}),
                 422)
    assert_error(client.post(url, json={}), 422, "invalid_prompt")  # no prompt at all
    assert_error(client.post(url, json={"points": [[1, 1]], "colour": "red"}), 422, "invalid_request")
    # no coercion: a string or a boolean is not a coordinate, "yes" is not a boolean
    assert_error(client.post(url, json={"points": [["1", 2]]}), 422, "invalid_request")
    assert_error(client.post(url, json={"points": [[True, 2]]}), 422, "invalid_request")
    assert_error(client.post(url, json={"points": [[1, 1]], "multimask": "yes"}), 422, "invalid_request")
    assert_error(client.post(f"/images/{iid}/classify", json={"labels": []}), 422)
    assert_error(client.post(f"/images/{iid}/classify", json={"labels": ["  "]}), 422)
    assert_error(client.post(f"/images/{iid}/classify", json={"labels": ["\u200b\u200b"]}), 422)  # invisible
    assert_error(client.post(f"/images/{iid}/classify", json={"labels": ["a\u0000b"]}), 422)
    assert_error(client.post(f"/images/{iid}/semseg", json={"labels": "star"}), 422)
    assert_error(client.post(f"/images/{iid}/semseg", json={"refine": True, "crop_margin": 2}), 422)
    assert_error(client.post(f"/images/{iid}/semseg", json={"crop_margin": 0.5}), 422)  # needs refine
    assert_error(client.post(f"/images/{iid}/everything", json={"points_per_side": 1000}), 422)
    assert_error(client.post(f"/images/{iid}/classify", content=b"x" * ((1 << 20) + 1),
                             headers={"content-type": "application/json"}), 413, "payload_too_large")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert client.get("/health").json()["status"] == "ok"


def test_work_budget_bounds_semseg_and_everything(model_folder, scenes) -> None:  # noqa: ANN001
    """max_work_mb: semseg whose per-class scores would not fit is refused (413 too_much_work) before any work;
    everything returns at most as many masks as fit, and says how many that is. HEAD /health answers; an unknown
    long image id is not echoed whole."""
    image = np.ascontiguousarray(np.tile(scenes[0].image, (2, 3, 1)))  # 192 x 288
    pixels = image.shape[0] * image.shape[1]
    mb = 30 * pixels / 2**20  # 30 bytes a pixel: the coarse map's 7 float32 rows, or 15 bool masks
    with TestClient(create_app(str(model_folder), max_work_mb=mb)) as client:
        image_id = upload(client, image)["image_id"]
        ok = client.post(f"/images/{image_id}/semseg", json={"labels": list(SHAPES), "png": False})
        assert ok.status_code == 200, ok.text  # the coarse map: a few classes at a time, whatever their number
        body = assert_error(client.post(f"/images/{image_id}/semseg", json={"labels": list(SHAPES[:8]),
                                                                           "refine": True}), 413, "too_much_work")
        assert "semseg into 8 labels (refined)" in body["detail"] and "max_work_mb" in body["detail"]
        r = client.post(f"/images/{image_id}/everything", json={"max_masks": 100, "pred_iou_thresh": 0.0,
                                                                "stability_score_thresh": 0.0, "png": False})
        assert r.status_code == 200, r.text
        assert r.json()["max_masks"] == 15 and r.json()["count"] <= 15
        r = client.post(f"/images/{image_id}/everything", json={"max_masks": 3, "png": False})
        assert r.json()["max_masks"] == 3
        assert client.head("/health").status_code == 200
        nested = '{"points":' + "[" * 5000 + "]" * 5000 + "}"
        assert_error(client.post(f"/images/{image_id}/predict", content=nested,
                                 headers={"Content-Type": "application/json"}), 422, "malformed_json")
        detail = assert_error(client.post(f"/images/{'x' * 5000}/classify", json={}), 404)["detail"]
        assert len(detail) < 400 and "5000 characters" in detail


def test_serve_on_a_taken_port_is_one_line(model_folder, capsys) -> None:  # noqa: ANN001
    import socket

    from samclip.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--model", str(model_folder), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot listen there" in err, err
    assert "choose another --port" in err
    # an address this machine does not have: the host is named as the problem, not the port
    assert main(["serve", "--model", str(model_folder), "--host", "192.0.2.1", "--port", "8799"]) == 2
    err = capsys.readouterr().err
    assert "--host 192.0.2.1: not an address of this machine" in err and "--port" not in err, err


def test_serve_start_up_line_and_loopback_warning() -> None:
    from samclip.cli_tasks import _is_loopback, _url

    assert _url("::1", 8000) == "http://[::1]:8000/" and _url("127.0.0.1", 80) == "http://127.0.0.1:80/"
    assert "free port" in _url("127.0.0.1", 0)
    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_pillows_own_bomb_guard_follows_a_larger_max_pixels(monkeypatch) -> None:
    """max_pixels above twice Pillow's guard: images between the two are read (Pillow refused them first, quoting
    its own limit); above max_pixels our message names our limit."""
    from PIL import Image as PILImage

    from samclip.serve.images import ImageTooLarge, read_image

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # the guard: refuse over 2000 pixels
    data = png_bytes(np.zeros((50, 60, 3), np.uint8))  # 3000 pixels
    assert read_image(data, 5000).shape == (50, 60, 3)
    with pytest.raises(ImageTooLarge, match="the limit of 2800"):
        read_image(data, 2800)


def test_lru_eviction(client, scenes) -> None:  # noqa: ANN001
    ids = [upload(client, sc.image)["image_id"] for sc in scenes]  # cache_size=2
    body = assert_error(client.post(f"/images/{ids[0]}/classify", json={}), 404, "image_not_found")
    assert "upload it again" in body["detail"]
    for iid in ids[1:]:
        assert client.post(f"/images/{iid}/classify", json={}).status_code == 200
    again = upload(client, scenes[0].image)
    assert again["image_id"] == ids[0] and again["cached"] is False
    assert client.post(f"/images/{ids[0]}/classify", json={}).status_code == 200
    assert client.delete(f"/images/{ids[0]}").json()["deleted"] is True
    assert_error(client.get(f"/images/{ids[0]}"), 404, "image_not_found")


def test_cache_unit() -> None:
    cache = ImageCache(2)
    for k in "abc":
        cache.put(k, object(), 1, 1)
    assert "a" not in cache and cache.get("b") is not None and cache.evictions == 1
    cache.put("d", object(), 1, 1)  # "c" is now the least recently used
    assert "c" not in cache and "b" in cache


def test_cache_bytes_follow_lazy_state(model_folder, scenes) -> None:  # noqa: ANN001
    """An entry's bytes are measured when the cache bounds itself, not only at insertion: a prompt decode
    adds the decoder's first-layer cache to the image state, and the byte bound must see it."""
    pred = samclip.Predictor(samclip.load_model(str(model_folder)))
    pred.set_image(scenes[0].image)
    cache = ImageCache(4)
    entry = cache.put("a", pred.state, 1, 1)
    before = entry.nbytes
    pred.predict(point_coords=np.array([[10.0, 12.0]]), point_labels=np.array([1]))
    grown = sum(state_nbytes(view) for view in pred.state.decoder.values())
    assert grown > 0 and entry.nbytes == before + grown == cache.nbytes


def test_cache_bytes_count_shared_memory_once() -> None:
    """Views, a NumPy array over a tensor's memory and a tensor held twice count once (tta on a large image
    reported 518 MB for 210 MB of memory, so images were evicted early)."""
    t = torch.zeros(1000, 250)  # 1,000,000 bytes
    a = np.zeros((500, 500), np.uint8)  # 250,000 bytes
    state = {"t": t, "again": t, "view": t[10:20], "numpy": t.numpy(), "a": a, "rows": [a[:100], a.T]}
    assert state_nbytes(state) == 1_000_000 + 250_000
    assert state_nbytes({"x": torch.zeros(10), "y": torch.zeros(10)}) == 80  # distinct buffers add up


# ------------------------------------------------------------------------------------ concurrency
def test_timeout_and_event_loop_not_blocked(model_folder, scenes) -> None:  # noqa: ANN001
    app = create_app(str(model_folder), request_timeout_s=0.5)
    svc = app.state.service
    real = svc.predictor.classify
    release = threading.Event()

    def slow_classify(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        release.wait(5)
        return real(*args, **kwargs)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as c:
            r = await c.post("/images", files={"file": ("s.png", png_bytes(scenes[0].image), "image/png")})
            iid = r.json()["image_id"]
            svc.predictor.classify = slow_classify
            slow = asyncio.create_task(c.post(f"/images/{iid}/classify", json={}))
            await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            health = await c.get("/health")  # answered while the model is busy
            assert health.status_code == 200 and time.perf_counter() - t0 < 0.3
            assert health.json()["model_busy"] is True
            assert_error(await slow, 504, "timeout")
            release.set()
            svc.predictor.classify = real
            for _ in range(50):  # the abandoned job finishes in the background, then the model is free again
                r = await c.post(f"/images/{iid}/classify", json={"labels": ["star", "ring"]})
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text

    asyncio.run(scenario())
    svc.executor.shutdown(wait=True)


def test_timed_out_task_stops_at_its_next_batch_and_frees_the_model(model_folder, scenes) -> None:  # noqa: ANN001
    """A running everything-mode request that times out stops at its next prompt batch (it used to run all its
    batches, holding the model for every later request); the next request then gets the model at once."""
    app = create_app(str(model_folder), request_timeout_s=0.5)
    svc = app.state.service
    real = svc.predictor._decode
    calls = []

    def slow_decode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(time.perf_counter())
        time.sleep(0.2)
        return real(*args, **kwargs)

    with TestClient(app) as c:
        iid = c.post("/images", files={"file": ("s.png", png_bytes(scenes[0].image), "image/png")}).json()["image_id"]
        svc.predictor._decode = slow_decode
        # 32 x 32 points in batches of 64: 16 decodes, 3.2 s of work uninterrupted
        assert_error(c.post(f"/images/{iid}/everything", json={"points_per_side": 32, "png": False}), 504, "timeout")
        assert svc.lock.acquire(timeout=2)  # free within a batch or two of the timeout
        svc.lock.release()
        svc.predictor._decode = real
        assert 2 <= len(calls) <= 5, len(calls)
        r = c.post(f"/images/{iid}/everything", json={"points_per_side": 4, "png": False})
        assert r.status_code == 200, r.text
    svc.executor.shutdown(wait=True)


def test_api_key_guards_everything_but_the_page_health_and_spec(model_folder, scenes) -> None:  # noqa: ANN001
    app = create_app(str(model_folder), api_key="s3cret", cache_size=2)
    with TestClient(app) as c:
        for path in ("/", "/health", "/openapi.json", "/static/app.js"):
            assert c.get(path).status_code == 200, path
        body = assert_error(c.get("/info"), 401, "unauthorized")
        assert "Authorization: Bearer" in body["detail"]
        assert c.get("/info").headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/info", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(c.get("/info", headers={"X-API-Key": "s3cre"}), 401, "unauthorized")
        assert c.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        data = png_bytes(scenes[0].image)
        assert_error(c.post("/images", files={"file": ("s.png", data, "image/png")}), 401, "unauthorized")
        r = c.post("/images", files={"file": ("s.png", data, "image/png")}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200
        image_id = r.json()["image_id"]
        prompt = {"points": [[40, 40]], "point_labels": [1]}
        assert_error(c.post(f"/images/{image_id}/predict", json=prompt), 401, "unauthorized")
        assert c.post(f"/images/{image_id}/predict", json=prompt,
                      headers={"Authorization": "bearer s3cret"}).status_code == 200
    with pytest.raises(ValueError, match="API key"):
        create_app(str(model_folder), api_key=" padded ")


def test_serve_cli_reads_its_api_key_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from samclip.cli_tasks import API_KEY_ENV, TaskInputError, _api_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert _api_key(None) is None
    monkeypatch.setenv(API_KEY_ENV, " from-env ")
    assert _api_key(None) == "from-env"
    (tmp_path / "key").write_text("from-file\nignored\n")
    assert _api_key(str(tmp_path / "key")) == "from-file"
    (tmp_path / "bom").write_bytes("\ufefffrom-file\n".encode())  # saved by an editor that writes a BOM
    assert _api_key(str(tmp_path / "bom")) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TaskInputError, match="first line is empty"):
        _api_key(str(tmp_path / "empty"))
    with pytest.raises(TaskInputError, match="cannot read it"):
        _api_key(str(tmp_path / "missing"))


def test_overlay_blends_each_class_and_draws_its_contour(monkeypatch) -> None:  # noqa: ANN001
    """A 4x4 block of a legend class: its 12 border pixels in the class colour, its 2x2 inside blended with the
    image; a class without a legend entry and the background untouched. Row stripes give the same picture."""
    import samclip.serve.render as render
    from samclip.serve.tasks import TaskResult

    image = np.full((60, 80, 3), 100, np.uint8)
    lm = np.zeros((60, 80), np.int64)
    lm[40:44, 60:64] = 1
    lm[50:, :4] = 2  # no legend entry
    res = TaskResult({}, lm, [{"id": 1, "name": "a", "color": "#ff0000", "area": 16}])
    out = np.array(Image.open(io.BytesIO(render.render_overlay(image, res))))
    block = out[40:44, 60:64]
    border = np.ones((4, 4), bool)
    border[1:3, 1:3] = False
    assert (block[border] == [255, 0, 0]).all()
    assert (block[~border] == [int(100 * 0.45 + 255 * 0.55), int(100 * 0.45), int(100 * 0.45)]).all()
    outside = np.ones((60, 80), bool)
    outside[40:44, 60:64] = False
    outside[:20] = False  # the legend's text box
    assert (out[outside] == 100).all()
    monkeypatch.setattr(render, "_STRIPE_ROWS", 41)  # a stripe boundary through the block
    assert np.array_equal(np.array(Image.open(io.BytesIO(render.render_overlay(image, res)))), out)
