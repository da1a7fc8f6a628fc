-- Migration 30: the claims stored per tenant (scope, the mark chr(30), the
-- tenant: service/claim_scopes.py), by scope in the "C" collation (code
-- point order), so that a scope's tenants' claims are one range of it
-- ([scope || chr(30), scope || chr(31))). At start a server asks, for each
-- scope a plugin declares global, whether that range holds a claim: the
-- scope was per tenant before, and those claims would be checked no more
-- (CLAIM_SCOPE_SWITCHED). The claims' primary key cannot answer it: in a
-- linguistic collation control characters are ignored at first, which
-- interleaves "users.email\x1eacme" with "users.emailacme". Partial: only
-- tenants' claims are written to it. Built concurrently (index_builds.py):
-- it reads the claims table once, while writes go on.
-- additive
-- concurrently
CREATE INDEX CONCURRENTLY IF NOT EXISTS claims_per_tenant_code_points ON chronicle.claims (scope COLLATE "C")
    WHERE strpos(scope, chr(30)) > 0;
