"""Shared test settings: few threads, no progress bars, deterministic seeds."""
import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("GDET_NO_PROGRESS", "1")
# Honour OMP_NUM_THREADS (the Makefile sets 2); on a loaded machine more threads than cores is 10x slower.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
