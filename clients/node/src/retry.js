// When a failed call is tried again, and after how long: the Python client's
// RetryPolicy (service/client/retry.py), with the same defaults.
//
// A unary call (a command, a state, a group call) and a read are tried
// again for `retryForSeconds` (30) and no longer, so that their caller is
// never held for ever. A subscription, a command stream and a group
// consumer are reopened for as long as they are iterated (`maxAttempts`:
// Infinity): a server that restarts, a database that is away for a while,
// end them only for a moment. Between attempts the backoff grows from
// `initialBackoffSeconds` by `multiplier` to `maxBackoffSeconds` (2 s) and
// stays there, stretched by up to `jitter` (a fraction) so that clients
// refused together do not come back together, and never shorter than the
// server's RetryInfo delay. Which errors are worth another attempt is the
// caller's to say (chronicle.js); a stale token, which asking the token
// function again may cure, is tried again STALE_TOKEN_ATTEMPTS times in a
// row at most when `maxAttempts` sets no bound.

import { REASONS } from './reasons.js';

export const DEFAULT_RETRY = Object.freeze({
  maxAttempts: Infinity, // attempts at a unary call; reopenings in a row of a stream with nothing received
  retryForSeconds: 30, // a unary call or a read: no attempt begins later than this after its first
  initialBackoffSeconds: 0.05,
  maxBackoffSeconds: 2,
  multiplier: 2,
  jitter: 0.2,
});

// Attempts in a row that a stale token may fail when `maxAttempts` sets no bound.
export const STALE_TOKEN_ATTEMPTS = 5;
// Retries in a row reported to the logger's `info`; the ones after them to its `warn`.
export const QUIET_RETRIES = 3;

/**
 * DEFAULT_RETRY with `options` in place of its fields; null for
 * `maxAttempts` or `retryForSeconds` is no bound (Infinity).
 */
export function retryPolicy(options = {}) {
  const policy = { ...DEFAULT_RETRY, ...options };
  policy.maxAttempts ??= Infinity;
  policy.retryForSeconds ??= Infinity;
  if (!(policy.maxAttempts >= 1)) throw new RangeError('retry.maxAttempts must be at least 1 (null: no bound)');
  if (!(policy.retryForSeconds >= 0)) {
    throw new RangeError('retry.retryForSeconds must not be negative (null: no bound)');
  }
  const { initialBackoffSeconds, maxBackoffSeconds, jitter, multiplier } = policy;
  if (!(Math.min(initialBackoffSeconds, maxBackoffSeconds, jitter) >= 0) || !(multiplier >= 1)) {
    throw new RangeError('retry backoffs and jitter must not be negative, the multiplier at least 1');
  }
  return Object.freeze(policy);
}

/**
 * Seconds to wait before attempt `attempt + 1`, after `refusal` (a
 * ChronicleError the caller found worth retrying) ended attempt `attempt`;
 * null: give up. `stale`: it came of a stale token (then bounded by
 * STALE_TOKEN_ATTEMPTS when `maxAttempts` is not); `maxAttempts`: the bound
 * (a stream's own option); `elapsedSeconds`: since a unary call's first
 * attempt began, or a read's last event (`retryForSeconds` bounds it;
 * null for a stream, which only `maxAttempts` bounds).
 */
// Reasons a server gives when it is going: it ends its calls as it stops.
export const GOING_REASONS = new Set([REASONS.SHUTTING_DOWN]);

/**
 * The server's RetryInfo delay for `refusal`, in seconds (0: none), as a
 * retry waits it: not for a server going away (UNAVAILABLE SHUTTING_DOWN),
 * which asks every caller to wait a second, because this client reopens on
 * a new connection (ChronicleClient, #reconnect), which a balancer places on
 * a replica that stays: a subscriber's gap over a drain is the backoff.
 */
export function serverDelaySeconds(refusal) {
  if (refusal.code === 'UNAVAILABLE' && GOING_REASONS.has(refusal.reason)) return 0;
  return refusal.retryDelaySeconds ?? 0;
}

export function retryDelay(
  policy,
  attempt,
  refusal,
  { stale = false, maxAttempts = policy.maxAttempts, elapsedSeconds = null } = {},
) {
  const bound = maxAttempts ?? Infinity;
  const limit = stale && !Number.isFinite(bound) ? STALE_TOKEN_ATTEMPTS : bound;
  if (attempt >= limit) return null;
  // Infinity past 2^1023 (capped below); 0 × Infinity is NaN: 0.
  const growing = policy.initialBackoffSeconds * policy.multiplier ** (attempt - 1) || 0;
  const backoff = Math.min(policy.maxBackoffSeconds, growing) * (1 + policy.jitter * Math.random());
  const seconds = Math.max(backoff, serverDelaySeconds(refusal));
  if (elapsedSeconds !== null && elapsedSeconds + seconds > policy.retryForSeconds) return null;
  return seconds;
}

/** Reports the `retry`-th retry in a row to `logger` (null: none): `info` for the first QUIET_RETRIES, then `warn`. */
export function logRetry(logger, retry, message) {
  if (!logger) return;
  if (retry <= QUIET_RETRIES) logger.info(message);
  else logger.warn(message);
}

export const sleepSeconds = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
