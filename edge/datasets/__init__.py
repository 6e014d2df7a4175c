"""Readers for the real face datasets (numpy/OpenCV only).

They live in edge/ because the device-side tools (detector evaluation, threshold
calibration) read the same data as training does; training.data re-exports them.
"""

from edge.datasets.root import DataNotFoundError, DatasetFormatError, data_root, require_data_root

__all__ = ["DataNotFoundError", "DatasetFormatError", "data_root", "require_data_root"]
