"""Shared test setup: the tests' tensors are tiny, and on a small CPU several threads mostly wait
on each other over them (measured 10x slower with 2 threads while another job ran). train.main
sets the preset's run.threads (tiny: 2) for the process; each test starts again from one.
Tests marked `paper` (the paper preset end to end, minutes) run only with `pytest --paper`."""
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


def pytest_addoption(parser):
    parser.addoption("--paper", action="store_true", help="also run the paper preset end to end (minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "paper: the paper preset end to end; runs with --paper")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--paper"):
        return
    skip = pytest.mark.skip(reason="the paper preset end to end takes minutes: run pytest --paper (CI does)")
    for item in items:
        if item.get_closest_marker("paper"):
            item.add_marker(skip)
