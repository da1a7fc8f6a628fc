// A bearer token with every call (docs/security.md in the repository,
// "Credentials"): `authorization: Bearer <token>` metadata, added by a
// client interceptor. Every stub made with it sends the token, unary and
// streaming, without each call site saying so, and on a plaintext channel
// as well as over TLS (grpc-js refuses to compose call credentials with
// insecure channel credentials; an interceptor is not credentials).
//
// A short-lived JWT must be replaced before it expires, and the server ends
// a stream opened with one at its exp (UNAUTHENTICATED, TOKEN_EXPIRED). A
// token given as a function is asked for again at every call and every
// reopened stream, so the client retries what a stale token failed
// (REFRESHABLE) and a subscription or a command stream goes on across token
// lifetimes. The function should return the token the application holds
// (renewed by it ahead of expiry), or a promise of it: it is called once per
// call, not once per token.

import grpc from '@grpc/grpc-js';

import { Problem } from './problem.js';
import { REASONS } from './reasons.js';

// UNAUTHENTICATED reasons a fresh token can cure: one that expired (a stream
// the server ended at its token's exp, too), one signed with a JWT key the
// server rotated out (INVALID_TOKEN with one key, UNKNOWN_SIGNING_KEY with a
// key set: its kid withdrawn, or one the server has not fetched yet, which it
// fetches in the background; a stream the withdrawal ended, too), an API key
// it revoked. Retried only when the token is a function, asked again at each
// attempt; a string would fail alike.
export const REFRESHABLE = new Set([
  REASONS.TOKEN_EXPIRED,
  REASONS.INVALID_TOKEN,
  REASONS.UNKNOWN_SIGNING_KEY,
  REASONS.UNKNOWN_API_KEY,
]);

// setTimeout's longest delay; a deadline further off is not watched here.
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/**
 * The client interceptor sending `token`: a string (a JWT or an API key), or
 * a function returning one or a promise of one, asked at the start of every
 * call. A call waits for a promised token, yet still ends at its deadline
 * (DEADLINE_EXCEEDED) or when cancelled (CANCELLED) if the token is late. A
 * function that throws, a promise that rejects or something other than a
 * non-empty string ends the call, before anything is sent, with UNKNOWN
 * ("Getting the token failed: …"), as grpc-js does when call credentials
 * fail.
 */
export function bearerToken(token) {
  if (typeof token !== 'function' && !isToken(token)) {
    throw new TypeError('token: a non-empty string, or a function returning one (or a promise of one)');
  }
  const ask = typeof token === 'function' ? token : () => token;
  return (options, nextCall) => {
    const inner = nextCall(options);
    // While a promised token is awaited: how the call may end meanwhile.
    let waiting = null; // { listener, timer }
    let ended = false;
    // Ends the call without starting it: the inner call is released (its
    // status goes nowhere, it was not started) and the caller gets `code`,
    // on the next tick, as grpc-js reports its own early failures.
    const end = (listener, code, details) => {
      if (ended) return;
      ended = true;
      clearTimeout(waiting?.timer);
      waiting = null;
      inner.cancelWithStatus(code, details);
      process.nextTick(() => listener.onReceiveStatus({ code, details, metadata: new grpc.Metadata() }));
    };
    const failed = (listener, error) =>
      end(listener, grpc.status.UNKNOWN, `Getting the token failed: ${error?.message ?? error}`);
    const begin = (metadata, listener, next, value) => {
      if (!isToken(value)) return failed(listener, new TypeError(`the token function gave ${describe(value)}`));
      metadata.set('authorization', `Bearer ${value}`);
      next(metadata, listener);
    };
    return new grpc.InterceptingCall(inner, {
      start(metadata, listener, next) {
        let value;
        try {
          value = ask();
        } catch (error) {
          failed(listener, error);
          return;
        }
        if (typeof value?.then !== 'function') {
          begin(metadata, listener, next, value);
          return;
        }
        // The inner call's deadline runs from its creation; its status
        // would reach no one before it starts, so the wait watches it too.
        waiting = { listener, timer: undefined };
        const deadline = options.deadline instanceof Date ? options.deadline.getTime() : Number(options.deadline);
        if (deadline - Date.now() < LONGEST_TIMER_MS) {
          const expire = () => end(listener, grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded awaiting the token');
          waiting.timer = setTimeout(expire, Math.max(0, deadline - Date.now()));
        }
        Promise.resolve(value).then(
          (given) => {
            if (ended) return;
            clearTimeout(waiting.timer);
            waiting = null;
            begin(metadata, listener, next, given);
          },
          (error) => failed(listener, error),
        );
      },
      cancel(next) {
        if (waiting !== null) end(waiting.listener, grpc.status.CANCELLED, 'Cancelled on client');
        else next();
      },
    });
  };
}

function isToken(value) {
  return typeof value === 'string' && value !== '';
}

function describe(value) {
  return typeof value === 'string' ? 'an empty string' : `${value === null ? 'null' : typeof value}, not a string`;
}

const PEM_KEYS = new Set(['ca', 'cert', 'key']);

function pem(value, name) {
  if (value === undefined || value === null) return null;
  if (Buffer.isBuffer(value)) return value;
  if (typeof value === 'string' && value.includes('-----BEGIN')) return Buffer.from(value);
  throw new Problem('INVALID_CREDENTIALS', `credentials.${name}: PEM contents (a Buffer or a string), not a path`);
}

/**
 * The channels' ChannelCredentials from the client's `credentials` option:
 * null for plaintext; ChannelCredentials made with this package's grpc-js
 * (the `grpc` export); or PEM contents as a plain object, `{ ca }` for TLS
 * (`ca` left out: the system's roots), `{ ca, cert, key }` for mutual TLS,
 * so that an application with a grpc-js of its own need not make them:
 * grpc-js refuses credentials made by another copy of itself ("Channel
 * credentials must be a ChannelCredentials object"), and so does this, with
 * a reason (INVALID_CREDENTIALS) and what to do instead.
 */
export function channelCredentials(credentials) {
  if (credentials === null || credentials === undefined) return grpc.credentials.createInsecure();
  if (credentials instanceof grpc.ChannelCredentials) return credentials;
  const plain = typeof credentials === 'object' && Object.getPrototypeOf(credentials) === Object.prototype;
  if (!plain) {
    throw new Problem(
      'INVALID_CREDENTIALS',
      'credentials: not ChannelCredentials of this client’s @grpc/grpc-js (another copy’s?): make them with ' +
        "the client's `grpc` export, or give PEM contents: { ca } or { ca, cert, key }",
    );
  }
  const unknown = Object.keys(credentials).filter((key) => !PEM_KEYS.has(key));
  if (unknown.length > 0) {
    throw new Problem('INVALID_CREDENTIALS', `credentials: ${unknown.join(', ')}? Only ca, cert and key`);
  }
  const [ca, cert, key] = [pem(credentials.ca, 'ca'), pem(credentials.cert, 'cert'), pem(credentials.key, 'key')];
  if ((cert === null) !== (key === null)) {
    throw new Problem('INVALID_CREDENTIALS', 'credentials: cert and key go together (mutual TLS), or neither');
  }
  return grpc.credentials.createSsl(ca, key, cert);
}
