"""The HTTP service's request and response bodies (pydantic): what ``/docs`` shows and every reply is checked
against. Coordinates are original-image pixels, boxes XYXY, masks COCO RLE (see :mod:`samclip.serve`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

Coord = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # a number: "1" and true are refused
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptBody(_Body):
    """SAM prompts in ORIGINAL-image pixels: points (x, y) with labels (1 foreground, 0 background,
    default all 1) and/or one XYXY box. Every coordinate must lie in ``[0, W] x [0, H]`` (422 otherwise)."""

    points: list[tuple[Coord, Coord]] | None = Field(None, description="(x, y) points, original-image pixels")
    point_labels: list[Literal[0, 1]] | None = Field(None, description="1 foreground / 0 background per point")
    box: tuple[Coord, Coord, Coord, Coord] | None = Field(None, description="XYXY box, original-image pixels")
    multimask: StrictBool = Field(True, description="three candidate masks (the best is reported as `best`)")
    zoom: StrictBool = Field(False, description="decode the prompts on a second backbone pass over the object's "
                                          "neighbourhood (3x the box's longer side; points alone: the box of their "
                                          "first mask), magnified: better masks of small objects")
    png: StrictBool = Field(False, description="also return the best mask as a palette-PNG data URL")


Pooling = Literal["auto", "max", "mean", "region", "crop", "max+crop", "zoom", "zoom+crop"]
POOLING_HELP = ("how a mask is labelled (Predictor.label_masks): auto / max / mean / region read the one cached pass; "
                "crop re-encodes the mask's crop (a small extra pass per mask, more accurate; PyTorch models only); "
                "zoom reads the mask on a pass over its neighbourhood, magnified (an extra pass per mask; the best "
                "click labels); max+crop / zoom+crop sum two reads (zoom+crop: the best box labels)")


TTA_HELP = ("also read the mirrored image (one extra backbone pass per image, cached) and, with the crop poolings, "
            "each crop's mirror image: better labels")


class LabelBody(PromptBody):
    labels: list[Text] | None = Field(None, description="vocabulary (default: the 12 scene-world shapes)")
    pooling: Pooling = Field("auto", description=POOLING_HELP)
    tta: StrictBool = Field(False, description=TTA_HELP)


class ClassifyBody(_Body):
    labels: list[Text] | None = Field(None, description="class names (default: the 12 scene-world shapes)")
    tta: StrictBool | None = Field(None, description="test-time augmentation (null: the model's own setting)")


class SemsegBody(_Body):
    labels: list[Text] | None = Field(None, description="class names (default: the 12 scene-world shapes)")
    refine: StrictBool = Field(False, description="compose with the SAM head: a mask per coarse-map point, "
                                            "each named by the CLIP head")
    crop_margin: float = Field(0.0, ge=0.0, le=1.0,
                               description="with refine: masks whose read is unsure by less than this "
                                           "probability margin are also read from their crops (extra passes)")
    png: StrictBool = True


class SegmentTextBody(_Body):
    phrase: Text
    vocabulary: list[Text] | None = Field(None, description="distractor classes competing with the phrase")
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    verify: StrictBool = Field(True, description="keep only masks the CLIP head's read over them names the phrase")
    candidates: Literal["regions", "everything"] = Field(
        "regions", description="regions: one mask per coarse-map region of the phrase (one pass); everything: every "
                               "everything-mode mask named by its zoomed read and its crop (more instances found, "
                               "slower; PyTorch models read the crops)")
    png: StrictBool = True


class EverythingBody(_Body):
    labels: list[Text] | None = Field(None, description="vocabulary to label every mask (omit: no labels)")
    points_per_side: int = Field(16, ge=2, le=64)
    pred_iou_thresh: float = Field(0.7, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.8, ge=0.0, le=1.0)
    min_area: int = Field(0, ge=0)
    max_masks: int = Field(100, ge=1, le=255)
    crop_n_layers: int = Field(0, ge=0, le=2, description="segment-anything's crop layers for smaller objects: layer "
                                                          "i re-encodes 4**i crops (a backbone pass each)")
    pooling: Pooling = Field("auto", description=POOLING_HELP)
    tta: StrictBool = Field(False, description=TTA_HELP)
    png: StrictBool = True


class Rle(BaseModel):
    size: list[int] = Field(description="[H, W]")
    counts: str = Field(description="COCO compressed RLE string (pycocotools)")


class MaskOut(BaseModel):
    segmentation: Rle
    area: int
    box: list[int] = Field(description="XYXY pixel edges (x1, y1 exclusive)")
    score: float | None = None
    predicted_iou: float | None = None
    stability_score: float | None = None
    point: list[float] | None = None
    label: str | None = None
    label_score: float | None = None


class LegendEntry(BaseModel):
    id: int = Field(description="index in label_map_png")
    name: str
    color: str
    area: int
    score: float | None = None


class _Prompts(BaseModel):
    points: list[list[float]] | None = None
    point_labels: list[int] | None = None
    box: list[float] | None = None


class _Visual(BaseModel):
    legend: list[LegendEntry] = []
    label_map_png: str | None = Field(None, description="palette PNG data URL; index 0 transparent")


class UploadOut(BaseModel):
    image_id: str
    width: int
    height: int
    cached: bool = Field(description="the same bytes were already cached (no backbone pass)")
    seconds: float


class ImageOut(BaseModel):
    image_id: str
    width: int
    height: int


class PredictOut(_Prompts, _Visual):
    masks: list[MaskOut]
    scores: list[float]
    best: int


class LabelOut(_Prompts, _Visual):
    mask: MaskOut
    label: str | None
    label_index: int
    label_score: float
    probs: dict[str, float]
    labels: list[str]


class Ranked(BaseModel):
    label: str
    prob: float


class ClassifyOut(BaseModel):
    labels: list[str]
    probs: list[float]
    top: str
    ranking: list[Ranked]


class Segment(MaskOut):
    id: int


class SemsegOut(_Visual):
    labels: list[str]
    refined: bool
    background_area: int
    segments: list[Segment]


class SegmentTextOut(_Visual):
    phrase: str
    instances: list[MaskOut]


class EverythingOut(_Visual):
    masks: list[MaskOut]
    count: int
    labels: list[str] | None
    max_masks: int = Field(description="the most masks this answer could hold: the request's max_masks, or fewer "
                                       "where the server's max_work_mb does not hold that many at this image's size")


class ErrorOut(BaseModel):
    error: str
    detail: Any


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 404, 413, 422, 504)
}
