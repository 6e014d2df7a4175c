"""Model files and how to run them: metadata, shared preprocessing, one runner interface."""

from edge.runtime.meta import (
    MetaError,
    ModelHashError,
    ModelMeta,
    Normalisation,
    file_sha256,
    load_meta,
    meta_from_dict,
    meta_path_for,
    save_meta,
    verify_sha256,
)
from edge.runtime.preprocess import preprocess
from edge.runtime.runner import (
    ModelFileError,
    ModelRunner,
    OnnxRunner,
    RuntimeMissingError,
    TFLiteRunner,
    dequantize,
    load_model,
    quantize,
)

__all__ = [
    "MetaError",
    "ModelFileError",
    "ModelHashError",
    "ModelMeta",
    "ModelRunner",
    "Normalisation",
    "OnnxRunner",
    "RuntimeMissingError",
    "TFLiteRunner",
    "dequantize",
    "file_sha256",
    "load_meta",
    "load_model",
    "meta_from_dict",
    "meta_path_for",
    "preprocess",
    "quantize",
    "save_meta",
    "verify_sha256",
]
