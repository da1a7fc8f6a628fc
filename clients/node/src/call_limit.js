// A caller's bounds on one call: an AbortSignal and a deadline for the
// whole call (every retry and the waits between them included), so a
// caller that gives up is answered at once rather than after the retry
// policy's window.

/**
 * `signal` (an AbortSignal, or none) and `timeoutSeconds` (null: none) as
 * one bound. `refusal(code, reason, message)` makes the error a stopped
 * call rejects with (chronicle.js passes one making a ChronicleError, so
 * this module needs nothing of it).
 */
export class CallLimit {
  constructor({ signal = null, timeoutSeconds = null } = {}, refusal) {
    if (timeoutSeconds !== null && !(timeoutSeconds > 0)) {
      throw new RangeError(`timeoutSeconds must be positive (or null: no bound), got ${timeoutSeconds}`);
    }
    this.signal = signal;
    this.deadline = timeoutSeconds === null ? null : Date.now() + timeoutSeconds * 1000;
    this.timeoutSeconds = timeoutSeconds;
    this.refusal = refusal;
    // Set when a deadline timer fires: Node's timers may fire a millisecond
    // before Date.now() reaches the deadline, and a timer that fired means
    // the deadline passed, not that the call was cancelled.
    this.expired = false;
  }

  /** Whether this limit bounds anything: a call without one takes the plain path. */
  get bounded() {
    return this.signal !== null || this.deadline !== null;
  }

  /** Milliseconds left before the deadline (Infinity: none). */
  remainingMs() {
    return this.deadline === null ? Infinity : Math.max(0, this.deadline - Date.now());
  }

  /** The error the call stops with now, or null while it may go on. */
  stopped() {
    if (this.signal?.aborted) return this.refusal('CANCELLED', 'CANCELLED', 'the call was aborted by its AbortSignal');
    if (this.deadline !== null && (this.expired || Date.now() >= this.deadline)) {
      return this.refusal('DEADLINE_EXCEEDED', 'DEADLINE_EXCEEDED', `the call took more than ${this.timeoutSeconds} s`);
    }
    return null;
  }

  /** Throws what the call stops with, if it must stop. */
  check() {
    const stop = this.stopped();
    if (stop !== null) throw stop;
  }

  /**
   * `promise`, unless the signal aborts or the deadline passes first: then
   * `onStop()` runs (to cancel the work behind `promise`) and this rejects
   * with the stopping error.
   */
  race(promise, onStop = () => {}) {
    if (!this.bounded) return promise;
    return new Promise((resolve, reject) => {
      let timer = null;
      const stop = () => {
        cleanup();
        onStop();
        reject(this.stopped() ?? this.refusal('CANCELLED', 'CANCELLED', 'the call was stopped'));
      };
      const cleanup = () => {
        if (timer !== null) clearTimeout(timer);
        this.signal?.removeEventListener('abort', stop);
      };
      const early = this.stopped();
      if (early !== null) {
        promise.catch(() => {}); // its end, cancelled, is no one's concern now
        onStop();
        reject(early);
        return;
      }
      this.signal?.addEventListener('abort', stop, { once: true });
      if (this.deadline !== null) {
        timer = setTimeout(() => {
          this.expired = true;
          stop();
        }, this.remainingMs());
      }
      promise.then(
        (value) => {
          cleanup();
          resolve(value);
        },
        (error) => {
          cleanup();
          reject(error);
        },
      );
    });
  }

  /** Waits `seconds`, rejecting at once if the call is stopped meanwhile. */
  sleep(seconds) {
    let timer;
    const wait = new Promise((resolve) => (timer = setTimeout(resolve, seconds * 1000)));
    return this.race(wait, () => clearTimeout(timer));
  }
}
