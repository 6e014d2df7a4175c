"""Dataset readers for training: the numpy-only readers of ``edge.datasets``, re-exported.

Training code imports them from here; they live in ``edge`` so device-side tools read the
data exactly as training does. ``python -m training.data check`` parses all of it.
"""

from edge.datasets.cfp import (
    CFP_FOLD_SIZE,
    CfpFold,
    CfpPhoto,
    available_folds,
    cfp_photos,
    cfp_root,
    fiducial_box,
    fold_identities,
    fold_pairs,
    read_fiducials,
    read_fold,
    read_pair_list,
)
from edge.datasets.lfw import LfwPair, LfwPairs, lfw_people, lfw_root, read_lfw_pairs
from edge.datasets.ljson import LandmarkGroup, read_ljson
from edge.datasets.orl import OrlPhoto, orl_photos, orl_root
from edge.datasets.pts import read_pts, write_pts
from edge.datasets.root import DataNotFoundError, DatasetFormatError, data_root, require_data_root
from edge.datasets.w300 import (
    CropInfo,
    Face300W,
    list_300w,
    load_landmarks,
    photo_id,
    read_crops,
    split_300w,
    w300_root,
)

__all__ = [
    "CFP_FOLD_SIZE",
    "CfpFold",
    "CfpPhoto",
    "CropInfo",
    "DataNotFoundError",
    "DatasetFormatError",
    "Face300W",
    "LandmarkGroup",
    "LfwPair",
    "LfwPairs",
    "OrlPhoto",
    "available_folds",
    "cfp_photos",
    "cfp_root",
    "data_root",
    "fiducial_box",
    "fold_identities",
    "fold_pairs",
    "lfw_people",
    "lfw_root",
    "list_300w",
    "load_landmarks",
    "orl_photos",
    "orl_root",
    "photo_id",
    "read_crops",
    "read_fiducials",
    "read_fold",
    "read_lfw_pairs",
    "read_ljson",
    "read_pair_list",
    "read_pts",
    "require_data_root",
    "split_300w",
    "w300_root",
    "write_pts",
]
