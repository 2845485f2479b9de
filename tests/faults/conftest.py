"""The fault tier: each scenario's figures go into the resilience report (``tests/faults/report.py``)."""

from tests.faults.report import (
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    resilience,
)

__all__ = ["pytest_runtest_logreport", "pytest_runtest_makereport", "pytest_sessionfinish", "resilience"]
