"""Authorization: every decision about who may do what, in one place.

The policy is a TOML file (``--policy-file``)::

    [roles.teller]
    submit = ["bank.v1.OpenAccount", "bank.v1.Deposit"]   # command types
    read = ["Account"]                                     # aggregate types
    subscribe = ["Account"]                                # aggregate types
    consume = ["tellers-*"]                                # subscription groups

    [roles.operator]
    read = ["*"]            # "*" is every type
    impersonate = true      # may submit commands on behalf of another user_id
    admin = true            # audit queries, forgetting aggregates, key rotation

    [principals."alice"]
    roles = ["teller"]

    [principals."CN=batch,O=Acme"]   # a client certificate's subject
    roles = ["teller", "operator"]
    credential = "mtls"              # only when a certificate names it

    [roles.tenant-teller]
    scope = "tenant"        # grants only on the principal's tenant's aggregates
    submit = ["bank.v1.Deposit"]

    [principals."acme-app"]
    roles = ["tenant-teller"]
    tenant = "acme"         # or from its credential: the key's entry, a JWT claim

A principal holds the roles the policy lists for it plus those its
credential carries (a JWT ``roles`` claim, the API-key file's entry). What is
not granted is denied. TOML because it is in the standard library
(``tomllib``: no dependency, no YAML-style implicit typing where ``no``
becomes ``false``), allows comments beside each grant, and maps one-to-one
onto this structure. Unknown keys are refused at start-up: a typo in a
security policy must not silently grant or deny.

With authentication off every caller is anonymous: ``Authorizer.anonymous``
permits every submit, read and subscription, but administration (the audit
log, forgetting aggregates, key rotation, projections of no aggregate type)
only when the operator opted in for local development (``--anonymous-admin``):
an unauthenticated caller must not be able to erase data irreversibly.

Tenants: a role with ``scope = "tenant"`` grants only on aggregates whose
id begins with the principal's tenant and ``:`` (``acme:acc-1``), and
nothing to a principal without a tenant. Its grants are kept apart from
the unscoped roles' (``Authorizer.grant`` is the unscoped ones alone), so
a decision by type alone (a projection's documents, a reaction's status,
administration) gives a tenant-scoped role nothing: only the checks that
name an aggregate id (``may_submit_to``, ``may_read_id``), narrow a stream
to the tenant's ids (``subscription_scope``, ``may_subscribe_in_tenant``,
``tenant_reading``) or ask whether a caller may see *some* aggregates of a
type (``*_somewhere``, ``may_read_any``) count it. Its ``tenant_admin``
(``administered_tenant``) administers the tenant's own aggregates only.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from service.errors import ConfigurationError, PermissionDenied, quoted
from service.principal import Principal, in_tenant, tenant_prefix, tenant_problem

log = logging.getLogger("chronicle")

ANY = "*"
_ROLE_KEYS = {"submit", "read", "subscribe", "consume", "impersonate", "admin"}
# A role's commands-per-second limit (``Rate``): kept apart from ``Grant``,
# which says what a principal may do, not how fast.
_RATE_KEYS = {"commands_per_second", "burst"}
# A ``consume`` entry: a group name (service/api/group_service.py's), in
# which ``*`` stands for any run of characters ("acme-*").
_GROUP_PATTERN = re.compile(r"[A-Za-z0-9.*_-]{1,100}")
# A role's ``scope``: absent, every aggregate; "tenant", the principal's
# tenant's aggregates only. One word, not an id pattern (``"{tenant}:*"``):
# there is one rule to get right, no pattern language to half-implement.
TENANT_SCOPE = "tenant"
# ``tenant_admin``: the administration of the principal's own tenant
# (service/api/admin_service.py says which calls). A key of its own, taken
# only beside ``scope = "tenant"``, not ``admin = true`` read differently
# there: one word must not mean every tenant in one role and one tenant in
# the next, and a role that lost its ``scope`` line by mistake must stop the
# server (BAD_POLICY), not become an administrator of every tenant.
_TENANT_ROLE_KEYS = {"scope", "tenant_admin"}
_PRINCIPAL_KEYS = {"roles", "tenant", "credential"}
# A ``[principals."x"]`` entry's ``credential``: which kind of credential it
# stands for (``Principal.method``). Every credential names its principal
# from a namespace of its own (a JWT's ``sub`` is the IdP's, a certificate's
# subject the CA's, an API key's the keys file's), and the policy keys them
# all by the bare name: without it, a token whose ``sub`` is
# "CN=batch,O=Acme" holds that certificate's roles.
CREDENTIALS = ("mtls", "jwt", "api-key")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one role, or the union of a principal's roles, allows."""

    submit: frozenset[str] = frozenset()
    read: frozenset[str] = frozenset()
    subscribe: frozenset[str] = frozenset()
    # Subscription groups by name, globs with ``*``: who may consume a group
    # (and so acknowledge, nack and skip its events for every other consumer)
    # is a grant of its own, not read off ``subscribe``.
    consume: frozenset[str] = frozenset()
    impersonate: bool = False
    admin: bool = False
    # Of a tenant-scoped role only: its tenant's administration (listing,
    # forgetting and the audit of its own aggregates), never every tenant's.
    tenant_admin: bool = False

    def __or__(self, other: Grant) -> Grant:
        return Grant(
            submit=self.submit | other.submit,
            read=self.read | other.read,
            subscribe=self.subscribe | other.subscribe,
            consume=self.consume | other.consume,
            impersonate=self.impersonate or other.impersonate,
            admin=self.admin or other.admin,
            tenant_admin=self.tenant_admin or other.tenant_admin,
        )


@dataclass(frozen=True, slots=True)
class Rate:
    """Commands per second a principal may submit (a token bucket: refilled
    at ``commands_per_second``, holding at most ``burst``). 0 commands per
    second: no limit. ``service.api.rate_limits`` enforces it."""

    commands_per_second: float
    burst: float

    def __or__(self, other: Rate) -> Rate:
        """The more generous of the two, each figure apart (no limit wins)."""
        if not self.commands_per_second or not other.commands_per_second:
            return NO_RATE_LIMIT
        return Rate(max(self.commands_per_second, other.commands_per_second), max(self.burst, other.burst))


NO_RATE_LIMIT = Rate(0.0, 0.0)


def _allows(names: frozenset[str], name: str) -> bool:
    return ANY in names or name in names


@dataclass(frozen=True, slots=True)
class Policy:
    roles: Mapping[str, Grant]
    principal_roles: Mapping[str, frozenset[str]]
    # The roles with ``scope = "tenant"``, and the tenants the policy names.
    tenant_roles: frozenset[str] = frozenset()
    principal_tenants: Mapping[str, str] = field(default_factory=dict)
    # Role -> its ``commands_per_second`` and ``burst``, for the roles that set them.
    rates: Mapping[str, Rate] = field(default_factory=dict)
    # Principal -> the credential its entry stands for (``credential``), for
    # the entries that say; the others stand for a principal of that name
    # whatever its credential.
    principal_credentials: Mapping[str, str] = field(default_factory=dict)

    def entry_applies(self, principal: Principal) -> bool:
        """Whether the policy's ``[principals]`` entry of the principal's
        name (its roles, its tenant) is for this principal's credential."""
        credential = self.principal_credentials.get(principal.name)
        return credential is None or credential == principal.method

    def roles_of(self, principal: Principal) -> frozenset[str]:
        """The roles the policy's entry gives the principal."""
        if not self.entry_applies(principal):
            return frozenset()
        return self.principal_roles.get(principal.name, frozenset())

    def tenant_named(self, principal: Principal) -> str:
        """The tenant the policy's entry names for the principal ("": none)."""
        return self.principal_tenants.get(principal.name, "") if self.entry_applies(principal) else ""

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigurationError(f"cannot read policy file {path}: {error}", reason="BAD_POLICY") from error
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: Mapping[str, object], *, source: str = "policy") -> Policy:
        unknown = set(data) - {"roles", "principals"}
        if unknown:
            raise ConfigurationError(f"{source}: unknown sections {sorted(unknown)}", reason="BAD_POLICY")
        role_bodies = _table(source, "roles", data)
        tenant_roles = frozenset(name for name, body in role_bodies.items() if _tenant_scoped(source, name, body))
        for name, body in role_bodies.items():
            if name not in tenant_roles and isinstance(body, Mapping) and "tenant_admin" in body:
                raise ConfigurationError(
                    f"{source}: roles.{name}.tenant_admin needs scope = {TENANT_SCOPE!r} beside it: it administers"
                    " the principal's own tenant (admin = true is every tenant's administration)",
                    reason="BAD_POLICY",
                )
        roles = {
            name: _tenant_grant(source, name, body) if name in tenant_roles else _grant(source, name, body)
            for name, body in role_bodies.items()
        }
        for name in sorted(tenant_roles):
            if roles[name].admin:
                raise ConfigurationError(
                    f"{source}: roles.{name} is tenant-scoped and cannot grant admin: administration (the audit,"
                    " forgetting, exports) is of every tenant's data; tenant_admin = true administers the"
                    " principal's own tenant",
                    reason="BAD_POLICY",
                )
        principals: dict[str, frozenset[str]] = {}
        tenants: dict[str, str] = {}
        credentials: dict[str, str] = {}
        for name, body in _table(source, "principals", data).items():
            if not isinstance(body, Mapping) or set(body) - _PRINCIPAL_KEYS:
                raise ConfigurationError(
                    f"{source}: principals.{name} takes only 'roles', 'tenant' and 'credential'", reason="BAD_POLICY"
                )
            if "credential" in body:
                credentials[name] = _credential(source, name, body["credential"])
            if "tenant" in body:
                tenants[name] = _tenant(source, name, body["tenant"])
            names = frozenset(_strings(source, f"principals.{name}.roles", body.get("roles", [])))
            missing = names - roles.keys()
            if missing:
                raise ConfigurationError(
                    f"{source}: principals.{name} names undefined roles {sorted(missing)}", reason="BAD_POLICY"
                )
            principals[name] = names
            if names & tenant_roles and name not in tenants:
                # Not refused: its credential may name the tenant (an API
                # key's entry, a JWT claim). Without one they grant nothing.
                log.warning(
                    "%s: principals.%s holds tenant-scoped roles %s but the policy names no tenant for it: they"
                    " grant nothing unless its credential names one",
                    source,
                    name,
                    sorted(names & tenant_roles),
                )
        rates = {name: rate for name, body in role_bodies.items() if (rate := _rate(source, name, body))}
        return cls(roles, principals, tenant_roles, tenants, rates, credentials)


def _tenant_scoped(source: str, name: str, body: object) -> bool:
    if not isinstance(body, Mapping) or "scope" not in body:
        return False
    if body["scope"] != TENANT_SCOPE:
        raise ConfigurationError(
            f"{source}: roles.{name}.scope must be {TENANT_SCOPE!r} (or absent: every aggregate)", reason="BAD_POLICY"
        )
    return True


def _tenant_grant(source: str, name: str, body: object) -> Grant:
    """A ``scope = "tenant"`` role's grant: the keys every role takes, and
    ``tenant_admin``."""
    assert isinstance(body, Mapping)  # checked by ``_tenant_scoped``
    tenant_admin = body.get("tenant_admin", False)
    if not isinstance(tenant_admin, bool):
        raise ConfigurationError(f"{source}: roles.{name}.tenant_admin must be true or false", reason="BAD_POLICY")
    grant = _grant(source, name, {key: value for key, value in body.items() if key not in _TENANT_ROLE_KEYS})
    return replace(grant, tenant_admin=tenant_admin)


def _tenant(source: str, name: str, value: object) -> str:
    problem = tenant_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise ConfigurationError(f"{source}: principals.{name}.tenant {problem}", reason="BAD_POLICY")
    assert isinstance(value, str)
    return value


def _credential(source: str, name: str, value: object) -> str:
    if value not in CREDENTIALS:
        raise ConfigurationError(
            f"{source}: principals.{name}.credential must be one of {list(CREDENTIALS)}, got {value!r}",
            reason="BAD_POLICY",
        )
    assert isinstance(value, str)
    return value


def _table(source: str, key: str, data: Mapping[str, object]) -> Mapping[str, object]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{source}: [{key}] must be a table", reason="BAD_POLICY")
    return value


def _strings(source: str, where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{source}: {where} must be a list of strings", reason="BAD_POLICY")
    return list(value)


def _grant(source: str, name: str, body: object) -> Grant:
    if not isinstance(body, Mapping):
        raise ConfigurationError(f"{source}: roles.{name} must be a table", reason="BAD_POLICY")
    unknown = set(body) - _ROLE_KEYS - _RATE_KEYS
    if unknown:
        raise ConfigurationError(f"{source}: roles.{name} has unknown keys {sorted(unknown)}", reason="BAD_POLICY")
    for flag in ("impersonate", "admin"):
        if not isinstance(body.get(flag, False), bool):
            raise ConfigurationError(f"{source}: roles.{name}.{flag} must be true or false", reason="BAD_POLICY")
    return Grant(
        submit=frozenset(_strings(source, f"roles.{name}.submit", body.get("submit", []))),
        read=frozenset(_strings(source, f"roles.{name}.read", body.get("read", []))),
        subscribe=frozenset(_strings(source, f"roles.{name}.subscribe", body.get("subscribe", []))),
        consume=_group_patterns(source, name, body.get("consume", [])),
        impersonate=bool(body.get("impersonate", False)),
        admin=bool(body.get("admin", False)),
    )


def _rate(source: str, role: str, body: object) -> Rate | None:
    """The role's ``commands_per_second`` and ``burst`` (None: it sets no
    rate). ``burst`` defaults to one second's worth, and at least 1."""
    assert isinstance(body, Mapping)  # checked by ``_grant``
    if "commands_per_second" not in body:
        if "burst" in body:
            raise ConfigurationError(
                f"{source}: roles.{role}.burst needs commands_per_second beside it", reason="BAD_POLICY"
            )
        return None
    rate = body["commands_per_second"]
    burst = body.get("burst", max(1, rate) if _number(rate) else rate)
    for key, value in (("commands_per_second", rate), ("burst", burst)):
        if not _number(value) or value < 0:
            raise ConfigurationError(f"{source}: roles.{role}.{key} must be a number, at least 0", reason="BAD_POLICY")
    if rate and burst < 1:
        raise ConfigurationError(f"{source}: roles.{role}.burst must be at least 1", reason="BAD_POLICY")
    return NO_RATE_LIMIT if not rate else Rate(float(rate), float(burst))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _group_patterns(source: str, role: str, value: object) -> frozenset[str]:
    patterns = _strings(source, f"roles.{role}.consume", value)
    for pattern in patterns:
        if not _GROUP_PATTERN.fullmatch(pattern):
            raise ConfigurationError(
                f"{source}: roles.{role}.consume: {pattern!r} is no group name nor pattern (letters, digits, '.',"
                " '_', '-', and '*' for any run of them)",
                reason="BAD_POLICY",
            )
    return frozenset(patterns)


def principals_without_credential(policy: Policy) -> list[str]:
    """The ``[principals]`` entries that say no ``credential``: each stands
    for whoever any credential names so (said at start-up when more than
    one kind of credential is accepted, not refused: policies from before
    the key load as they did)."""
    return sorted(set(policy.principal_roles) - set(policy.principal_credentials))


def roles_without_consume(policy: Policy) -> list[str]:
    """Roles that grant ``subscribe`` but no ``consume``: before the
    ``consume`` grant, their principals could consume every group of the
    types they subscribe to; now none (said at start-up, not refused)."""
    return sorted(
        name for name, grant in policy.roles.items() if grant.subscribe and not grant.consume and not grant.admin
    )


_EVERYTHING_BUT_ADMIN = Grant(
    submit=frozenset({ANY}),
    read=frozenset({ANY}),
    subscribe=frozenset({ANY}),
    consume=frozenset({ANY}),
    impersonate=True,
)
_EVERYTHING = _EVERYTHING_BUT_ADMIN | Grant(admin=True)


class Authorizer:
    """Answers "may this principal do this?" from the policy. Checks raise
    ``PermissionDenied`` with a machine-readable reason; ``may_*`` return a
    bool for filtering."""

    def __init__(self, policy: Policy | None, *, anonymous_admin: bool = False) -> None:
        self._policy = policy
        self._anonymous_admin = anonymous_admin

    @classmethod
    def anonymous(cls, *, admin: bool = False) -> Authorizer:
        """Authentication is off: every (anonymous) caller may submit, read
        and subscribe to everything, and administer only with ``admin``."""
        return cls(None, anonymous_admin=admin)

    @property
    def enforcing(self) -> bool:
        return self._policy is not None

    def use_policy(self, policy: Policy) -> None:
        """From the next check on, this policy (its file was read again)."""
        if self._policy is None:
            raise ConfigurationError("authentication is off: there is no policy to replace", reason="BAD_SETTING")
        self._policy = policy

    @property
    def sets_rates(self) -> bool:
        """Whether any role of the policy sets ``commands_per_second``."""
        return self._policy is not None and bool(self._policy.rates)

    def rate_of(self, principal: Principal) -> Rate | None:
        """The most generous commands-per-second limit of the principal's
        roles (``NO_RATE_LIMIT``: none, as for an administrator); None when
        no role of its sets one (the server's default applies)."""
        if self._policy is None:
            return None
        if self.grant(principal).admin:
            return NO_RATE_LIMIT
        rates = self._policy.rates
        found: Rate | None = None
        for name in principal.roles | self._policy.roles_of(principal):
            rate = rates.get(name)
            if rate is not None:
                found = rate if found is None else found | rate
        return found

    def grant(self, principal: Principal) -> Grant:
        """What the principal's unscoped roles grant: on every aggregate."""
        if self._policy is None:
            return _EVERYTHING if self._anonymous_admin else _EVERYTHING_BUT_ADMIN
        return self._union(principal, scoped=False)

    def _union(self, principal: Principal, *, scoped: bool) -> Grant:
        assert self._policy is not None
        names: Iterable[str] = principal.roles | self._policy.roles_of(principal)
        granted = Grant()
        for name in names:
            if (name in self._policy.tenant_roles) == scoped:
                granted = granted | self._policy.roles.get(name, Grant())
        return granted

    def tenant_of(self, principal: Principal) -> str:
        """The principal's tenant: its credential's, or the policy's entry's.
        "" when neither names one, and when the two name different tenants
        (a misconfiguration: neither is trusted over the other)."""
        named = self._policy.tenant_named(principal) if self._policy is not None else ""
        if principal.tenant and named and principal.tenant != named:
            return ""
        return principal.tenant or named

    def tenant_grant(self, principal: Principal) -> tuple[str, Grant]:
        """The principal's tenant and what its tenant-scoped roles grant on
        that tenant's aggregates; nothing without a tenant."""
        tenant = self.tenant_of(principal)
        if self._policy is None or not tenant:
            return "", Grant()
        return tenant, self._union(principal, scoped=True)

    def access(self, principal: Principal) -> object:
        """Everything the policy grants the principal, compared by the open
        streams' check (a change ends them)."""
        return self.grant(principal), self.tenant_grant(principal)

    def may_submit_to(self, principal: Principal, command_type: str, aggregate_id: str) -> bool:
        """May submit ``command_type`` to aggregate ``aggregate_id``: granted
        unscoped, or by a tenant-scoped role and the id is its tenant's."""
        if self.may_submit(principal, command_type):
            return True
        tenant, scoped = self.tenant_grant(principal)
        return _allows(scoped.submit, command_type) and in_tenant(tenant, aggregate_id)

    def may_submit_somewhere(self, principal: Principal, command_type: str) -> bool:
        """May submit ``command_type`` to some aggregate (for listings)."""
        return self.may_submit(principal, command_type) or _allows(self.tenant_grant(principal)[1].submit, command_type)

    def may_read_id(self, principal: Principal, aggregate_type: str, aggregate_id: str) -> bool:
        """May read aggregate ``aggregate_id`` of ``aggregate_type``."""
        if self.may_read(principal, aggregate_type):
            return True
        tenant, scoped = self.tenant_grant(principal)
        return _allows(scoped.read, aggregate_type) and in_tenant(tenant, aggregate_id)

    def may_submit(self, principal: Principal, command_type: str) -> bool:
        return _allows(self.grant(principal).submit, command_type)

    def check_submit(self, principal: Principal, command_type: str, aggregate_id: str) -> None:
        if not self.may_submit_to(principal, command_type, aggregate_id):
            raise _denied(
                principal,
                f"may not submit {command_type} to aggregate {quoted(aggregate_id)}",
                "SUBMIT_DENIED",
                command_type=command_type,
                aggregate_id=aggregate_id,
            )

    def check_user(self, principal: Principal, user_id: str) -> None:
        """A command's user id must be the caller's own unless it may impersonate."""
        if (
            user_id
            and user_id != principal.name
            and not self.grant(principal).impersonate
            and not self.tenant_grant(principal)[1].impersonate
        ):
            raise _denied(
                principal,
                f"may not act as user {quoted(user_id)}",
                "IMPERSONATION_DENIED",
                user_id=user_id,
            )

    def may_read(self, principal: Principal, aggregate_type: str) -> bool:
        return _allows(self.grant(principal).read, aggregate_type)

    def may_read_any(self, principal: Principal, known: Iterable[str]) -> bool:
        """Whether ``principal`` may read any of the aggregate types
        ``known``. One that may read none is told nothing of the log, not
        even how far it has grown (its head): a read that would tell it is
        refused ``READ_DENIED`` first."""
        scoped = self.tenant_grant(principal)[1].read
        return any(self.may_read(principal, name) or _allows(scoped, name) for name in known)

    def check_read(self, principal: Principal, aggregate_type: str) -> None:
        if not self.may_read(principal, aggregate_type):
            raise _denied(
                principal, f"may not read {aggregate_type} aggregates", "READ_DENIED", aggregate_type=aggregate_type
            )

    def check_read_aggregate(
        self, principal: Principal, aggregate_id: str, aggregate_type: str | None, known: Iterable[str]
    ) -> None:
        """May ``principal`` read aggregate ``aggregate_id``, of
        ``aggregate_type`` (None: it does not exist)? One that does not
        exist may be read (there is nothing in it) only by a principal that
        may read every type in ``known``; to any other, it is refused exactly
        as an aggregate of a type it may not read, so that the refusal does
        not tell which of the two it is (nor the type)."""
        if aggregate_type is not None and self.may_read_id(principal, aggregate_type, aggregate_id):
            return
        if aggregate_type is None and all(self.may_read_id(principal, name, aggregate_id) for name in known):
            return
        who = principal.name or "an anonymous caller"
        raise PermissionDenied(
            f"{who} may not read aggregate {quoted(aggregate_id)}: it does not exist, or is of a type {who}"
            " may not read",
            reason="READ_DENIED",
            metadata={"principal": principal.name, "aggregate_id": aggregate_id},
        )

    def may_subscribe(self, principal: Principal, aggregate_type: str) -> bool:
        """For subscriptions: events of aggregate types this is False for are
        left out of the caller's stream."""
        return _allows(self.grant(principal).subscribe, aggregate_type)

    def may_subscribe_somewhere(self, principal: Principal, aggregate_type: str) -> bool:
        """May subscribe to some aggregates of the type: unscoped, or to its
        tenant's (for pages that only say whether a tail would show any)."""
        return self.may_subscribe(principal, aggregate_type) or _allows(
            self.tenant_grant(principal)[1].subscribe, aggregate_type
        )

    def may_subscribe_to_all(self, principal: Principal) -> bool:
        """Granted ``"*"``: every aggregate type the log holds, those no
        loaded plugin declares any more included (a group that names no
        type delivers them all)."""
        return ANY in self.grant(principal).subscribe

    def subscribable(self, principal: Principal, asked: frozenset[str], known: Iterable[str]) -> frozenset[str]:
        """The aggregate types a subscription may carry: ``asked`` if every one
        is permitted (else SUBSCRIBE_DENIED naming it), or, with none asked,
        every type (none, meaning no narrowing) for a principal granted
        ``"*"``, else the permitted ones among ``known`` (none:
        SUBSCRIBE_DENIED). ``"*"`` is every type the log holds, those no
        loaded plugin declares any more included (their events are handed
        over as stored); a principal granted named types never receives
        another type's events, whether a plugin declares it or not."""
        for name in sorted(asked):
            if not self.may_subscribe(principal, name):
                raise _denied(
                    principal, f"may not subscribe to {name} aggregates", "SUBSCRIBE_DENIED", aggregate_type=name
                )
        if asked or ANY in self.grant(principal).subscribe:
            return asked
        permitted = frozenset(name for name in known if self.may_subscribe(principal, name))
        if not permitted:
            raise _denied(principal, "may not subscribe to any aggregate type", "SUBSCRIBE_DENIED")
        return permitted

    def may_consume_group(self, principal: Principal, group: str) -> bool:
        """Whether the ``consume`` grant names group ``group`` (an
        administrator's is every group). Decided on the name alone, so a
        refusal tells nothing of whether the group exists; consuming also
        takes the subscribe grant of the group's types (group_service.py)."""
        grant = self.grant(principal)
        if grant.admin or _names_group(grant.consume, group):
            return True
        tenant, scoped = self.tenant_grant(principal)
        return bool(tenant) and _names_group(scoped.consume, group)

    def may_consume_group_of(self, principal: Principal, group: str, prefix: str | None) -> bool:
        """The consume grant of a group once loaded (``prefix``: the
        aggregate-id prefix it is narrowed to, its tenant's): an unscoped
        role's names any group; a tenant-scoped role's only the groups of
        the principal's own tenant, never a group of every tenant."""
        grant = self.grant(principal)
        if grant.admin or _names_group(grant.consume, group):
            return True
        tenant, scoped = self.tenant_grant(principal)
        return bool(tenant) and prefix == tenant_prefix(tenant) and _names_group(scoped.consume, group)

    def check_consume_group(self, principal: Principal, group: str) -> None:
        if not self.may_consume_group(principal, group):
            raise _denied(
                principal,
                f"may not consume group {quoted(group)}: no consume grant names it",
                "CONSUME_DENIED",
                group=group,
            )

    def subscription_scope(
        self, principal: Principal, asked: frozenset[str], known: Iterable[str], aggregate_id: str | None = None
    ) -> tuple[frozenset[str], str | None]:
        """``subscribable``, tenant-scoped roles counted: the aggregate types
        a subscription may carry, and the aggregate-id prefix it is narrowed
        to (None: not narrowed). A subscription that carries any type only a
        tenant-scoped role grants is narrowed whole to the tenant's
        aggregates (the unscoped types too: one rule for the stream, kept by
        the store's query); one whose ``aggregate_id`` is another tenant's
        is refused SUBSCRIBE_DENIED."""
        tenant, scoped = self.tenant_grant(principal)
        if not tenant or scoped == Grant():
            return self.subscribable(principal, asked, known), None
        unscoped = self.grant(principal).subscribe
        for name in sorted(asked):
            if not (_allows(unscoped, name) or _allows(scoped.subscribe, name)):
                raise _denied(
                    principal, f"may not subscribe to {name} aggregates", "SUBSCRIBE_DENIED", aggregate_type=name
                )
        if asked:
            types, narrowed = asked, any(not _allows(unscoped, name) for name in asked)
        elif ANY in unscoped:
            types, narrowed = asked, False
        elif ANY in scoped.subscribe:
            types, narrowed = asked, True
        else:
            types = frozenset(name for name in known if _allows(unscoped, name) or _allows(scoped.subscribe, name))
            if not types:
                raise _denied(principal, "may not subscribe to any aggregate type", "SUBSCRIBE_DENIED")
            narrowed = any(not _allows(unscoped, name) for name in types)
        if not narrowed:
            return types, None
        if aggregate_id is not None and not in_tenant(tenant, aggregate_id):
            raise _denied(
                principal,
                f"may not subscribe to aggregate {quoted(aggregate_id)}: it is not of tenant {quoted(tenant)}",
                "SUBSCRIBE_DENIED",
                aggregate_id=aggregate_id,
            )
        return types, tenant_prefix(tenant)

    def may_subscribe_in_tenant(self, principal: Principal, prefix: str, aggregate_types: frozenset[str]) -> bool:
        """Whether the principal's tenant-scoped grants let it read a stream
        narrowed to ``prefix`` (a tenant's group) of ``aggregate_types``
        (none: every type, which takes ``"*"``): only its own tenant's."""
        tenant, scoped = self.tenant_grant(principal)
        if not tenant or prefix != tenant_prefix(tenant):
            return False
        if not aggregate_types:
            return ANY in scoped.subscribe
        return all(_allows(scoped.subscribe, name) for name in aggregate_types)

    def tenant_reading(self, principal: Principal, aggregate_types: Iterable[str]) -> str | None:
        """The key prefix of the principal's tenant if its tenant-scoped
        roles may read every one of ``aggregate_types`` (at least one), for
        documents keyed by tenant; None otherwise."""
        tenant, scoped = self.tenant_grant(principal)
        wanted = list(aggregate_types)
        if not tenant or not wanted or not all(_allows(scoped.read, name) for name in wanted):
            return None
        return tenant_prefix(tenant)

    def check_admin(self, principal: Principal, action: str) -> None:
        """Every tenant's administration: the admin grant (a tenant's
        administrator is refused too, saying what its grant covers)."""
        if self.grant(principal).admin:
            return
        raise self._admin_refused(principal, action)

    def administered_tenant(self, principal: Principal, action: str) -> str | None:
        """Whose aggregates the principal may administer by the calls a
        tenant's administrator may make (listing, forgetting, the audit):
        None, every tenant's (the admin grant); its tenant, given by a
        tenant-scoped role with ``tenant_admin``; anyone else is refused as
        ``check_admin`` refuses."""
        if self.grant(principal).admin:
            return None
        tenant = self.tenant_administered(principal)
        if tenant:
            return tenant
        raise self._admin_refused(principal, action)

    def tenant_administered(self, principal: Principal) -> str:
        """The tenant the principal administers by a ``tenant_admin``
        grant ("": none, or the admin grant, which is every tenant's)."""
        if self.grant(principal).admin:
            return ""
        tenant, scoped = self.tenant_grant(principal)
        return tenant if scoped.tenant_admin else ""

    def _admin_refused(self, principal: Principal, action: str) -> PermissionDenied:
        if self._policy is None:
            return PermissionDenied(
                f"anonymous callers may not {action}: authentication is off on this server, and anonymous"
                " callers are never administrators (turn on --auth and grant admin in the policy; on a"
                " developer's own machine, --anonymous-admin)",
                reason="ANONYMOUS_ADMIN_DENIED",
                metadata={"principal": principal.name, "action": action},
            )
        tenant = self.tenant_administered(principal)
        if tenant:
            return _denied(
                principal,
                f"may not {action}: its tenant_admin grant administers tenant {quoted(tenant)} only (listing,"
                " forgetting, the audit of its aggregates); this takes admin, every tenant's administration",
                "ADMIN_DENIED",
                action=action,
                tenant=tenant,
            )
        return _denied(principal, f"may not {action}", "ADMIN_DENIED", action=action)


def _denied(principal: Principal, what: str, reason: str, **metadata: str) -> PermissionDenied:
    who = principal.name or "an anonymous caller"
    return PermissionDenied(f"{who} {what}", reason=reason, metadata={"principal": principal.name, **metadata})


def _names_group(patterns: Iterable[str], group: str) -> bool:
    """Whether a ``consume`` grant's patterns name group ``group``."""
    return any(fnmatch.fnmatchcase(group, pattern) for pattern in patterns)
