"""The status an error class carries: named in its header, inherited when not named."""

from __future__ import annotations

import pytest

from confserve import attestation, cluster, provisioning, replica, serving
from confserve.cluster._containers import ContainersError
from confserve.cluster._dashboard import MetricsError
from confserve.cluster._processes import LockBusyError
from confserve.errors import ConfserveError, Status


def test_a_subclass_names_its_status_in_its_header() -> None:
    class Root(ConfserveError, status=Status.NOT_FOUND):
        pass

    class Child(Root):
        pass

    class Other(Root, status=Status.UNAVAILABLE):
        pass

    assert ConfserveError.status is Status.INTERNAL
    assert Root.status is Status.NOT_FOUND
    assert Child.status is Status.NOT_FOUND
    assert Child("x").status is Status.NOT_FOUND
    assert Other.status is Status.UNAVAILABLE
    assert Root.status is Status.NOT_FOUND  # a subclass does not change its parent


def test_an_unknown_class_keyword_is_refused() -> None:
    with pytest.raises(TypeError):

        class Bad(ConfserveError, code=3):
            pass


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (attestation.AttestationError, Status.PERMISSION_DENIED),
        (attestation.QuoteFormatError, Status.INVALID_ARGUMENT),
        (attestation.VerificationError, Status.PERMISSION_DENIED),
        (attestation.PolicyError, Status.PERMISSION_DENIED),
        (provisioning.ProvisioningError, Status.INTERNAL),
        (provisioning.ProtocolError, Status.INVALID_ARGUMENT),
        (provisioning.TlsError, Status.UNAUTHENTICATED),
        (provisioning.RefusedError, Status.PERMISSION_DENIED),
        (provisioning.UnavailableError, Status.UNAVAILABLE),
        (provisioning.ConfigError, Status.INVALID_ARGUMENT),
        (provisioning.AuditLogError, Status.FAILED_PRECONDITION),
        (serving.ServingError, Status.INTERNAL),
        (serving.ConfigError, Status.INVALID_ARGUMENT),
        (serving.NotFoundError, Status.NOT_FOUND),
        (serving.InvalidInputError, Status.INVALID_ARGUMENT),
        (serving.ModelUnavailableError, Status.FAILED_PRECONDITION),
        (serving.FailedPreconditionError, Status.FAILED_PRECONDITION),
        (serving.UnimplementedError, Status.UNIMPLEMENTED),
        (serving.ResourceExhaustedError, Status.RESOURCE_EXHAUSTED),
        (serving.RequestTooLargeError, Status.INVALID_ARGUMENT),
        (serving.PermissionDeniedError, Status.PERMISSION_DENIED),
        (serving.LoadError, Status.INTERNAL),
        (replica.OptionsError, Status.INVALID_ARGUMENT),
        (replica.EnclaveError, Status.FAILED_PRECONDITION),
        (replica.ReplicaError, Status.FAILED_PRECONDITION),
        # The command line's exit code and message follow from a cluster error's status.
        (cluster.GramineError, Status.INVALID_ARGUMENT),
        (cluster.K8sError, Status.INVALID_ARGUMENT),
        (cluster.NginxError, Status.FAILED_PRECONDITION),
        (cluster.WorkspaceError, Status.FAILED_PRECONDITION),
        (ContainersError, Status.FAILED_PRECONDITION),
        (MetricsError, Status.INVALID_ARGUMENT),
        (LockBusyError, Status.UNAVAILABLE),
    ],
)
def test_package_errors_keep_their_statuses(error: type[ConfserveError], status: Status) -> None:
    assert error.status is status
    assert error("x").status is status
