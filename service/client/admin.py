"""Administration from the client's side (``ChronicleClient.admin``): a
tenant's aggregates listed by id prefix, and forgotten by prefix once the
count is confirmed (docs/security.md, "Tenant offboarding")::

    async with ChronicleClient.connect(address, token=admin_token) as client:
        async for aggregate in client.admin.aggregates(prefix="acme:"):
            print(aggregate.aggregate_id, aggregate.forgotten)
        matching = await client.admin.count_to_forget(prefix="acme:")
        done = await client.admin.forget_aggregates(prefix="acme:", confirm=matching)
        print(done.forgotten, done.remaining)

Every call takes the admin grant. Listing is retried as any unary call is.
Forgetting is not retried by the client: it is long (a batch per
transaction) and its confirmation is of the count when it begins, so an
attempt cut short is followed by a new count (``count_to_forget``) and a
call confirming it, which finishes what the first left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from chronicle.v1 import admin_service_pb2 as pb
from chronicle.v1 import admin_service_pb2_grpc as pb_grpc
from service.client.errors import remote_error
from service.client.unary import UnaryCalls

ListedAggregate = pb.ListedAggregate
ForgottenAggregates = pb.ForgetAggregatesResponse

# A bulk forget is long: its deadline in seconds unless the caller gives one.
FORGET_DEADLINE = 600.0


class Admin(UnaryCalls[pb_grpc.AdminServiceStub]):
    """``AdminService``'s listing and bulk forgetting (``ChronicleClient.admin``)."""

    async def aggregates(
        self,
        *,
        prefix: str = "",
        aggregate_type: str = "",
        page_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> AsyncIterator[ListedAggregate]:
        """Every aggregate whose id starts with ``prefix`` (literally: "acme"
        takes "acme2:…" too), of ``aggregate_type`` if given, in code point
        order of ids, a page at a time (``page_size`` 0: 100; at most 1000).
        ``timeout``: seconds for the whole listing, its pages and their
        retries included (then ``DeadlineExceeded``)."""
        pages = self._pages(
            f"list aggregates under {prefix!r}",
            self._stub.ListAggregates,
            lambda token: pb.ListAggregatesRequest(
                prefix=prefix, aggregate_type=aggregate_type, page_size=page_size, page_token=token
            ),
            timeout,
        )
        async for page in pages:
            for aggregate in page.aggregates:
                yield aggregate

    async def count_to_forget(
        self,
        *,
        prefix: str = "",
        aggregate_ids: Sequence[str] = (),
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> int:
        """How many aggregates ``forget_aggregates`` would forget now (those
        with a live key): the server's answer to a call without confirmation.
        ``timeout``: seconds the call may take (not retried, as forgetting is
        not), then ``DeadlineExceeded``."""
        _check_timeout(timeout)
        try:
            await self._forget(pb.ForgetAggregatesRequest(prefix=prefix, aggregate_ids=aggregate_ids), timeout)
        except grpc.aio.AioRpcError as error:
            refused = remote_error(error)
            if refused.reason == "CONFIRMATION_REQUIRED" and "matching" in refused.metadata:
                return int(refused.metadata["matching"])
            raise refused from None
        raise AssertionError("a ForgetAggregates call without confirm is refused")  # pragma: no cover

    async def forget_aggregates(
        self,
        *,
        prefix: str = "",
        aggregate_ids: Sequence[str] = (),
        confirm: int,
        batch_size: int = 0,
        deadline: float | None = FORGET_DEADLINE,
        timeout: float | None = None,  # noqa: ASYNC109 (a DeadlineExceeded, as submit's)
    ) -> ForgottenAggregates:
        """Forget the aggregates under ``prefix`` (ending with a separator)
        or of ``aggregate_ids``, if ``confirm`` of them match: ``FailedPrecondition``
        CONFIRMATION_MISMATCH (``matching`` in its metadata) otherwise, nothing done.
        ``timeout`` (as every call's) or ``deadline`` (its older name, the
        default ``FORGET_DEADLINE``; None: no deadline): seconds the call may
        take, then ``DeadlineExceeded``; ``timeout`` wins when both are given."""
        _check_timeout(timeout)
        if timeout is not None:
            deadline = timeout
        request = pb.ForgetAggregatesRequest(
            prefix=prefix, aggregate_ids=aggregate_ids, confirm=confirm, batch_size=batch_size
        )
        try:
            return await self._forget(request, deadline)
        except grpc.aio.AioRpcError as error:
            raise remote_error(error) from None

    async def _forget(self, request: pb.ForgetAggregatesRequest, deadline: float | None) -> ForgottenAggregates:
        response: ForgottenAggregates = await self._stub.ForgetAggregates(
            request, timeout=deadline, metadata=self._metadata()
        )
        return response


def _check_timeout(timeout: float | None) -> None:
    """As ``CallDeadline`` checks every other call's ``timeout``."""
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be positive (None: no bound but the retries'), got {timeout}")
