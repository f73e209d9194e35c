"""pipeline/stage.py:teacher_threads: torch's threads are split from the decode workers' cores only
where idle OpenMP threads spin (torch imported before labelstore without OMP_WAIT_POLICY)."""

import subprocess
import sys

import pytest
import torch

import labelstore
from labelstore.pipeline.stage import teacher_threads, usable_cores


@pytest.mark.parametrize("passive", [True, False])
def test_split_only_where_openmp_threads_spin(monkeypatch, passive):
    monkeypatch.setattr(labelstore, "_OMP_PASSIVE", passive)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with teacher_threads(decode_workers=1) as n:
            assert n == torch.get_num_threads() == (3 if passive else max(1, usable_cores() - 1))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("order, env, passive", [
    ("import labelstore, torch", {}, True),  # labelstore first: its PASSIVE reaches OpenMP
    ("import torch, labelstore", {}, False),  # too late: OpenMP read no policy
    ("import torch, labelstore", {"OMP_WAIT_POLICY": "passive"}, True),  # the user's, read by OpenMP
    ("import labelstore, torch", {"OMP_WAIT_POLICY": "ACTIVE"}, False),  # the user's is kept
])
def test_passive_is_what_openmp_read(order, env, passive):
    import os

    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", f"{order}; print(labelstore._OMP_PASSIVE)"], env={**base, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == str(passive)
