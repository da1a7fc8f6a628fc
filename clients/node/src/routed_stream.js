// submitStream with `routing: true`: each command over a stream to the
// replica that owns its aggregate, the results in the order the commands
// were taken, as with one stream (the Python client's
// service/client/routed_stream.py does the same).
//
// One lane per member: a command stream of its own (ChronicleClient's
// #commandStream in chronicle.js: the window, pages, the fallback to
// SubmitStream, a broken call opened again with its unanswered commands
// sent first, with their ids), fed the commands whose aggregates that member owns. The commands of
// one aggregate stay in one lane for as long as any of them is unanswered,
// even if the topology changes meanwhile: the server runs one stream's
// commands for one aggregate in the order sent, two streams' in no
// particular order. A command for an aggregate with nothing unanswered goes
// to the lane of its owner now.

import { memberGone, unanswered } from './routing.js';
import { Signal } from './signal.js';

export class RoutedStream {
  /**
   * `routes`: the client's Routes; `source`: an iterator of the caller's
   * commands; `window`: how many may be taken and not handed back, over all
   * lanes; `openLane(input, stubFor)`: a command stream ({ results, close })
   * taking its commands from the iterator `input` and opening each call on
   * the stub `stubFor(broken)` gives.
   */
  constructor(routes, source, { window, openLane }) {
    this.routes = routes;
    this.source = source;
    this.window = window;
    this.openLane = openLane;
    // member address → { home, address, heard, input, stream, results, failure }: `address` is
    // where the lane's call is, `heard` when that call opened or last answered (routes.now()).
    this.lanes = new Map();
    this.order = []; // { lane, aggregateId } of each command taken and not handed back, in order
    this.pinned = new Map(); // aggregate id → { lane, unanswered }
    this.exhausted = false; // every command was taken from `source`
    this.failure = null; // what taking the next command threw
    this.stopped = false;
    this.changed = new Signal(); // wakes the results loop: a command taken, a result, a failure
    this.space = new Signal(); // wakes the feeder: a result handed back
  }

  /** The results of all lanes, in the order their commands were taken. */
  async *results() {
    this.feed();
    try {
      for (;;) {
        const head = this.order[0];
        if (head !== undefined && head.lane.results.length > 0) {
          this.order.shift();
          this.release(head.aggregateId);
          this.space.notify();
          yield head.lane.results.shift();
          continue;
        }
        // Nothing to hand back yet: the results before a failure come first.
        if (this.failure !== null) throw this.failure;
        if (head === undefined && this.exhausted) return;
        if (head !== undefined && head.lane.failure !== null) throw head.lane.failure;
        if (this.stopped) return; // stop() from outside (the caller's signal or deadline)
        await this.changed.wait();
      }
    } finally {
      this.stop();
    }
  }

  /** Ends the stream: its lanes' calls, the feeding, and the results loop (it returns). */
  stop() {
    this.stopped = true;
    this.space.notify();
    this.changed.notify();
    for (const lane of this.lanes.values()) {
      lane.input.end();
      lane.stream.close();
    }
  }

  /** Takes the caller's commands while the window has room, each into its lane. */
  async feed() {
    try {
      await this.routes.ready; // the first topology, as for unary sends
      while (!this.stopped) {
        if (this.order.length >= this.window) {
          await this.space.wait();
          continue;
        }
        const next = await this.source.next();
        if (this.stopped) break;
        if (next.done) {
          this.exhausted = true;
          for (const lane of this.lanes.values()) lane.input.end(); // each lane's call ends once answered
          this.changed.notify();
          return;
        }
        const { aggregateId } = next.value;
        const lane = this.laneOf(aggregateId);
        this.order.push({ lane, aggregateId });
        this.routes.streamed.set(lane.address, (this.routes.streamed.get(lane.address) ?? 0) + 1);
        lane.input.push(next.value);
        this.changed.notify();
      }
      await this.source.return?.();
    } catch (error) {
      this.failure = error;
      this.changed.notify();
    }
  }

  /** The lane of `aggregateId`'s next command: the one its unanswered commands are in, else its owner's. */
  laneOf(aggregateId) {
    let pin = this.pinned.get(aggregateId);
    if (pin === undefined) {
      pin = { lane: this.laneFor(this.routes.route(aggregateId)), unanswered: 0 };
      this.pinned.set(aggregateId, pin);
    }
    pin.unanswered += 1;
    return pin.lane;
  }

  /** One of `aggregateId`'s commands was handed back. */
  release(aggregateId) {
    const pin = this.pinned.get(aggregateId);
    pin.unanswered -= 1;
    if (pin.unanswered === 0) this.pinned.delete(aggregateId);
  }

  /** Member `home`'s lane, opened on first use. */
  laneFor(home) {
    let lane = this.lanes.get(home);
    if (lane === undefined) {
      lane = { home, address: home, heard: null, input: new Inbox(), stream: null, results: [], failure: null };
      lane.stream = this.openLane(lane.input.take(), (broken) => this.stubFor(lane, broken));
      this.lanes.set(home, lane);
      this.drain(lane);
    }
    return lane;
  }

  /**
   * The CommandService stub for `lane`'s next call: its own member's, unless
   * that member is down, then another live member's. `broken`: how the
   * lane's last call ended (its ChronicleError; null: none did); it marks
   * the member the call was on down when memberGone says so (a call that
   * last heard from it before its latest down period ended adds nothing:
   * Routes.unreachable).
   */
  stubFor(lane, broken) {
    if (broken !== null) {
      if (memberGone(broken) || unanswered(broken)) this.routes.unreachable(lane.address, lane.heard);
      lane.address = this.routes.memberFor(lane.home);
    }
    lane.heard = this.routes.now();
    return this.routes.stubsOf(lane.address).commands;
  }

  /**
   * Keeps `lane`'s results as they come, whichever command the caller waits
   * for: the lane's window empties and a broken call of its is reopened even
   * while the caller waits on another lane.
   */
  async drain(lane) {
    try {
      for await (const result of lane.stream.results) {
        this.routes.answered(lane.address);
        lane.heard = this.routes.now();
        lane.results.push(result);
        this.changed.notify();
      }
    } catch (error) {
      lane.failure = error; // thrown once the caller reaches the lane's first unanswered command
      this.changed.notify();
    }
  }
}

/** The commands given to a lane, taken by its stream as an async iterator; `end()` after the last. */
class Inbox {
  constructor() {
    this.items = [];
    this.ended = false;
    this.arrived = new Signal();
  }

  push(item) {
    this.items.push(item);
    this.arrived.notify();
  }

  end() {
    this.ended = true;
    this.arrived.notify();
  }

  async *take() {
    for (;;) {
      if (this.items.length > 0) yield this.items.shift();
      else if (this.ended) return;
      else await this.arrived.wait();
    }
  }
}
