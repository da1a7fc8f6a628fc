// A call that cannot connect because TLS is misconfigured (the client's
// TLS against a plaintext server, a CA that did not sign the server's
// certificate, a name the certificate does not carry) fails every attempt
// UNAVAILABLE, as a server that is away does: retried, a unary call would
// spend its whole retry window and a stream would wait for ever, without
// saying why. grpc-js names the TLS error only in the status's details
// ("No connection established. Last error: …"), which is what this reads.
// A unary call (tlsRefusal) fails at once on a failure the TLS library
// itself raised (certain: it does not cure itself); a stream
// (HandshakeWatch) warns and stops after the retry window.
//
// A plaintext client at a TLS server gets no TLS error at all: the server
// closes the connection before HTTP/2 begins, and grpc-js says only "Failed
// to connect", as of a plaintext server that closed it at its
// --max-connections. A plaintext client tells them apart by asking the
// address for a TLS handshake (speaksTls): a TLS server completes one, a
// plaintext server never does, whatever its load.
//
// A TLS client without a client certificate at a server that requires one
// (mutual TLS) gets no TLS error either: in TLS 1.3 the client's side of
// the handshake ends before the server has checked the client's
// certificate, and the server then closes the connection, which grpc-js
// reports as "Failed to connect" too. A TLS client tells them apart by a
// handshake of its own with its own TLS settings (closedAfterHandshake): a
// server that takes the client sends HTTP/2's settings at once; one that
// refuses its certificate (or its lack of one) closes the connection
// without a byte; one at its --max-connections closed it before the
// handshake.

import net from 'node:net';
import tls from 'node:tls';

// What OpenSSL and Node's TLS say of a failed handshake, as grpc-js passes it on.
const TLS_ERROR = new RegExp(
  [
    'SSL routines',
    'wrong version number',
    'certificate',
    'self[- ]signed',
    'altnames',
    'unable to (verify|get local issuer)',
    'TLS',
    'handshake',
  ].join('|'),
  'i',
);
// What grpc-js says when the connection closed before the handshake was
// done: a TLS server that refused this client, but also a server at its
// --max-connections, or one that is stopping, which a retry may get past.
const CUT_SHORT = /disconnected before secure TLS connection/i;
// What grpc-js says of a plaintext connection the server closed before
// HTTP/2's settings came ("Failed to connect (<time>)").
const CLOSED_AT_ONCE = /Last error: Failed to connect\b/;
// The failure named when a plaintext client's server speaks TLS, and what to do.
const PLAINTEXT_AT_TLS = 'the server speaks TLS and this client plaintext';
const CREDENTIALS_HINT =
  "check the client's credentials: TLS against a plaintext server, or a CA that did not sign its certificate";
const PLAINTEXT_HINT = 'give the client credentials, { ca } for TLS';
// The failures named when a server closed a TLS client's connection after
// the handshake, before HTTP/2 began: it refused the client's certificate,
// or the lack of one (closedAfterHandshake).
export const CLIENT_CERTIFICATE_REQUIRED = 'the server requires a client certificate and this client gives none';
export const CLIENT_CERTIFICATE_REFUSED =
  "the server closed the connection after the handshake: it refused this client's certificate";
const HINTS = new Map([
  [PLAINTEXT_AT_TLS, PLAINTEXT_HINT],
  [CLIENT_CERTIFICATE_REQUIRED, 'give the client its certificate and key, { ca, cert, key } for mutual TLS'],
  [CLIENT_CERTIFICATE_REFUSED, "check the client's certificate: one signed by a CA the server takes clients of"],
]);
// How long the TLS probe of a plaintext client waits for a handshake.
export const PROBE_MS = 2000;
const LAST_ERROR = /Last error: (?:Error: )?([\s\S]*?)(?:\.? Resolution note:[\s\S]*)?$/;

/**
 * The TLS failure that `refusal` (a ChronicleError) came of, in the words
 * of the TLS library, or null for any other failure. Only a status gRPC
 * itself made (no ErrorInfo: the reason is the code) counts: a server that
 * answered got past the handshake.
 */
export function tlsFailure(refusal) {
  if (refusal.code !== 'UNAVAILABLE' || refusal.reason !== refusal.code) return null;
  const details = String(refusal.cause?.details ?? refusal.message);
  if (!TLS_ERROR.test(details)) return null;
  return (LAST_ERROR.exec(details)?.[1] ?? details).trim();
}

/**
 * The TLS failure of `refusal` (tlsFailure) when it is certain: the TLS
 * library refused the server (not TLS, a certificate it does not trust, a
 * name the certificate does not carry), which no retry cures; null for a
 * connection that was only cut during the handshake, and any other failure.
 */
export function certainTlsFailure(refusal) {
  const failure = tlsFailure(refusal);
  return failure === null || CUT_SHORT.test(failure) ? null : failure;
}

/** `address` (`host:port`, `[v6]:port`, with or without `dns:`) as { host, port }; null for another form. */
function hostAndPort(address) {
  const found = /^(?:dns:(?:\/\/[^/]*\/)?)?(?:\[([^\]]+)\]|([^:/[\]]+)):(\d+)$/.exec(String(address));
  return found === null ? null : { host: found[1] ?? found[2], port: Number(found[3]) };
}

/**
 * Whether `address` completes a TLS handshake within `ms`: the server
 * speaks TLS. Nothing is sent but the handshake, and its certificate is
 * not checked (the question is only whether it speaks TLS).
 */
export function speaksTls(address, ms = PROBE_MS) {
  const target = hostAndPort(address);
  if (target === null) return Promise.resolve(false);
  const { host, port } = target;
  return new Promise((resolve) => {
    const servername = net.isIP(host) ? undefined : host;
    const socket = tls.connect({ host, port, servername, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    const done = (answer) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(false), ms);
    socket.once('secureConnect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * How a TLS handshake with `address`, made with `secureContext` (the
 * client's own certificate, if any), ends within `ms`: { certificateGiven }
 * when the server completed it and then closed the connection without
 * sending a byte (a server that takes the client sends HTTP/2's settings at
 * once), so it refused the client's certificate or its lack of one; null
 * when the server sent something, the handshake did not complete (a server
 * at its --max-connections closes the connection first), or nothing came
 * within `ms`. Nothing is sent but the handshake; the server's certificate
 * is not checked (grpc-js says so itself when that is what failed).
 */
export function closedAfterHandshake(address, secureContext, ms = PROBE_MS) {
  const target = hostAndPort(address);
  if (target === null) return Promise.resolve(null);
  const { host, port } = target;
  return new Promise((resolve) => {
    const servername = net.isIP(host) ? undefined : host;
    const options = { host, port, servername, secureContext, rejectUnauthorized: false, ALPNProtocols: ['h2'] };
    const socket = tls.connect(options);
    let certificateGiven = null; // set at the handshake's end
    const done = (answer) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(null), ms);
    socket.once('secureConnect', () => {
      certificateGiven = Object.keys(socket.getCertificate() ?? {}).length > 0;
    });
    socket.once('data', () => done(null));
    const closed = () => done(certificateGiven === null ? null : { certificateGiven });
    socket.once('error', closed);
    socket.once('close', closed);
  });
}

/**
 * For a TLS client: CLIENT_CERTIFICATE_REQUIRED (it gave none) or
 * CLIENT_CERTIFICATE_REFUSED when `refusal` is gRPC's own UNAVAILABLE of a
 * connection closed before HTTP/2 began and a handshake made with the
 * client's `secureContext` is closed by the server right after it ends
 * (`probe`, closedAfterHandshake); null otherwise.
 */
export async function certificateRefused(refusal, address, secureContext, probe = closedAfterHandshake) {
  if (refusal.code !== 'UNAVAILABLE' || refusal.reason !== refusal.code) return null;
  const details = String(refusal.cause?.details ?? refusal.message);
  if (!CLOSED_AT_ONCE.test(details) && !CUT_SHORT.test(details)) return null;
  const closed = await probe(address, secureContext);
  if (closed === null) return null;
  return closed.certificateGiven ? CLIENT_CERTIFICATE_REFUSED : CLIENT_CERTIFICATE_REQUIRED;
}

/**
 * What the client's own handshake says of `refusal`, which gRPC's words
 * did not name a TLS failure: a plaintext client's server speaks TLS
 * (plaintextAtTls), a TLS client's server refused its certificate
 * (certificateRefused, given the client's `secureContext`); null otherwise.
 */
function probed(refusal, address, { plaintext, secureContext }) {
  if (plaintext) return plaintextAtTls(refusal, address);
  if (secureContext) return certificateRefused(refusal, address, secureContext);
  return null;
}

/**
 * For a plaintext client: PLAINTEXT_AT_TLS when `refusal` is gRPC's own
 * UNAVAILABLE of a connection closed before HTTP/2 began and `address`
 * speaks TLS (`probe`, speaksTls); null otherwise (a server at its
 * connection limit, say, which a retry may get past).
 */
export async function plaintextAtTls(refusal, address, probe = speaksTls) {
  if (refusal.code !== 'UNAVAILABLE' || refusal.reason !== refusal.code) return null;
  if (!CLOSED_AT_ONCE.test(String(refusal.cause?.details ?? refusal.message))) return null;
  return (await probe(address)) ? PLAINTEXT_AT_TLS : null;
}

/**
 * The UNAVAILABLE TLS_HANDSHAKE_FAILED error (made by `refuse`,
 * chronicle.js's clientError) for `refusal`, the failure `failure` of `what`
 * on `address`, `refusal` as its `cause`: what a unary call and a stream
 * (HandshakeWatch) throw.
 */
export function handshakeFailed(refusal, { what, address, failure, refuse, lasted = '' }) {
  const error = refuse(
    'UNAVAILABLE',
    'TLS_HANDSHAKE_FAILED',
    `${what}: the TLS handshake with ${address} failed${lasted}: ${failure} ` +
      `(${HINTS.get(failure) ?? CREDENTIALS_HINT})`,
    { address, tls_error: failure },
  );
  error.cause = refusal;
  return error;
}

/**
 * What a unary call (or a read) that `refusal` ended on `address` throws
 * instead of retrying: UNAVAILABLE TLS_HANDSHAKE_FAILED when the failure is
 * a certain TLS one (certainTlsFailure), or, for a `plaintext` client, the
 * server speaks TLS (plaintextAtTls), or, for a TLS client (its
 * `secureContext`), the server refused its certificate or its lack of one
 * (certificateRefused), at the first attempt; null otherwise (retried as
 * before, a connection cut during the handshake too).
 */
export async function tlsRefusal(refusal, { what, address, refuse, plaintext = false, secureContext = null }) {
  const failure = certainTlsFailure(refusal) ?? (await probed(refusal, address, { plaintext, secureContext }));
  return failure === null ? null : handshakeFailed(refusal, { what, address, failure, refuse });
}

/**
 * Watches one stream's outages for TLS failures: the first of an outage (a
 * run of failed attempts with nothing received) is said to `logger.warn`,
 * whatever the retry count, naming the address and the TLS error; once
 * TLS failures alone have lasted `retryForSeconds` (the retry policy's
 * window for unary calls; null or Infinity: no bound), `failed` throws
 * UNAVAILABLE TLS_HANDSHAKE_FAILED with the last failure as its `cause`,
 * as a unary call would after its window: a misconfiguration does not
 * cure itself. `refuse(code, reason, message, metadata)` makes the error
 * (chronicle.js's clientError).
 */
export class HandshakeWatch {
  constructor({ what, retryForSeconds, logger, refuse, plaintext = false, secureContext = null, clock = Date.now }) {
    this.what = what;
    this.plaintext = plaintext; // a plaintext client: a connection closed at once is asked whether it speaks TLS
    this.secureContext = secureContext; // a TLS client's: a connection closed at once is asked whether it is refused
    this.retryForSeconds = retryForSeconds ?? Infinity;
    this.logger = logger;
    this.refuse = refuse;
    this.clock = clock;
    this.since = null; // when this outage's first TLS failure came
  }

  /** Something was received: the outage, if any, is over. */
  received() {
    this.since = null;
  }

  /** An attempt on `address` failed with `refusal`: warns, or throws past the window. */
  async failed(refusal, address) {
    const { plaintext, secureContext } = this;
    const failure = tlsFailure(refusal) ?? (await probed(refusal, address, { plaintext, secureContext }));
    if (failure === null) {
      this.since = null; // another failure: the server may be away, which is waited out
      return;
    }
    const now = this.clock();
    if (this.since === null) {
      this.since = now;
      const hint = HINTS.get(failure) ?? CREDENTIALS_HINT;
      this.logger?.warn(`${this.what}: the TLS handshake with ${address} failed: ${failure} (${hint}); trying again`);
    }
    const seconds = (now - this.since) / 1000;
    if (seconds >= this.retryForSeconds) {
      const { what, refuse } = this;
      throw handshakeFailed(refusal, { what, address, failure, refuse, lasted: ` for ${seconds.toFixed(1)} s` });
    }
  }
}
