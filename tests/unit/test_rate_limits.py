"""Commands per second per principal: the token bucket, the policy's
``commands_per_second`` and ``burst``, and ``RateLimits`` on a clock that
moves only when told (no timing assertions)."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from service.api.rate_limits import IDLE_SECONDS, RateLimits, TokenBucket
from service.errors import ConfigurationError, RateLimited
from service.observability.metrics import Metrics
from service.principal import Principal
from service.security.policy import NO_RATE_LIMIT, Authorizer, Policy, Rate
from service.settings import Settings

POLICY = """
[roles.tenant]
submit = ["*"]
commands_per_second = 10
burst = 20

[roles.bulk]
commands_per_second = 100

[roles.slow_burst]
commands_per_second = 1
burst = 50

[roles.trickle]
commands_per_second = 1
burst = 100

[roles.unlimited]
commands_per_second = 0

[roles.plain]
submit = ["*"]

[roles.operator]
admin = true
commands_per_second = 1
"""


def who(name: str, *roles: str) -> Principal:
    return Principal(name, "jwt", frozenset(roles))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limits(default: Rate | None = None, policy: str = POLICY) -> tuple[RateLimits, Clock]:
    clock = Clock()
    rate_limits = RateLimits(Authorizer(Policy.parse(tomllib.loads(policy))), default)
    rate_limits.clock, rate_limits.sleep = clock, clock.sleep
    return rate_limits, clock


# -- the bucket --------------------------------------------------------------------


def test_a_bucket_gives_its_burst_at_once_then_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0)
    assert [bucket.take(1, 0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(1, 0) == pytest.approx(0.1)  # one token comes in a tenth of a second
    assert bucket.take(1, 0.1) == 0.0
    assert bucket.take(2, 0.1) == pytest.approx(0.2)  # all or none: two needed, none there


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=0)
    assert bucket.take(2, 0) == 0.0
    assert bucket.take(2, 0) == pytest.approx(1.0)
    assert bucket.take(1, 0) == 0.0  # the one left is still there


def test_a_bucket_refills_no_further_than_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0)
    assert bucket.take(5, 0) == 0.0
    assert bucket.take(6, 3600) == 0.0  # over the burst: a full bucket lets it through, into debt
    assert bucket.tokens == -1
    assert bucket.take(1, 3600) == pytest.approx(0.2)


def test_reserving_goes_into_debt_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0)
    assert bucket.reserve(100, 0) == 0.0
    assert bucket.reserve(50, 0) == pytest.approx(0.5)
    assert bucket.reserve(50, 0.5) == pytest.approx(0.5)  # the first debt paid, the second owed
    assert bucket.take(1, 0.5) == pytest.approx(0.51)  # a unary call waits the debt out too


# -- the policy --------------------------------------------------------------------


def test_the_most_generous_of_a_principals_roles_wins_each_figure_apart() -> None:
    authorizer = Authorizer(Policy.parse(tomllib.loads(POLICY)))
    assert authorizer.rate_of(who("a", "tenant")) == Rate(10, 20)
    assert authorizer.rate_of(who("a", "bulk")) == Rate(100, 100)  # burst: one second's worth
    assert authorizer.rate_of(who("a", "tenant", "bulk")) == Rate(100, 100)
    assert authorizer.rate_of(who("a", "tenant", "slow_burst")) == Rate(10, 50)
    assert authorizer.rate_of(who("a", "tenant", "unlimited")) == NO_RATE_LIMIT
    assert authorizer.rate_of(who("a", "plain")) is None  # the server's default applies
    assert authorizer.rate_of(who("a", "tenant", "plain")) == Rate(10, 20)  # a role without a rate adds none
    assert authorizer.rate_of(who("root", "operator", "tenant")) == NO_RATE_LIMIT  # administrators: none
    assert Authorizer.anonymous().rate_of(who("a")) is None


@pytest.mark.parametrize(
    "text",
    [
        "[roles.x]\ncommands_per_second = 'many'",
        "[roles.x]\ncommands_per_second = -1",
        "[roles.x]\ncommands_per_second = true",
        "[roles.x]\ncommands_per_second = 10\nburst = 0.5",
        "[roles.x]\nburst = 10",  # a burst of no rate
        "[roles.x]\ncommands_per_secnd = 10",  # a typo
    ],
)
def test_a_rate_with_mistakes_is_refused_at_start_up(text: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Policy.parse(tomllib.loads(text))
    assert refused.value.reason == "BAD_POLICY"


# -- RateLimits -----------------------------------------------------------------------


def test_a_unary_call_over_the_rate_is_refused_with_the_delay_until_its_tokens() -> None:
    rate_limits, clock = limits()
    tenant = who("acme", "tenant")
    rate_limits.take(tenant, 20)
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(tenant, 5)
    assert refused.value.reason == "PRINCIPAL_RATE_LIMITED"
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.metadata == {"commands_per_second": "10", "burst": "20"}
    clock.now += 0.5
    rate_limits.take(tenant, 5)


def test_a_batch_over_the_burst_waits_for_a_full_bucket_then_goes_through_into_debt() -> None:
    """security.md: a batch larger than the burst (20 here) is refused with
    the time until the bucket is full, then let through whole, leaving the
    bucket in debt that the next commands wait out."""
    rate_limits, clock = limits()
    tenant = who("acme", "tenant")
    rate_limits.take(tenant, 15)  # 5 tokens left
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(tenant, 30)
    assert refused.value.retry_after == pytest.approx(1.5)  # 15 more make the bucket full, at 10 a second
    clock.now += 1.5
    rate_limits.take(tenant, 30)  # a full bucket: through, 10 tokens owed
    with pytest.raises(RateLimited) as owed:
        rate_limits.take(tenant, 1)
    assert owed.value.retry_after == pytest.approx(1.1)  # the debt of 10 and the one token asked


def test_principals_have_buckets_of_their_own() -> None:
    rate_limits, _ = limits()
    rate_limits.take(who("acme", "tenant"), 20)
    rate_limits.take(who("globex", "tenant"), 20)  # acme's spent bucket is not globex's
    with pytest.raises(RateLimited):
        rate_limits.take(who("acme", "tenant"), 1)


def test_the_servers_default_applies_to_principals_no_role_limits_and_administrators_are_exempt() -> None:
    rate_limits, _ = limits(default=Rate(1, 1))
    rate_limits.take(who("p", "plain"), 1)
    with pytest.raises(RateLimited):
        rate_limits.take(who("p", "plain"), 1)
    for _ in range(1000):
        rate_limits.take(who("root", "operator"), 100)
        rate_limits.take(who("u", "unlimited"), 100)
    no_default, _ = limits()
    for _ in range(1000):
        no_default.take(who("p", "plain"), 100)


async def test_a_stream_waits_for_its_tokens_instead_of_being_refused() -> None:
    rate_limits, clock = limits()
    tenant = who("acme", "tenant")
    for _ in range(5):
        await rate_limits.wait(tenant, 10, time_remaining=None)  # pages of ten
    # The burst (20) went at once; the other 30 commands at 10 a second.
    assert clock.slept == pytest.approx([1.0, 1.0, 1.0])
    assert clock.now == pytest.approx(1003.0)


async def test_a_stream_that_cannot_wait_within_its_deadline_is_ended_and_keeps_its_tokens() -> None:
    rate_limits, clock = limits()
    tenant = who("acme", "tenant")
    await rate_limits.wait(tenant, 20, time_remaining=5)
    with pytest.raises(RateLimited) as refused:
        await rate_limits.wait(tenant, 10, time_remaining=0.5)  # a second's wait, half a second left
    assert refused.value.retry_after == pytest.approx(1.0)
    assert clock.slept == []
    clock.now += 2
    rate_limits.take(tenant, 20)  # nothing was spent on the page not started


def test_a_changed_policy_or_roles_change_the_limit_and_a_debt_is_kept() -> None:
    rate_limits, clock = limits()
    acme = who("acme", "tenant")
    rate_limits.take(acme, 20)
    with pytest.raises(RateLimited):
        rate_limits.take(acme, 1)
    rate_limits.take(who("acme", "tenant", "unlimited"), 1000)  # its credential now carries another role
    bucket = rate_limits.bucket(acme)
    assert bucket is not None
    assert (bucket.rate, bucket.burst, bucket.tokens) == (10, 20, 20)  # back: a fresh bucket (it had none)
    rate_limits.take(acme, 20)
    rate_limits._authorizer.use_policy(Policy.parse(tomllib.loads(POLICY.replace("= 10\nburst = 20", "= 1000"))))
    rate_limits.policy_changed()
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(acme, 1)  # the empty bucket stays empty across the reload ...
    assert refused.value.retry_after == pytest.approx(0.001)  # ... and refills at the new rate
    clock.now += 0.02
    rate_limits.take(acme, 10)


def test_idle_full_buckets_are_dropped() -> None:
    rate_limits, clock = limits()
    for index in range(100):
        rate_limits.take(who(f"tenant-{index}", "tenant"), 1)
    rate_limits.take(who("busy", "trickle"), 100)  # refills in 100 s
    assert len(rate_limits) == 101
    clock.now += IDLE_SECONDS
    rate_limits.take(who("another", "tenant"), 1)
    assert len(rate_limits) == 2  # the idle full ones went; "busy" is not full yet: kept
    clock.now += IDLE_SECONDS
    rate_limits.take(who("another", "tenant"), 1)
    assert len(rate_limits) == 1


async def test_refusals_and_waits_are_counted_without_naming_the_principal() -> None:
    metrics = Metrics()
    clock = Clock()
    rate_limits = RateLimits(Authorizer(Policy.parse(tomllib.loads(POLICY))), on_limited=metrics.principal_rate_limited)
    rate_limits.clock, rate_limits.sleep = clock, clock.sleep
    tenant = who("acme", "tenant")
    rate_limits.take(tenant, 20)
    with pytest.raises(RateLimited):
        rate_limits.take(tenant, 1)
    await rate_limits.wait(tenant, 5, time_remaining=None)
    await rate_limits.wait(tenant, 5, time_remaining=None)

    def counted(outcome: str) -> float | None:
        return metrics.registry.get_sample_value("chronicle_principal_rate_limited_total", {"outcome": outcome})

    assert (counted("refused"), counted("waited")) == (1, 2)


def test_with_no_limit_anywhere_the_limits_are_off_until_a_policy_sets_one() -> None:
    plain = "[roles.plain]\nsubmit = ['*']"
    authorizer = Authorizer(Policy.parse(tomllib.loads(plain)))
    rate_limits = RateLimits(authorizer, None)
    assert not rate_limits.on  # callers skip the buckets: one branch per call
    assert RateLimits(authorizer, Rate(10, 10)).on  # the server's default
    authorizer.use_policy(Policy.parse(tomllib.loads(POLICY)))
    rate_limits.policy_changed()
    assert rate_limits.on
    authorizer.use_policy(Policy.parse(tomllib.loads(plain)))
    rate_limits.policy_changed()
    assert not rate_limits.on


def test_a_negative_rate_or_burst_stops_the_server_naming_its_flag() -> None:
    for name in ("max_commands_per_second_per_principal", "commands_burst_per_principal"):
        with pytest.raises(ConfigurationError) as refused:
            Settings(**{name: -1})  # type: ignore[arg-type]
        assert refused.value.reason == "BAD_SETTING"
        assert str(refused.value).startswith(f"--{name.replace('_', '-')}: -1 is negative; a whole number, at least 0")
    assert Settings(max_commands_per_second_per_principal=0, commands_burst_per_principal=0)


async def test_a_stream_ended_while_it_waits_gives_its_tokens_back() -> None:
    rate_limits, clock = limits()
    tenant = who("acme", "tenant")
    waiting = asyncio.Event()

    async def forever(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    rate_limits.sleep = forever
    await rate_limits.wait(tenant, 20, time_remaining=None)
    stream = asyncio.ensure_future(rate_limits.wait(tenant, 10, time_remaining=None))
    await waiting.wait()
    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stream
    clock.now += 1
    rate_limits.take(tenant, 10)  # the second's refill is there: the cancelled page's ten were given back


# -- a tenant's principals together ------------------------------------------------


def tenant_limits(per_tenant: Rate, default: Rate | None = None) -> tuple[RateLimits, Clock]:
    clock = Clock()
    rate_limits = RateLimits(Authorizer(Policy.parse(tomllib.loads(POLICY))), default, per_tenant=per_tenant)
    rate_limits.clock, rate_limits.sleep = clock, clock.sleep
    return rate_limits, clock


def of(name: str, tenant: str, *roles: str) -> Principal:
    return Principal(name, "jwt", frozenset(roles or ("plain",)), tenant)


def test_a_tenants_principals_share_its_bucket_beside_their_own() -> None:
    rate_limits, clock = tenant_limits(Rate(10, 10), default=Rate(8, 8))
    rate_limits.take(of("acme-1", "acme"), 6)
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(of("acme-2", "acme"), 6)  # its own bucket holds 8, acme's 4
    assert refused.value.reason == "TENANT_RATE_LIMITED"
    assert refused.value.retry_after == pytest.approx(0.2)
    assert refused.value.metadata == {"commands_per_second": "10", "burst": "10", "tenant": "acme"}
    assert "tenant 'acme' may submit 10 commands per second" in str(refused.value)
    rate_limits.take(of("globex-1", "globex"), 8)  # another tenant's bucket
    rate_limits.take(of("loner", ""), 8)  # a principal of no tenant: its own alone
    clock.now += 0.2
    rate_limits.take(of("acme-2", "acme"), 6)


def test_a_call_the_principals_own_bucket_refuses_takes_nothing_from_the_tenants() -> None:
    rate_limits, _ = tenant_limits(Rate(10, 10), default=Rate(2, 2))
    rate_limits.take(of("acme-1", "acme"), 2)
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(of("acme-1", "acme"), 2)
    assert refused.value.reason == "PRINCIPAL_RATE_LIMITED"
    for n in range(2, 6):
        rate_limits.take(of(f"acme-{n}", "acme"), 2)  # the 8 acme had left: none went to the refused call
    with pytest.raises(RateLimited) as spent:
        rate_limits.take(of("acme-6", "acme"), 1)
    assert spent.value.reason == "TENANT_RATE_LIMITED"


def test_the_tenants_bucket_alone_limits_when_principals_have_none_and_administrators_are_exempt() -> None:
    rate_limits, _ = tenant_limits(Rate(5, 5))
    assert rate_limits.on
    rate_limits.take(of("acme-1", "acme"), 5)
    with pytest.raises(RateLimited) as refused:
        rate_limits.take(of("acme-2", "acme"), 1)
    assert refused.value.reason == "TENANT_RATE_LIMITED"
    for _ in range(100):
        rate_limits.take(of("root", "acme", "operator"), 100)


def test_the_tenant_is_the_policys_answer() -> None:
    """The policy may name the tenant where the credential does not; when
    the two disagree the principal has none (docs/security.md#tenants)."""
    policy = POLICY + '\n[principals."acme-app"]\nroles = ["plain"]\ntenant = "acme"\n'
    clock = Clock()
    rate_limits = RateLimits(Authorizer(Policy.parse(tomllib.loads(policy))), per_tenant=Rate(5, 5))
    rate_limits.clock, rate_limits.sleep = clock, clock.sleep
    rate_limits.take(Principal("acme-app", "api-key"), 5)
    with pytest.raises(RateLimited):
        rate_limits.take(of("acme-1", "acme"), 1)
    rate_limits.take(Principal("acme-app", "api-key", tenant="globex"), 5)  # two tenants named: none


async def test_a_stream_waits_for_the_later_of_its_two_buckets_and_gives_both_back_when_ended() -> None:
    rate_limits, clock = tenant_limits(Rate(5, 5), default=Rate(10, 10))
    acme = of("acme-1", "acme")
    await rate_limits.wait(acme, 5, time_remaining=None)
    await rate_limits.wait(acme, 5, time_remaining=None)  # its own holds 5 more; acme's owes 5: a second
    assert clock.slept == pytest.approx([1.0])
    with pytest.raises(RateLimited) as refused:
        await rate_limits.wait(acme, 5, time_remaining=0.5)
    assert refused.value.reason == "TENANT_RATE_LIMITED"
    clock.now += 1
    rate_limits.take(of("acme-2", "acme"), 5)  # the page not started gave acme's tokens back
