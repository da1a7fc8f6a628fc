// How the loops of a command stream wait for one another without polling.

/**
 * Wakes the one loop waiting on it. A loop checks its condition, and waits
 * only when the condition does not hold yet; so a `notify()` while no one
 * waits need not be kept: the next check sees what it announced.
 */
export class Signal {
  #wake = null;

  wait() {
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
