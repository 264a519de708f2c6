import os
import sys
from pathlib import Path

import pytest

# Inductor's on-disk cache of compiled graphs is keyed by the graph, not by the schema of our custom
# operators (xforget::pruned_fold, ...): a cache written by another checkout whose operator took other
# arguments fails here with "pruned_fold() expected at most 6 argument(s) but received 11". The suite keeps
# its own cache, one per checkout (set before torch is imported); TORCHINDUCTOR_CACHE_DIR overrides.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "inductor"))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

# One intra-op thread: the test models are tiny, and on a shared or loaded 2-core machine two OpenMP threads
# spin-wait on each other (a 150-step XTransformer fixture took 118 s with 2 threads, 4 s with 1, under load).
# Subprocesses started by the tests inherit OMP_NUM_THREADS. XFORGET_TEST_THREADS=N overrides.
_THREADS = int(os.environ.get("XFORGET_TEST_THREADS", "1"))
torch.set_num_threads(_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
