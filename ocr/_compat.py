"""Import-time workaround so ``torchvision`` (and therefore ``timm`` and ``lightning``)
imports on a CPU-only torch build.

``torchvision==0.28.0`` is the only release pinned to ``torch==2.13.0`` and it is a CUDA
build. Its Python side registers fake kernels for ``torchvision::nms`` at import time, which
fails with ``operator torchvision::nms does not exist`` when its compiled extension cannot be
loaded against the CPU torch. Declaring the two operator schemas first lets the Python side
import. The compiled ops (nms, roi_align, deform_conv, image decoding) stay unusable, and this
project never calls them. On a regular CUDA install the extension loads and nothing here runs.
"""

from __future__ import annotations

import sys

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_library = None  # kept alive for the life of the process: dropping it unregisters the schemas


def ensure_torchvision_importable() -> None:
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return
    import torch

    if torch.version.cuda is not None:
        return
    try:
        if hasattr(torch.ops.torchvision, "nms"):
            return
    except (AttributeError, RuntimeError):
        pass
    try:
        import torchvision  # noqa: F401  # fine if its extension loads on this build

        return
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms" + _NMS_SCHEMA)
    _library.define("qnms" + _NMS_SCHEMA)
