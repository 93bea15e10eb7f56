"""Shared test settings: few threads, no progress bars, deterministic seeds."""
import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("GDET_NO_PROGRESS", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
