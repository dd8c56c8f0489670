"""The shared fault of the trigger tests: a request the server carried out, whose response was lost.

This is what a read timeout, a reset connection or a 5xx after the write looks like to a client, in AWS: the request
took effect, the caller does not know it, and botocore's standard retry mode sends it again. A conditional write then
fails its own condition; a call without an idempotency token (EMR's AddJobFlowSteps, RunJobFlow) acts twice.

How it is modelled, for in-process moto (``mock_aws``): moto answers requests from a ``before-send`` handler registered
on the generic event when the client is made. botocore calls the handlers of a more specific event name
(``before-send.emr.AddJobFlowSteps``) *before* the generic ones, so a hook on the specific name would raise before moto
ran anything. This hook is registered on the generic ``before-send`` with ``register_last``, after moto's, and filters
the operation itself: moto has carried out the request when it raises ``ReadTimeoutError``. botocore sees no response
and, where it may, sends the request again (which moto carries out again, as AWS would).

What it cannot show: how often this happens in AWS, and DynamoDB's or EMR's behaviour under the repeated request beyond
what moto models (moto evaluates conditions and keys as documented, and never merges two RunJobFlow calls).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from botocore.exceptions import ReadTimeoutError


@dataclass
class LostResponses:
    """Lose the response of ``times`` requests of ``operation`` (``"emr.AddJobFlowSteps"``) whose body contains every
    string of ``body_contains``, after letting the first ``skip`` of them through; count the requests that matched."""

    operation: str
    times: int = 1
    body_contains: tuple[str, ...] = ()
    skip: int = 0
    lost: int = 0
    matched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def install(self, *clients) -> LostResponses:
        for client in clients:
            client.meta.events.register_last("before-send", self._after_the_server_answered)
        return self

    def _after_the_server_answered(self, request, event_name: str, **_) -> None:
        service, operation = self.operation.split(".")
        if event_name != f"before-send.{service}.{operation}" or not self._body_matches(request):
            return None
        with self._lock:
            self.matched += 1
            if self.matched <= self.skip or self.lost >= self.times:
                return None
            self.lost += 1
        raise ReadTimeoutError(endpoint_url=request.url)

    def _body_matches(self, request) -> bool:
        body = request.body
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        return all(part in text for part in self.body_contains)


def lose_response(
    handler, operation: str, *, times: int = 1, body_contains: tuple[str, ...] = (), skip: int = 0
) -> LostResponses:
    """Install a :class:`LostResponses` on every client of a trigger handler module that serves ``operation``."""
    service = operation.split(".")[0]
    clients: dict[str, list] = {
        "dynamodb": [handler.dynamodb_client],
        "s3": [handler.s3_client],
        "emr": [handler.emr_client, handler.emr_submit_client],
        "sns": [handler.sns_client],
        "sqs": [handler.sqs_client],
    }
    faults = LostResponses(operation=operation, times=times, body_contains=body_contains, skip=skip)
    return faults.install(*clients[service])


