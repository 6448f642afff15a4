"""Where a module's weights live."""

from __future__ import annotations

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (samclip models keep all of them on one device)."""
    return next(model.parameters()).device
