"""Fixtures and parametrization shared by the kernel tests."""

import zlib

import numpy as np
import pytest


def pytest_generate_tests(metafunc):
    """Parametrizes `case`, `map_case` and `smoke_case` with a Battery subclass's own cases."""
    for name, attribute in (
        ("case", "cases"),
        ("map_case", "map_cases"),
        ("smoke_case", "smoke_cases"),
    ):
        if name in metafunc.fixturenames:
            cases = getattr(metafunc.cls, attribute)
            metafunc.parametrize(name, cases, ids=[c.name for c in cases])


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded by the test's id so that failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
