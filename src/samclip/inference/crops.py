"""Square crops of masked objects: the input of crop-and-classify labelling (OV-SAM's crop baseline,
and ``Predictor.mask_embeddings(pooling="crop")``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GREY = 128
#: how much bigger than the mask's bounding box a crop is: side = longer box side x (1 + CROP_PAD). Chosen on
#: val scenes (80 / 60 scenes, labels: the 12 shapes) for the CLIP teacher: with ground-truth masks 72.0% top-1
#: at 0.1, 83.6% at 0.3, 85.5% at 0.8, 86.0% at 1.2, 84.6% at 1.6; with the SAM teacher's masks of a click /
#: box 38.3 / 45.8% at 0.1 and 63.6 / 70.1% at 1.2. A tight crop blows the object up far beyond the sizes the
#: CLIP teacher saw whole; some grey context puts it back in its range.
CROP_PAD = 1.2


#: the largest crop canvas side resized directly; a larger one (an object thousands of pixels long) is first
#: reduced by area-averaging blocks of an integer factor, so a crop never costs more than about this side squared
MAX_CANVAS = 2048


def mask_crops(image: np.ndarray, masks: np.ndarray, size: int, pad: float = CROP_PAD) -> np.ndarray:
    """HxWx3 uint8 RGB image and NxHxW bool masks (original pixels) -> NxSxSx3 uint8 crops.

    Each crop is the square around the mask's bounding box (side = longer box side x (1 + ``pad``),
    default :data:`CROP_PAD`, centred on the box), pixels outside the mask set to grey, the part beyond the
    image edge grey too, resized to ``size`` x ``size`` (bilinear, antialiased). An empty mask gives an all-grey crop.
    Only the box's neighbourhood is read; a square of more than :data:`MAX_CANVAS` pixels a side is first
    reduced by area-averaging, so memory stays bounded however long the object.
    """
    h, w = image.shape[:2]
    crops = np.full((len(masks), size, size, 3), GREY, np.uint8)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cy, cx, half = (y0 + y1) / 2, (x0 + x1) / 2, max(y1 - y0, x1 - x0) * (1 + pad) / 2
        ya, yb = int(max(0, cy - half)), int(min(h, cy + half + 1))
        xa, xb = int(max(0, cx - half)), int(min(w, cx + half + 1))
        masked = np.where(m[ya:yb, xa:xb, None], image[ya:yb, xa:xb], np.uint8(GREY))
        side = int(2 * half) + 2
        oy, ox = (side - masked.shape[0]) // 2, (side - masked.shape[1]) // 2
        t = torch.from_numpy(masked).permute(2, 0, 1)[None].float()
        if side > MAX_CANVAS:  # area-average f x f blocks first (the canvas grey, so its pad averages to grey)
            f = -(-side // MAX_CANVAS)
            t = F.pad(t, (ox % f, -(ox + t.shape[-1]) % f, oy % f, -(oy + t.shape[-2]) % f), value=GREY)
            t = F.avg_pool2d(t, f)
            side, oy, ox = -(-side // f), oy // f, ox // f
        canvas = torch.full((1, 3, side, side), float(GREY))
        canvas[..., oy : oy + t.shape[-2], ox : ox + t.shape[-1]] = t[..., : side - oy, : side - ox]
        canvas = F.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        crops[k] = canvas[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
    return crops
