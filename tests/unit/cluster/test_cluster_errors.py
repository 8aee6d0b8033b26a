"""The status each cluster error carries (named in its class header): the command line's exit code and
message follow from it."""

from __future__ import annotations

import pytest

from confserve import cluster
from confserve.cluster._containers import ContainersError
from confserve.cluster._dashboard import MetricsError
from confserve.cluster._processes import LockBusyError
from confserve.errors import ConfserveError, Status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (cluster.GramineError, Status.INVALID_ARGUMENT),
        (cluster.K8sError, Status.INVALID_ARGUMENT),
        (cluster.NginxError, Status.FAILED_PRECONDITION),
        (cluster.WorkspaceError, Status.FAILED_PRECONDITION),
        (ContainersError, Status.FAILED_PRECONDITION),
        (MetricsError, Status.INVALID_ARGUMENT),
        (LockBusyError, Status.UNAVAILABLE),
    ],
)
def test_cluster_errors_keep_their_statuses(error: type[ConfserveError], status: Status) -> None:
    assert error.status is status
    assert error("x").status is status
