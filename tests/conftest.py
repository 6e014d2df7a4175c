from __future__ import annotations

import pytest

from edge.datasets.root import ENV_VAR, data_root


@pytest.fixture(scope="session")
def real_data():
    """The real-data root; the test is skipped, with the reason, when it is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set {ENV_VAR}); CI has it")
    return root


def real_subset(root, name):
    path = root / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
