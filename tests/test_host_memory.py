"""train.retain_freed_memory: a buffer freed and allocated again is served from memory the process
kept, without faulting its pages in again (glibc); measured in a fresh process with getrusage."""

import subprocess
import sys

import pytest

from vlp.train.host_memory import _glibc

PROBE = """
import resource, sys, torch
from vlp.train.host_memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # the second call is a no-op that reports it is set
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(64 * 2 ** 20, dtype=torch.uint8)
    buffer.fill_(1)  # touches every page
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(8):  # glibc's aligned allocations settle on one place after a few rounds
    faults_of_one_round()
print(min(faults_of_one_round() for _ in range(3)))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc malloc options only")
def test_a_freed_buffer_is_reused_without_page_faults():
    pages = 64 * 2 ** 20 // 4096
    assert _faults("default") > pages // 2  # glibc unmaps a 64 MB block on free: every page faults again
    assert _faults("retain") < pages // 50  # kept: a few faults at most
