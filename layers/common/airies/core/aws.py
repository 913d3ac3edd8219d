"""The container's AWS SDK session: the readers of Secrets Manager and Parameter Store, and what a SnapStart
snapshot loads ahead.

boto3 is imported at first use only (the local stack and the tests mostly never need it). On Lambda, a container's
first database connection reads the database secret, and its first platform key the provider-keys secret: without
a snapshot that loads them ahead, that first request imports boto3 (70-190 ms), builds a session and a client
(about 130 ms: the endpoint rules and the service model) before any network call.

Both readers are Powertools Parameters providers (their cache, ``max_age`` and ``force_fetch``), built on clients
of boto3's default session, so they share the service models every other ``boto3.client(...)`` call of the
container loads (Powertools' own default providers each open a new session, ~45 ms apiece).
"""

from __future__ import annotations

from typing import Any

from airies.core.bootstrap import PerContainer, initializing_snapshot

# The service models a SnapStart function's snapshot loads into the default session besides the secret readers'
# (Secrets Manager, Parameter Store): those the API and the voice functions call in a request (provider keys,
# recordings, queues, live sessions, state machines, the invoice schedule).
SNAPSHOT_SERVICES = ("kms", "s3", "sqs", "dynamodb", "stepfunctions", "events")


def _secrets_reader() -> Any:
    import boto3
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider(boto3_client=boto3.client("secretsmanager"))


def _parameters_reader() -> Any:
    import boto3
    from aws_lambda_powertools.utilities.parameters import SSMProvider

    return SSMProvider(boto3_client=boto3.client("ssm"))


SECRETS = PerContainer(_secrets_reader)
PARAMETERS = PerContainer(_parameters_reader)


def secrets_provider() -> Any:
    """Secrets Manager, through Powertools' ``SecretsProvider`` (``get(name, transform=, max_age=, force_fetch=)``)."""
    return SECRETS.get()


def ssm_provider() -> Any:
    """Parameter Store, through Powertools' ``SSMProvider``."""
    return PARAMETERS.get()


def forget_providers() -> None:
    """Drop both readers and what they cached (tests that change the secrets between cases)."""
    SECRETS.set(None)
    PARAMETERS.set(None)


def prime_for_snapshot() -> None:
    """While SnapStart initializes a version (else nothing): import boto3, build both readers and load the service
    models of :data:`SNAPSHOT_SERVICES` too into the default session, so a restored container's first request does
    none of it. No request is sent to any service; the clients' credentials are the execution role's, from the
    runtime's credentials endpoint, which the SDK refreshes on its own after a restore (as the voice functions'
    clients built into their snapshot do)."""
    if not initializing_snapshot():
        return
    import boto3

    secrets_provider()
    ssm_provider()
    for service in SNAPSHOT_SERVICES:
        boto3.client(service)  # the default session's loader keeps the service model and the endpoint rules
