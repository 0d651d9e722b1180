import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # `gpu` tests skip only when CUDA is absent, never unconditionally.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (absent on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
