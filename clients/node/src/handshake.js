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
    `${what}: the TLS handshake with ${address} failed${lasted}: ${failure} (check the client's credentials: ` +
      'TLS against a plaintext server, or a CA that did not sign its certificate)',
    { address, tls_error: failure },
  );
  error.cause = refusal;
  return error;
}

/**
 * What a unary call (or a read) that `refusal` ended on `address` throws
 * instead of retrying: UNAVAILABLE TLS_HANDSHAKE_FAILED when the failure is
 * a certain TLS one (certainTlsFailure), at the first attempt; null
 * otherwise (retried as before, a connection cut during the handshake too).
 */
export function tlsRefusal(refusal, { what, address, refuse }) {
  const failure = certainTlsFailure(refusal);
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
  constructor({ what, retryForSeconds, logger, refuse, clock = Date.now }) {
    this.what = what;
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
  failed(refusal, address) {
    const failure = tlsFailure(refusal);
    if (failure === null) {
      this.since = null; // another failure: the server may be away, which is waited out
      return;
    }
    const now = this.clock();
    if (this.since === null) {
      this.since = now;
      this.logger?.warn(
        `${this.what}: the TLS handshake with ${address} failed: ${failure} (check the client's credentials: ` +
          'TLS against a plaintext server, or a CA that did not sign its certificate); trying again',
      );
    }
    const seconds = (now - this.since) / 1000;
    if (seconds >= this.retryForSeconds) {
      const { what, refuse } = this;
      throw handshakeFailed(refusal, { what, address, failure, refuse, lasted: ` for ${seconds.toFixed(1)} s` });
    }
  }
}
