import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Runs that fall back to ./runs write into the test's own folder."""
    monkeypatch.chdir(tmp_path)
