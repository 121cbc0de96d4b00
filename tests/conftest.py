"""Shared test setup: the tests' tensors are tiny, and on a small CPU several threads mostly wait
on each other over them (measured 10x slower with 2 threads while another job ran)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the flat top-level modules
torch.set_num_threads(1)
