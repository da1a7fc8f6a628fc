"""Commands per second, per principal: a token bucket each.

The quotas of the gate (``service.api.gate``) count calls in flight, and a
command stream is one call however many commands it carries: one principal
flooding a ``SubmitStreamPages`` took the workers from every other (a
unary client's p99 went from 9 ms to 705 ms). A bucket per principal counts
*commands*: refilled at its rate, holding at most its burst; a command
takes a token. A unary call (``Submit``, ``SubmitBatch``: a batch of N
takes N, all or none) finding too few is refused ``RESOURCE_EXHAUSTED``
``PRINCIPAL_RATE_LIMITED`` with the delay until they are there as
``RetryInfo``; a stream is slowed, not refused: its reader takes the tokens
of each message (a page of N: N) and waits out the debt before it starts
them, so the server reads the stream only as fast as the rate allows and
its client's flow control holds the rest.

The limit of a principal is the most generous of its roles' (the policy's
``commands_per_second`` and ``burst``), else the server's default
(``--max-commands-per-second-per-principal``); administrators have none,
and reactions' commands do not come through here.

A tenant's principals also share a bucket of the tenant's
(``--max-commands-per-second-per-tenant``, one second's worth at once), so
that one tenant's many principals (a JWT per user) cannot take the workers
from the other tenants: a command takes a token from both, a unary call
refused by either takes none (``TENANT_RATE_LIMITED`` for the tenant's), a
stream waits for the later of the two. The principal's tenant is the
policy's answer (``Authorizer.tenant_of``), worked out with its limit;
administrators and principals of no tenant share no bucket.

With ``--auth`` off every caller is the same anonymous one, and there is
none (as for the quotas).

Cost: with no limit anywhere (no default, no role setting one) a call
pays one branch (``on``). With one, a call looks its bucket up (one dict lookup) and does a few float
operations; the limit is worked out from the policy only when the bucket is
made, the principal's roles change, or the policy was read again. A bucket
that has refilled completely is the same as no bucket, so those idle for
``IDLE_SECONDS`` are dropped in a sweep at most once per ``IDLE_SECONDS``:
the state is the principals active in the last minute or two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.errors import RateLimited
from service.principal import Principal
from service.security.policy import NO_RATE_LIMIT, Authorizer, Rate

IDLE_SECONDS = 60.0
# Told of each call refused ("refused") and each stream message made to
# wait ("waited"): the metrics (``chronicle_principal_rate_limited_total``).
OnLimited = Callable[[str], None]


class TokenBucket:
    """``burst`` tokens at most, ``rate`` more each second; ``now`` is the
    caller's clock (seconds), so that tests can move it."""

    __slots__ = (
        "at",
        "burst",
        "credential_tenant",
        "exempt",
        "generation",
        "of_tenant",
        "rate",
        "roles",
        "tenant",
        "tokens",
    )

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now
        # What the limit was worked out from (``RateLimits``).
        self.roles: frozenset[str] = frozenset()
        self.credential_tenant = ""
        self.generation = 0
        # A principal's bucket: the tenant whose bucket it shares too ("":
        # none), and whether it is exempt from that one (an administrator).
        self.tenant = ""
        self.exempt = False
        # A tenant's bucket (``tenant`` names it), which its principals share.
        self.of_tenant = False

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, count: int, now: float) -> float:
        """Take ``count`` tokens and return 0, or take none and return the
        seconds until they are there. A count over the burst needs a full
        bucket and leaves it in debt (it could never be had otherwise)."""
        self._refill(now)
        needed = min(count, self.burst)
        if self.tokens >= needed:
            self.tokens -= count
            return 0.0
        return (needed - self.tokens) / self.rate

    def reserve(self, count: int, now: float) -> float:
        """Take ``count`` tokens, into debt if need be, and return the
        seconds until the debt is paid (0: none), which the caller waits
        before it uses them: a stream's message."""
        self._refill(now)
        self.tokens -= count
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def give_back(self, count: int) -> None:
        """Tokens ``reserve`` took for commands that were never started."""
        self.tokens = min(self.burst, self.tokens + count)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class RateLimits:
    """Every principal's bucket, and the server's default limit.

    ``clock`` and ``sleep`` are attributes so that a test can put its own
    (time that moves only when told) on a running server."""

    def __init__(
        self,
        authorizer: Authorizer,
        default: Rate | None = None,
        *,
        per_tenant: Rate | None = None,
        on_limited: OnLimited | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._default = default if default is not None and default.commands_per_second else None
        self._per_tenant = per_tenant if per_tenant is not None and per_tenant.commands_per_second else None
        self._on_limited = on_limited
        self._buckets: dict[str, TokenBucket] = {}
        self._tenant_buckets: dict[str, TokenBucket] = {}
        self._generation = 0
        self._swept = 0.0
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # False while no limit is set anywhere: callers skip the buckets.
        self.on = self._default is not None or self._per_tenant is not None or authorizer.sets_rates

    def policy_changed(self) -> None:
        """The policy was read again: each bucket works its limit out anew
        at its next use (keeping the tokens it holds, up to the new burst)."""
        self._generation += 1
        self.on = self._default is not None or self._per_tenant is not None or self._authorizer.sets_rates

    def bucket(self, principal: Principal) -> TokenBucket | None:
        """``principal``'s bucket (None: it has no limit)."""
        bucket = self._own(principal)
        return bucket if bucket.rate else None

    def buckets(self, principal: Principal) -> tuple[TokenBucket | None, TokenBucket | None]:
        """``principal``'s bucket and its tenant's (each None: no limit)."""
        own = self._own(principal)
        shared = None
        if self._per_tenant is not None and own.tenant and not own.exempt:
            shared = self._tenant_buckets.get(own.tenant)
            if shared is None:
                rate = self._per_tenant
                shared = TokenBucket(rate.commands_per_second, rate.burst, self.clock())
                shared.tenant, shared.of_tenant = own.tenant, True
                self._tenant_buckets[own.tenant] = shared
        return (own if own.rate else None), shared

    def _own(self, principal: Principal) -> TokenBucket:
        now = self.clock()
        if now - self._swept >= IDLE_SECONDS:
            self._sweep(now)
        bucket = self._buckets.get(principal.name)
        if (
            bucket is None
            or bucket.generation != self._generation
            or bucket.roles != principal.roles
            or bucket.credential_tenant != principal.tenant
        ):
            bucket = self._made(principal, bucket, now)
        return bucket

    def _made(self, principal: Principal, old: TokenBucket | None, now: float) -> TokenBucket:
        rate = self._authorizer.rate_of(principal)
        if rate is None:
            rate = self._default or NO_RATE_LIMIT
        bucket = TokenBucket(rate.commands_per_second, rate.burst, now)
        if old is not None and old.rate and rate.commands_per_second:
            old._refill(now)
            bucket.tokens = min(bucket.burst, old.tokens)  # a debt is kept across a reload
        bucket.roles = principal.roles
        bucket.credential_tenant = principal.tenant
        bucket.generation = self._generation
        if self._per_tenant is not None:
            bucket.tenant = self._authorizer.tenant_of(principal)
            bucket.exempt = self._authorizer.grant(principal).admin
        self._buckets[principal.name] = bucket
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        idle = [
            name
            for name, bucket in self._buckets.items()
            if now - bucket.at >= IDLE_SECONDS and (not bucket.rate or bucket.full(now))
        ]
        for name in idle:
            del self._buckets[name]
        for tenant in [t for t, bucket in self._tenant_buckets.items() if now - bucket.at >= IDLE_SECONDS]:
            if self._tenant_buckets[tenant].full(now):
                del self._tenant_buckets[tenant]

    def __len__(self) -> int:
        return len(self._buckets)

    def _refused(self, bucket: TokenBucket, message: str, delay: float) -> RateLimited:
        """A refusal for ``bucket``'s rate, counted: ``delay`` seconds until
        its tokens are there (RetryInfo)."""
        if self._on_limited is not None:
            self._on_limited("refused")
        metadata = {"commands_per_second": f"{bucket.rate:g}", "burst": f"{bucket.burst:g}"}
        if bucket.of_tenant:
            return RateLimited(
                message, retry_after=delay, reason="TENANT_RATE_LIMITED", metadata={**metadata, "tenant": bucket.tenant}
            )
        return RateLimited(message, retry_after=delay, metadata=metadata)

    @staticmethod
    def _whose(bucket: TokenBucket) -> str:
        return f"tenant {bucket.tenant!r}" if bucket.of_tenant else "this principal"

    def take(self, principal: Principal, count: int) -> None:
        """A unary call of ``count`` commands: its tokens taken from the
        principal's bucket and its tenant's, or ``RateLimited`` raised
        (none taken from either)."""
        own, shared = self.buckets(principal)
        now = self.clock()
        if own is not None and (delay := own.take(count, now)):
            raise self._refused_now(own, delay)
        if shared is not None and (delay := shared.take(count, now)):
            if own is not None:
                own.give_back(count)
            raise self._refused_now(shared, delay)

    def _refused_now(self, bucket: TokenBucket, delay: float) -> RateLimited:
        return self._refused(
            bucket,
            f"{self._whose(bucket)} may submit {bucket.rate:g} commands per second (bursts of {bucket.burst:g});"
            f" retry in {delay:.3f} s",
            delay,
        )

    async def wait(self, principal: Principal, count: int, time_remaining: float | None) -> None:
        """A stream's message of ``count`` commands: its tokens taken, and
        the debt waited out before it is started. One whose wait would run
        past the call's deadline (``time_remaining`` seconds away) gives
        them back and raises ``RateLimited``: the stream ends there, its
        started commands answered, rather than being cut by its deadline."""
        reserved = [bucket for bucket in self.buckets(principal) if bucket is not None]
        if not reserved:
            return
        now = self.clock()
        delay, bucket = max(((each.reserve(count, now), each) for each in reserved), key=lambda waited: waited[0])
        if not delay:
            return
        if time_remaining is not None and delay >= time_remaining:
            for each in reserved:
                each.give_back(count)
            raise self._refused(
                bucket,
                f"{self._whose(bucket)} may submit {bucket.rate:g} commands per second: the stream's next commands"
                f" could not start before its deadline; send them again in {delay:.3f} s",
                delay,
            )
        if self._on_limited is not None:
            self._on_limited("waited")
        try:
            await self.sleep(delay)
        except asyncio.CancelledError:
            for each in reserved:  # the stream ended (its client left, the server stops): none of them started
                each.give_back(count)
            raise
