"""The status each replica error carries (named in its class header)."""

from __future__ import annotations

import pytest

from confserve import replica
from confserve.errors import ConfserveError, Status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (replica.OptionsError, Status.INVALID_ARGUMENT),
        (replica.EnclaveError, Status.FAILED_PRECONDITION),
        (replica.ReplicaError, Status.FAILED_PRECONDITION),
    ],
)
def test_replica_errors_keep_their_statuses(error: type[ConfserveError], status: Status) -> None:
    assert error.status is status
    assert error("x").status is status
