// A stream that cannot connect because TLS is misconfigured (the client's
// TLS against a plaintext server, a CA that did not sign the server's
// certificate, a name the certificate does not carry) fails every attempt
// UNAVAILABLE, as a server that is away does; reopened without a bound, it
// would wait for ever without saying why. grpc-js names the TLS error only
// in the status's details ("No connection established. Last error: …"),
// which is what this reads.

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
      const error = this.refuse(
        'UNAVAILABLE',
        'TLS_HANDSHAKE_FAILED',
        `${this.what}: the TLS handshake with ${address} failed for ${seconds.toFixed(1)} s: ${failure}`,
        { address, tls_error: failure },
      );
      error.cause = refusal;
      throw error;
    }
  }
}
