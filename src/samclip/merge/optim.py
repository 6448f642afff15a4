"""The merge's optimizer: AdamW with weight decay on weight matrices only.

As in timm and open_clip, decay is not applied to biases, normalisation gains, position tables
(absolute and relative; modules list them in ``no_weight_decay()``, the timm contract), learned
tokens (``nn.Embedding`` weights: SAM's IoU / mask / point tokens) or scalars such as the logit scale.
Decaying those pulls a pretrained backbone's LayerNorm gains and positions towards zero for no benefit.
"""

from __future__ import annotations

import torch
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of ``model``'s parameters that take no weight decay (see the module docstring)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {dot + n for n in module.no_weight_decay()}
        if isinstance(module, nn.Embedding):
            names.add(dot + "weight")
    return names | {n for n, p in model.named_parameters() if p.ndim < 2}


def adamw_groups(model: nn.Module, groups: list[dict], weight_decay: float,
                 decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups`` (dicts with ``params`` and ``lr_mult``, parameters of ``model``), each split in
    two: the weight matrices with ``weight_decay`` and the rest (``no_decay_names``) without. Empty parts are
    dropped; every group keeps its ``lr_mult``. ``decay_all``: the groups as given, all with ``weight_decay``."""
    if decay_all:
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    names = no_decay_names(model)
    skip = {id(p) for n, p in model.named_parameters() if n in names}
    split = []
    for g in groups:
        for wd, keep in ((weight_decay, False), (0.0, True)):
            params = [p for p in g["params"] if (id(p) in skip) == keep]
            if params:
                split.append({**g, "params": params, "weight_decay": wd})
    return torch.optim.AdamW(split, weight_decay=weight_decay)
