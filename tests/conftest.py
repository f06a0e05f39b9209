"""Shared pytest set-up: markers for slow/cuda tests, quiet progress bars, the real meshes."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault('NSP_PROGRESS', '0')
ROOT = Path(__file__).resolve().parents[1]


def real_meshes_dir() -> Path | None:
    "`../shared/real_meshes` beside the checkout (CI has it), or $NSP_REAL_MESHES."
    p = Path(os.environ.get('NSP_REAL_MESHES', ROOT.parent / 'shared' / 'real_meshes'))
    return p if p.is_dir() else None


@pytest.fixture
def real_meshes() -> Path:
    p = real_meshes_dir()
    if p is None:
        if os.environ.get('CI'):
            pytest.fail('../shared/real_meshes is missing on CI')
        pytest.skip('../shared/real_meshes not found (set NSP_REAL_MESHES)')
    return p


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason='slow: set NSP_SLOW=1 to run')
    skip_cuda = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'slow' in item.keywords and os.environ.get('NSP_SLOW') != '1':
            item.add_marker(skip_slow)
        if 'cuda' in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
