"""Make `torchvision` importable when its wheel was built for another torch (CUDA wheel on a CPU torch).

The torchvision wheel that pairs with torch 2.13.0 on PyPI is a CUDA build. With the CPU torch its import dies with
`operator torchvision::nms does not exist` because the compiled ops library does not load, and the Python side then
registers fake kernels for ops that were never defined. Defining the schemas of the two ops it touches at import time
(`nms`, `qnms`) lets the pure-Python parts (transforms, timm, transformers vision models) work; the compiled ops stay
unavailable. This only runs when the import actually fails, so working installs (GPU users) are untouched.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_MISSING_OP_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_patched = False


def ensure_torchvision_importable() -> bool:
    """Import `torchvision`, defining the missing op schemas first if (and only if) the plain import fails.

    Returns:
        `bool`: `True` when the schemas had to be defined (the compiled torchvision ops are unavailable).
    """
    global _patched
    if "torchvision" in sys.modules and not _patched:
        return False
    try:
        import torchvision  # noqa: F401

        return _patched
    except ImportError:
        return False  # torchvision not installed: nothing to do, callers that need it fail on their own
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    for op, signature in _MISSING_OP_SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{op}", signature)
        except RuntimeError:
            pass  # already defined by an earlier attempt
    import torchvision  # noqa: F401,F811

    _patched = True
    logger.info("torchvision's compiled ops are unavailable (wheel built for another torch); using its Python parts.")
    return True
