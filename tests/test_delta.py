"""Delta helpers that need no Spark session."""

import delta.exceptions as dx
import pytest

from lakehouse.delta import with_retries
from lakehouse.errors import CommitConflictError


def test_commit_conflicts_are_retried_then_reported():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise dx.ConcurrentAppendException(message="files were added concurrently")
        return "committed"

    assert with_retries(flaky, "append", attempts=5, backoff=0) == "committed"
    assert len(calls) == 3

    def always():
        raise dx.ConcurrentTransactionException(message="same txnAppId committed")

    with pytest.raises(CommitConflictError, match="append to t: lost 2 commit conflicts"):
        with_retries(always, "append to t", attempts=2, backoff=0)

    def other():
        raise ValueError("not a conflict")

    with pytest.raises(ValueError):
        with_retries(other, "append", backoff=0)
