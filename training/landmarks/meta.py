"""The landmark model's metadata record, built once from the recipe and the training data."""

from __future__ import annotations

import numpy as np

from edge.landmarks.crop import LANDMARK_CROP_SCALE
from edge.landmarks.pipnet_decode import HEAD_NAMES
from edge.runtime.meta import ModelMeta, Normalisation
from training.landmarks.config import LandmarkTrainConfig

# The usual ImageNet statistics (RGB, 0..255): there are no pretrained weights here, but
# they centre real photos well and keep the exported input convention familiar.
IMAGENET = Normalisation(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def landmark_meta(
    cfg: LandmarkTrainConfig, neighbours: np.ndarray, mean_face: np.ndarray, name: str = "pipnet"
) -> ModelMeta:
    from training.nn.backbones import INPUT_NORMALISATION

    norm = INPUT_NORMALISATION.get(cfg.backbone)
    return ModelMeta(
        name=name,
        version="0.1.0",
        task="landmarks",
        format="onnx",
        precision="fp32",
        input_size=(cfg.input_size, cfg.input_size),
        input_layout="NCHW",
        color_order="RGB",
        normalisation=IMAGENET if norm is None else Normalisation(mean=norm[0], std=norm[1]),
        input_name="image",
        output_names=HEAD_NAMES,
        landmark_scheme="ibug68",
        extra={
            "architecture": "pipnet",
            "backbone": cfg.backbone,
            "backbone_options": dict(cfg.backbone_options),
            "stride": cfg.stride,
            "num_nb": cfg.num_nb,
            "neighbours": np.asarray(neighbours).tolist(),
            "mean_face": np.round(np.asarray(mean_face), 3).tolist(),
            "crop": {"policy": "square around the 68-point box", "scale": LANDMARK_CROP_SCALE},
        },
    )
