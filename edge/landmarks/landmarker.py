"""Run a PIPNet model (any runner: ONNX, TFLite, or training's torch wrapper) on face crops."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.landmarks.crop import apply_affine, crop_face, invert_affine
from edge.landmarks.pipnet_decode import HEAD_NAMES, decode_pipnet
from edge.runtime.preprocess import preprocess


class Landmarker:
    """68 landmarks from face crops. The model's metadata carries what decoding needs:

    ``extra.neighbours`` (L, C) neighbour table, ``extra.stride`` (input pixels per cell),
    and ``output_names``: the five PIPNet heads (decoded here), or one ``landmarks`` output
    (N, L, 2) in input pixels from a graph exported with its decoder inside.
    """

    def __init__(self, runner, batch_size: int = 16):
        self.runner = runner
        meta = runner.meta
        self.decoded_in_graph = tuple(meta.output_names) == ("landmarks",)
        missing = [h for h in HEAD_NAMES if h not in meta.output_names]
        if missing and not self.decoded_in_graph:
            raise ValueError(
                f"{meta.name}: not a PIPNet model: outputs {list(meta.output_names)} lack {missing} "
                "(or a single 'landmarks' output)"
            )
        try:
            self.neighbours = np.asarray(meta.extra["neighbours"], dtype=np.int64)
            self.stride = float(meta.extra["stride"])
        except KeyError as err:
            raise ValueError(f"{meta.name}: metadata field 'extra.{err.args[0]}' is missing") from None
        self.size = meta.input_size[0]
        self.batch_size = batch_size
        # Re-crops from its own points that the device makes with this model (measured when it
        # shipped: a model trained on detector-box jitter can hold its accuracy in one pass);
        # models from before the field: 1.
        self.refine = int(meta.extra.get("refine", 1))
        if self.refine < 0:
            raise ValueError(f"{meta.name}: metadata field 'extra.refine' must be >= 0, got {self.refine}")

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, L, 2) landmarks in crop pixels for uint8 BGR/gray crops of the model's input size."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            heads = self.runner.run(preprocess(crops[i : i + self.batch_size], self.runner.meta))
            if self.decoded_in_graph:
                out.append(heads["landmarks"].astype(np.float64))
            else:
                out.append(decode_pipnet(*(heads[h] for h in HEAD_NAMES), self.neighbours, self.stride))
        return np.concatenate(out) if out else np.zeros((0, len(self.neighbours), 2))

    def predict(self, image: np.ndarray, crop_boxes: Sequence[np.ndarray]) -> np.ndarray:
        """(N, L, 2) landmarks in image pixels, one face per square crop box."""
        crops, inverses = [], []
        for box in crop_boxes:
            crop, m = crop_face(image, box, self.size)
            crops.append(crop)
            inverses.append(invert_affine(m))
        pts = self.predict_crops(crops)
        return np.stack([apply_affine(p, inv) for p, inv in zip(pts, inverses)]) if len(pts) else pts
