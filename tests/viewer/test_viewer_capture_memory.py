"""The stage recorder frees the study's arrays when the job drops it (no reference cycle), so a
worker process does not keep every analysed study until the cyclic collector's rare full pass."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np

from cds.pipeline.quick_read import DEFAULT_STAGES
from cds.viewer.capture import StageRecorder


def test_a_dropped_recorder_and_its_arrays_are_freed_without_the_cyclic_collector() -> None:
    stages: Any = DEFAULT_STAGES
    recorder = StageRecorder(stages)  # wraps every model-backed stage (as the ANALYZE job does)
    image = np.zeros((16, 64, 64), dtype=np.float32)
    # The wrappers record what the (real) stage returned; call one with a stand-in inner stage.
    wrapped = recorder._wrap_labels(lambda masks, spacing: ("labelling", masks.shape))
    assert wrapped(image, (1.0, 1.0)) == ("labelling", image.shape)
    assert recorder.labelling == ("labelling", image.shape)
    recorder.masks = image  # type: ignore[assignment]
    alive = weakref.ref(recorder)
    gc.disable()
    try:
        del recorder, image
        assert alive() is None  # freed by reference counting alone
    finally:
        gc.enable()
    assert wrapped(np.zeros(1), (1.0, 1.0))[0] == "labelling"  # a wrapper outliving it still works
