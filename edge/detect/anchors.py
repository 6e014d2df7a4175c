"""SSD anchor generation for the BlazeFace detectors (MediaPipe's SSD anchor semantics).

Anchors are (N, 4) float32 rows [x_center, y_center, width, height], normalised to the model
input (0..1). Their order is the order of the model's output rows: feature maps from the
finest stride up, then row by row (y), column by column (x), then anchor by anchor within a
cell; consecutive layers with the same stride share one feature map and stack their anchors
per cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorOptions:
    input_width: int
    input_height: int
    num_layers: int
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False

    def __post_init__(self) -> None:
        if len(self.strides) != self.num_layers:
            raise ValueError(f"AnchorOptions: strides has {len(self.strides)} entries, num_layers is {self.num_layers}")

    @classmethod
    def from_dict(cls, data: dict, input_width: int, input_height: int) -> AnchorOptions:
        values = dict(data)
        for key in ("strides", "aspect_ratios"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(input_width=input_width, input_height=input_height, **values)


# BlazeFace short range (128x128, 896 anchors): a 16x16 map with 2 anchors per cell, then an
# 8x8 map shared by three stride-16 layers, 6 anchors per cell.
SHORT_RANGE = AnchorOptions(input_width=128, input_height=128, num_layers=4, strides=(8, 16, 16, 16))
# BlazeFace full range (192x192, 2304 anchors): one 48x48 map, 1 anchor per cell (no
# interpolated anchor).
FULL_RANGE = AnchorOptions(
    input_width=192,
    input_height=192,
    num_layers=1,
    strides=(4,),
    interpolated_scale_aspect_ratio=0.0,
)


def _scale(options: AnchorOptions, layer: int) -> float:
    if options.num_layers == 1:
        return (options.min_scale + options.max_scale) / 2
    step = (options.max_scale - options.min_scale) / (options.num_layers - 1)
    return options.min_scale + step * layer


def _cell_shapes(options: AnchorOptions, first: int, last: int) -> list[tuple[float, float]]:
    """(width, height) of the anchors in one cell for layers first..last (same stride)."""
    shapes = []
    for layer in range(first, last + 1):
        scale = _scale(options, layer)
        if layer == 0 and options.reduce_boxes_in_lowest_layer:
            pairs = [(1.0, 0.1), (2.0, scale), (0.5, scale)]
        else:
            pairs = [(ratio, scale) for ratio in options.aspect_ratios]
            if options.interpolated_scale_aspect_ratio > 0:
                # The extra anchor sits between this layer's scale and the next one's.
                following = 1.0 if layer == options.num_layers - 1 else _scale(options, layer + 1)
                pairs.append((options.interpolated_scale_aspect_ratio, math.sqrt(scale * following)))
        for ratio, s in pairs:
            root = math.sqrt(ratio)
            shapes.append((s * root, s / root))
    return shapes


def generate_anchors(options: AnchorOptions) -> np.ndarray:
    """All anchors for ``options`` as an (N, 4) float32 array [xc, yc, w, h] (see module doc)."""
    rows: list[np.ndarray] = []
    layer = 0
    while layer < options.num_layers:
        last = layer
        while last + 1 < options.num_layers and options.strides[last + 1] == options.strides[layer]:
            last += 1
        stride = options.strides[layer]
        shapes = _cell_shapes(options, layer, last)
        map_h = math.ceil(options.input_height / stride)
        map_w = math.ceil(options.input_width / stride)
        ys, xs = np.meshgrid(np.arange(map_h), np.arange(map_w), indexing="ij")
        centers_x = (xs.reshape(-1) + options.anchor_offset_x) / map_w
        centers_y = (ys.reshape(-1) + options.anchor_offset_y) / map_h
        per_cell = len(shapes)
        block = np.empty((map_h * map_w, per_cell, 4), dtype=np.float32)
        block[:, :, 0] = centers_x[:, None]
        block[:, :, 1] = centers_y[:, None]
        if options.fixed_anchor_size:
            block[:, :, 2:] = 1.0
        else:
            block[:, :, 2] = np.array([w for w, _ in shapes], dtype=np.float32)
            block[:, :, 3] = np.array([h for _, h in shapes], dtype=np.float32)
        rows.append(block.reshape(-1, 4))
        layer = last + 1
    return np.concatenate(rows, axis=0)
