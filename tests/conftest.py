import os

import pytest
import torch

# One intra-op thread in the test process: the models are tiny, and on a 2-core machine
# shared with the worker processes some tests spawn, OpenMP threads spinning against
# each other turned a 1 s test into minutes.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # `gpu` tests skip only when CUDA is absent, never unconditionally.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (absent on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def postgres_url():
    """``$BENCH_TEST_POSTGRES_URL``, else a throwaway cluster for the module's tests."""
    url = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    from test_sweep_postgres import throwaway_cluster

    with throwaway_cluster() as started:
        yield started.url
