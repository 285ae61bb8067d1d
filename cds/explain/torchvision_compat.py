"""Make `import torchvision` work on CPU torch when torchvision's compiled ops cannot load.

Why: the only torchvision 0.28.0 wheel here is a CUDA build; its `_C.so` fails to load against the
CPU torch, and `import torchvision` then dies in `_meta_registrations.py`, which registers fake
kernels for `torchvision::nms` and `torchvision::qnms` -- operators that only `_C.so` defines.
transformers imports torchvision for its image utilities, so loading a *language* model breaks too.
Defining just those two operator schemas first lets torchvision's pure-Python parts import (all
that transformers and Grad-CAM use). When the real ops load, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_library: Any = None  # keeps the torch.library.Library (and so its definitions) alive


def ensure_torchvision_importable() -> None:
    """Idempotent; call before anything that may import torchvision (e.g. transformers models)."""
    global _library
    if "torchvision" in sys.modules:
        return
    with _lock:
        if _library is not None:
            return
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return
        import torch

        for lib_path in sorted(Path(spec.origin).parent.glob("_C*.so")):
            try:
                torch.ops.load_library(str(lib_path))
                return  # the real operators exist
            except OSError:
                break
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library = library
