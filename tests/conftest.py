"""Shared test settings.

Tests use small tensors, where extra threads only add synchronisation; on a machine shared with
other jobs, OpenMP threads that outnumber the free cores make a step hundreds of times slower.
One thread keeps the suite fast and its timing predictable.
"""

import torch

torch.set_num_threads(1)
