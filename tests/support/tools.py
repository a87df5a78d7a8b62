"""What a test does when a tool it needs (chromium, the vCenter simulator, kubectl...) is
missing: skip on a laptop, fail under CI=true, so a CI image without the tool cannot pass by
skipping."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(what: str) -> NoReturn:
    """Skip the test because `what` is missing, or fail it under CI=true."""
    if under_ci():
        pytest.fail(f"{what} (CI=true: a missing tool fails instead of skipping)", pytrace=False)
    pytest.skip(what)
