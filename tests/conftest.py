"""Shared test setup: the tests' tensors are tiny, and on a small CPU several threads mostly wait
on each other over them (measured 10x slower with 2 threads while another job ran). train.main
sets the preset's run.threads (tiny: 2) for the process; each test starts again from one."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the flat top-level modules
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
