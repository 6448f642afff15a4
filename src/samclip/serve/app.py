"""HTTP service: every task of a merged SAM-CLIP model behind a small JSON API, plus a web page at ``/``.

    app = create_app("tiny-synthetic", max_upload_mb=20, cache_size=16)
    uvicorn.run(app, host="127.0.0.1", port=8000)       # or: samclip serve --model tiny-synthetic

Flow: ``POST /images`` (multipart field ``file``) decodes the image, runs the backbone ONCE and caches
the result in an LRU keyed by ``image_id`` (a content hash: re-uploading the same bytes is free).
Every other call (``/images/{id}/predict``, ``/label``, ``/classify``, ``/semseg``, ``/segment_text``,
``/everything``) runs only the light heads on the cached state.

Coordinates are (x, y) pixels of the ORIGINAL uploaded image (after its EXIF orientation), boxes
XYXY; prompts outside ``0 <= x <= W, 0 <= y <= H`` are rejected with 422 (not clipped). Output masks
are COCO RLE (``{"size": [H, W], "counts": str}``), output boxes XYXY pixel edges (x1, y1 exclusive).
See :mod:`samclip.serve` for the shared conventions.

Errors are always JSON ``{"error": <code>, "detail": <message>}``:

===== ====================================================================================
400   ``invalid_image``: not an image, truncated or corrupt (``POST /images``)
404   ``image_not_found``: unknown or evicted ``image_id`` (upload it again); ``not_found``
413   ``payload_too_large``: upload over ``max_upload_mb``, JSON body over 1 MiB;
      ``image_too_large``: more than ``max_pixels`` pixels (checked from the header, before decoding);
      ``too_much_work``: a task whose full-size work would exceed ``max_work_mb`` (refined semseg: masks and
      scores per class, labels x pixels; everything: max_masks x pixels), checked before any work
422   ``malformed_json``, ``invalid_request`` (schema / value errors), ``invalid_prompt`` (prompt
      outside the image, bad labels), ``too_many_prompts`` (over ``max_prompts`` points + box, or labels)
504   ``timeout``: the request (queueing for the model included) took over ``request_timeout_s``
===== ====================================================================================

Concurrency: the event loop never runs the model. Decoding and inference run in a thread pool;
inference holds one lock around the model (torch modules are not re-entrant), so requests are
served one at a time on the model while uploads decode in parallel. A timed-out request returns 504
at once; if it has not reached the model yet it is dropped, otherwise its computation finishes in the
background (torch cannot be interrupted) and later requests queue behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..predictor.semantic import ARGMAX_CHUNK
from . import tasks
from .cache import CacheEntry, ImageCache
from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLarge, png_data_url, read_image
from .render import TaskResult
from .schemas import (
    ERROR_RESPONSES,
    ClassifyBody,
    ClassifyOut,
    EverythingBody,
    EverythingOut,
    ImageOut,
    LabelBody,
    LabelOut,
    PredictOut,
    PromptBody,
    SegmentTextBody,
    SegmentTextOut,
    SemsegBody,
    SemsegOut,
    UploadOut,
)
from .tasks import DEFAULT_VOCABULARY, PromptError, TooManyPrompts, check_labels, check_prompts

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_JSON_BYTES = 1 << 20  # request bodies other than uploads
_MULTIPART_SLACK = 64 << 10  # multipart headers around the uploaded file
_TEXT_CACHE_MAX = 4096  # bound the predictor's text-embedding cache (clients send arbitrary labels)
T = TypeVar("T")


# -------------------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with HTTP ``status``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class _Cancelled(Exception):
    """A job whose request already timed out (never reaches the client)."""


_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 504: "timeout"}


def _error(status: int, error: str, detail: Any, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


async def send_json_error(send: Any, status: int, error: str, detail: str,
                          headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request from a middleware, before the app: ``{"error", "detail"}`` with ``status``."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------ api key
OPEN_PATHS = ("/", "/health", "/docs", "/openapi.json")  # and /static/*: the page, liveness, the API's spec


class ApiKeyMiddleware:
    """With an API key, every request except :data:`OPEN_PATHS` and the page's static files must carry it, as
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (compared in constant time); otherwise 401."""

    def __init__(self, app: Any, api_key: str) -> None:
        if not api_key or api_key != api_key.strip():
            raise ValueError("the API key must be a non-empty string without surrounding spaces")
        self.app, self.key = app, api_key.encode()

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith("/static/") \
                or self._authorized(dict(scope.get("headers") or [])):
            await self.app(scope, receive, send)
            return
        await send_json_error(send, 401, "unauthorized", "this server needs its API key: send 'Authorization: "
                              "Bearer <key>' or 'X-API-Key: <key>'", [(b"www-authenticate", b"Bearer")])


# -------------------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_pixels: int
    max_prompts: int
    request_timeout_s: float
    max_work_bytes: int = 2048 << 20


class BodyLimitMiddleware:
    """Refuse request bodies over a limit (413) before they are parsed: from ``Content-Length`` at
    once, or while streaming (chunked uploads). ``POST /images`` gets the upload limit, others 1 MiB."""

    def __init__(self, app: Any, upload_limit: int, other_limit: int = MAX_JSON_BYTES) -> None:
        self.app, self.upload_limit, self.other_limit = app, upload_limit, other_limit

    async def _send_413(self, send: Any, limit: int) -> None:
        await send_json_error(send, 413, "payload_too_large", f"request body over the limit of {limit} bytes",
                              [(b"connection", b"close")])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") == "/images" and scope["method"] == "POST"
        limit = self.upload_limit + _MULTIPART_SLACK if upload else self.other_limit
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._send_413(send, limit)
            return
        received, exceeded, replied = 0, False, False

        async def limited_receive() -> Any:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise StarletteHTTPException(413, f"request body over the limit of {limit} bytes")
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal replied
            if exceeded:  # whatever the app answers after an overflow, the client gets our 413
                if not replied:
                    replied = True
                    await self._send_413(send, limit)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


# ------------------------------------------------------------------------------------------- service
class Service:
    """The model, its predictor, the image cache and the worker threads behind the endpoints."""

    def __init__(self, model: Any, source: str, limits: Limits, cache: ImageCache, *, bf16: bool,
                 vocabulary: tuple[str, ...], workers: int = 8, onnx_dir: Any = None,
                 templates: tuple[str, ...] | None = None) -> None:
        from ..predictor import Predictor

        self.model, self.source, self.limits, self.cache = model, source, limits, cache
        if onnx_dir is None:
            self.predictor = Predictor(model, bf16=bf16, templates=templates)
        else:
            self.predictor = Predictor(model, bf16=bf16, backend="onnx", onnx_dir=onnx_dir, templates=templates)
            self.predictor._onnx.open_graphs()  # noqa: SLF001 - a broken export fails at start-up, not per request
        self.onnx_dir = None if onnx_dir is None else os.fspath(onnx_dir)
        self.bf16, self.vocabulary = bf16, vocabulary
        self.lock = threading.Lock()
        # image decodes of parallel uploads, at most one per core: more only share the cores and hold more memory
        self.decodes = threading.BoundedSemaphore(max(1, min(workers, os.cpu_count() or 1)))
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samclip-serve")
        self.started = time.time()
        self.requests = 0
        self.timeouts = 0

    async def call(self, job: Callable[[threading.Event], T]) -> T:
        """Run ``job(cancelled)`` in the worker pool with the request timeout (504 when exceeded)."""
        cancelled = threading.Event()
        fut = asyncio.get_running_loop().run_in_executor(self.executor, job, cancelled)
        try:
            return await asyncio.wait_for(fut, self.limits.request_timeout_s)
        except TimeoutError:
            cancelled.set()
            self.timeouts += 1
            raise ApiError(504, "timeout", f"the request took longer than {self.limits.request_timeout_s:g} s "
                                           "(model queue included); try again or use a smaller request") from None

    def on_model(self, cancelled: threading.Event, fn: Callable[[Any], T], entry: CacheEntry | None = None) -> T:
        """Inside a job: ``fn(predictor)`` under the model lock, on ``entry``'s cached image."""
        with self.lock:
            if cancelled.is_set():
                raise _Cancelled
            if entry is not None:
                self.predictor.select(entry.state)
            try:  # a request that times out stops its work at the task's next batch and frees the model
                with self.predictor.interruptible(cancelled.is_set):
                    return fn(self.predictor)
            finally:
                cache = self.predictor._text_cache  # noqa: SLF001 - bounded here: labels come from clients
                if len(cache) > _TEXT_CACHE_MAX:
                    cache.clear()

    async def run_task(self, entry: CacheEntry, fn: Callable[[Any], TaskResult], png: bool) -> dict[str, Any]:
        """Run a task on a cached image; the PNG is encoded after the model lock is released."""

        def job(cancelled: threading.Event) -> dict[str, Any]:
            res = self.on_model(cancelled, fn, entry)
            out = dict(res.data)
            if res.label_map is not None:
                out["legend"] = res.legend
                out["label_map_png"] = png_data_url(res.label_map_png()) if png else None
            return out

        return await self.call(job)

    def check_work(self, entry: CacheEntry, what: str, per_pixel: int) -> None:
        """413 ``too_much_work`` where a task's full-size outputs, ``per_pixel`` bytes per image pixel, would
        exceed ``max_work_bytes`` (checked before the task runs)."""
        need = per_pixel * entry.width * entry.height
        if need > self.limits.max_work_bytes:
            raise ApiError(413, "too_much_work",
                           f"{what} on this {entry.width}x{entry.height} image needs about {need / 2**20:.0f} MB "
                           f"(the server's limit: {self.limits.max_work_bytes / 2**20:.0f} MB, max_work_mb); ask "
                           "for less or upload a smaller image")

    def entry(self, image_id: str) -> CacheEntry:
        entry = self.cache.get(image_id)
        if entry is None:
            shown = image_id if len(image_id) <= 80 else f"{image_id[:64]}... ({len(image_id)} characters)"
            raise ApiError(404, "image_not_found",
                           f"unknown image id {shown!r}: never uploaded, or evicted from the cache of "
                           f"{self.cache.max_items} images; upload it again with POST /images")
        return entry

    def prompts(self, body: PromptBody, entry: CacheEntry) -> dict[str, Any]:
        return check_prompts(body.points, body.point_labels, body.box, (entry.height, entry.width),
                             max_prompts=self.limits.max_prompts)

    def labels(self, labels: list[str] | None, what: str = "labels", default: bool = True) -> list[str] | None:
        if labels is None:  # the server's own vocabulary is exempt from max_prompts
            return list(self.vocabulary) if default else None
        return check_labels(labels, max_labels=self.limits.max_prompts, what=what,
                            default=self.vocabulary if default else None)

    def info(self) -> dict[str, Any]:
        m = self.model
        cfg = m.config.to_dict()
        enc = cfg["sam"]["image_encoder"]
        return {
            "model": self.source, "model_class": type(m).__name__,
            "parameters": int(sum(p.numel() for p in m.parameters())),
            "device": str(self.predictor.device), "dtype": "bf16" if self.bf16 else "fp32",
            "backend": self.predictor.backend, "onnx_dir": self.onnx_dir,
            "img_size": int(m.img_size), "patch_size": int(enc["patch_size"]), "grid": m.img_size // enc["patch_size"],
            "embed_dim": enc["embed_dim"], "depth": enc["depth"], "mask_threshold": float(m.mask_threshold),
            "text": {k: cfg["text"][k] for k in ("context_length", "width", "layers", "vocab_size")},
            "clip_head": cfg["head"], "clip_size": cfg.get("clip_size"), "semseg_size": cfg.get("semseg_size"),
            "vocabulary": list(self.vocabulary), "templates": list(self.predictor.templates),
            "limits": asdict(self.limits), "cache": self.cache.info(),
            "coordinates": "(x, y) original-image pixels; boxes XYXY; masks COCO RLE",
            "config": cfg,
        }


def _load(model_source: Any, device: str | None) -> tuple[Any, str]:
    from ..models import SamClip

    if isinstance(model_source, SamClip):
        model = model_source.eval()
        if device is not None:
            model.to(device)
        return model, f"<{type(model_source).__name__} object>"
    from ..factory import load_model

    return load_model(model_source, device=device), os.fspath(model_source)


# ----------------------------------------------------------------------------------------------- app
def create_app(
    model_source: Any = "tiny-synthetic",
    *,
    max_upload_mb: float = 20.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_prompts: int = 64,
    cache_size: int = 16,
    cache_max_mb: float | None = 4096.0,
    request_timeout_s: float = 60.0,
    max_work_mb: float = 2048.0,
    device: str | None = None,
    bf16: bool = False,
    vocabulary: tuple[str, ...] | list[str] = DEFAULT_VOCABULARY,
    workers: int = 8,
    onnx_dir: Any = None,
    api_key: str | None = None,
    templates: tuple[str, ...] | list[str] | None = None,
) -> FastAPI:
    """Build the FastAPI app for a merged model (a registered name, a saved folder, or a SamClip object).

    Limits: ``max_upload_mb`` (upload bytes, 413), ``max_pixels`` (decompression-bomb guard from the
    image header, 413), ``max_prompts`` (points + box, or labels, per request; 422), ``cache_size``
    (images kept, LRU; also ``cache_max_mb`` of cached state), ``request_timeout_s`` (504), ``max_work_mb``
    (memory of a task's full-size work: refined semseg's masks and scores per class, 413; everything's masks, as
    many as fit).
    ``bf16``: bfloat16 autocast (default fp32: faster and exact on most CPUs). ``onnx_dir``: run the image
    and prompt graphs of that ONNX export of the model (``samclip export onnx``) with onnxruntime.
    ``api_key``: requests other than the page, ``/health`` and the API spec must carry it (401 otherwise; see
    :class:`ApiKeyMiddleware`). ``templates``: the zero-shot prompt templates of every text task (default: the
    model's).
    """
    model, source = _load(model_source, device)
    limits = Limits(int(max_upload_mb * (1 << 20)), int(max_pixels), int(max_prompts), float(request_timeout_s),
                    int(max_work_mb * (1 << 20)))
    if (limits.max_prompts < 1 or limits.max_pixels < 1 or limits.max_upload_bytes < 1 or limits.max_work_bytes < 1
            or not limits.request_timeout_s > 0 or not math.isfinite(limits.request_timeout_s)):  # NaN fails too
        raise ValueError(f"every limit must be positive: {limits}")
    cache = ImageCache(cache_size, None if cache_max_mb is None else int(cache_max_mb * (1 << 20)))
    svc = Service(model, source, limits, cache, bf16=bf16, vocabulary=tuple(vocabulary), workers=workers,
                  onnx_dir=onnx_dir, templates=None if templates is None else tuple(templates))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        svc.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="samclip", version="0.1.0", lifespan=lifespan,
        description="SAM-CLIP: every zero-shot task from one backbone pass per uploaded image. "
                    "Coordinates are (x, y) original-image pixels, boxes XYXY, masks COCO RLE. "
                    "Errors: JSON {error, detail}.",
    )
    app.state.service = svc
    app.add_middleware(BodyLimitMiddleware, upload_limit=limits.max_upload_bytes)
    if api_key is not None:
        ApiKeyMiddleware(None, api_key)  # a bad key fails here, not at the first request
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)  # added last: runs first

    # ---------------------------------------------------------------------------- error handlers
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's, e.g. JSON
            return _error(422, "malformed_json", "the request body could not be parsed (JSON nested too deeply?)")
        return _error(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(422, "malformed_json", "the request body is not valid JSON", errors=errors)
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return _error(422, "invalid_request", detail, errors=errors)

    def _message_handler(status: int, code: str):  # noqa: ANN202
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return _error(status, code, str(exc))

        return handle

    # errors whose message is the detail (Starlette picks the handler by walking the exception MRO)
    for exc_type, status, code in ((TooManyPrompts, 422, "too_many_prompts"), (PromptError, 422, "invalid_prompt"),
                                   (ImageTooLarge, 413, "image_too_large"), (ImageDecodeError, 400, "invalid_image"),
                                   (ValueError, 422, "invalid_request")):
        app.add_exception_handler(exc_type, _message_handler(status, code))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    # --------------------------------------------------------------------------------- endpoints
    @app.head("/health", include_in_schema=False)  # load balancers' health checks
    @app.get("/health", summary="liveness (never waits for the model)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "images": len(svc.cache), "model_busy": svc.lock.locked(),
                "uptime_s": round(time.time() - svc.started, 1)}

    @app.get("/info", summary="model configuration summary, limits and cache statistics")
    async def info() -> dict[str, Any]:
        return svc.info()

    @app.post("/images", response_model=UploadOut, responses=ERROR_RESPONSES,
              summary="upload an image (multipart field `file`); runs the backbone once and caches it")
    async def upload(file: Annotated[UploadFile, File(description="PNG / JPEG / WebP / ... image")]) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(413, "payload_too_large",
                           f"the upload is over the limit of {limits.max_upload_bytes} bytes ({max_upload_mb:g} MB)")
        image_id = hashlib.sha256(data).hexdigest()[:32]
        entry = svc.cache.get(image_id)
        if entry is not None:
            return {"image_id": image_id, "width": entry.width, "height": entry.height, "cached": True,
                    "seconds": time.perf_counter() - t0}

        def job(cancelled: threading.Event) -> CacheEntry:
            with svc.decodes:  # outside the model lock, at most one decode per core
                image = read_image(data, limits.max_pixels)
            state = svc.on_model(cancelled, lambda p: p.set_image(image))
            return svc.cache.put(image_id, state, image.shape[1], image.shape[0])

        entry = await svc.call(job)
        return {"image_id": image_id, "width": entry.width, "height": entry.height, "cached": False,
                "seconds": time.perf_counter() - t0}

    @app.get("/images/{image_id}", response_model=ImageOut, responses=ERROR_RESPONSES, summary="a cached image's size")
    async def image_info(image_id: str) -> dict[str, Any]:
        e = svc.entry(image_id)
        return {"image_id": image_id, "width": e.width, "height": e.height}

    @app.delete("/images/{image_id}", responses=ERROR_RESPONSES, summary="drop a cached image")
    async def image_delete(image_id: str) -> dict[str, Any]:
        if svc.cache.pop(image_id) is None:
            svc.entry(image_id)  # raises the 404
        return {"image_id": image_id, "deleted": True}

    @app.post("/images/{image_id}/predict", response_model=PredictOut, responses=ERROR_RESPONSES,
              summary="SAM masks from points / box (original-image pixels, XYXY)")
    async def predict(image_id: str, body: PromptBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        prompts = svc.prompts(body, entry)
        return await svc.run_task(
            entry, lambda p: tasks.task_predict(p, prompts, multimask=body.multimask, zoom=body.zoom), body.png)

    @app.post("/images/{image_id}/label", response_model=LabelOut, responses=ERROR_RESPONSES,
              summary="the best mask of points / box prompts and its label from a vocabulary")
    async def label(image_id: str, body: LabelBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        prompts = svc.prompts(body, entry)
        labels = svc.labels(body.labels)
        return await svc.run_task(
            entry, lambda p: tasks.task_label(p, prompts, labels, multimask=body.multimask, pooling=body.pooling,
                                              tta=body.tta, zoom=body.zoom), body.png)

    @app.post("/images/{image_id}/classify", response_model=ClassifyOut, responses=ERROR_RESPONSES,
              summary="zero-shot classification of the whole image")
    async def classify(image_id: str, body: ClassifyBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        labels = svc.labels(body.labels)
        return await svc.run_task(entry, lambda p: tasks.task_classify(p, labels, tta=body.tta), False)

    @app.post("/images/{image_id}/semseg", response_model=SemsegOut, responses=ERROR_RESPONSES,
              summary="semantic segmentation into labels + background (palette PNG + legend)")
    async def semseg(image_id: str, body: SemsegBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        labels = svc.labels(body.labels)
        # float32 per pixel: the coarse map a few classes at a time; refinement ~3 masks per class and a map per class
        per_pixel = 16 * (len(labels) + 1) if body.refine else 4 * (ARGMAX_CHUNK + 3)
        svc.check_work(entry, f"semseg into {len(labels)} labels{' (refined)' if body.refine else ''}", per_pixel)
        return await svc.run_task(entry, lambda p: tasks.task_semseg(p, labels, refine=body.refine,
                                                                   crop_margin=body.crop_margin), body.png)

    @app.post("/images/{image_id}/segment_text", response_model=SegmentTextOut, responses=ERROR_RESPONSES,
              summary="instances of a phrase")
    async def segment_text(image_id: str, body: SegmentTextBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        vocab = svc.labels(body.vocabulary, "vocabulary", default=False)
        return await svc.run_task(
            entry, lambda p: tasks.task_segment_text(p, body.phrase, vocabulary=vocab, threshold=body.threshold,
                                                     verify=body.verify, candidates=body.candidates), body.png)

    @app.post("/images/{image_id}/everything", response_model=EverythingOut, responses=ERROR_RESPONSES,
              summary="every mask from a point grid, optionally labelled")
    async def everything(image_id: str, body: EverythingBody) -> dict[str, Any]:
        entry = svc.entry(image_id)
        labels = svc.labels(body.labels, default=False)
        # full-size bool masks, held twice at most (the records and their labelling / painting): as many as fit
        max_masks = min(body.max_masks, svc.limits.max_work_bytes // (2 * entry.width * entry.height))
        svc.check_work(entry, "everything (even one mask)", 2 * max(max_masks, 1))
        out = await svc.run_task(entry, lambda p: tasks.task_everything(
            p, labels, points_per_side=body.points_per_side, pred_iou_thresh=body.pred_iou_thresh,
            stability_score_thresh=body.stability_score_thresh, min_area=body.min_area,
            max_masks=max_masks, pooling=body.pooling, tta=body.tta, crop_n_layers=body.crop_n_layers), body.png)
        return {**out, "max_masks": max_masks}

    # -------------------------------------------------------------------------------- web page
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


__all__ = ["ApiError", "BodyLimitMiddleware", "ImageCache", "Limits", "Service", "create_app"]
