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

import { Signal } from './signal.js';

// How a lane's call ends when its member is gone or going (killed, the
// connection lost, a server stopping): the member is marked down, so the
// lane reopens on another one, and unary sends step around it too (see
// memberGone for the statuses of a live member's that end a call so).
const MEMBER_GONE = new Set(['UNAVAILABLE', 'CANCELLED']);
// Reasons a member gives when it is going: it ends its calls as it stops.
const GOING_REASONS = new Set(['SHUTTING_DOWN']);
// The status gRPC itself (the server's core, so every client sees the same
// grpc-message) ends a call with once the call's connection outlived the
// server's --max-connection-age-seconds and its grace: the member closed an
// old connection (it sent GOAWAY at the age, and the channel opened a new
// one for new calls meanwhile), and is as alive as before.
const CONNECTION_AGED = 'max connection age';

/**
 * Whether the member whose call `broken` (a ChronicleError) ended is gone or
 * going, so the lane moves to another member; otherwise it reopens on the
 * same one, with the stream's backoff and attempts as for any break (the
 * Python client's service/client/routed_stream.py, member_gone, is the same).
 *
 * A status that carries Chronicle's ErrorInfo was sent by a running member,
 * which said why it ended the call (CREDENTIALS_CHANGED: its key or policy
 * files were read again and the caller's grants changed; the caller is to
 * open the call again there): the member is gone only if its reason says it
 * is going. A status without one (the reason is then the code) is gRPC's
 * own: the connection broke or was refused, or the server stopped and
 * cancelled its calls, and the member counts as gone: it cannot be told from
 * one that was killed without trying it again, and a call to try it first
 * would hold up every failover (a member that is only unlucky is tried again
 * after a second). Except CONNECTION_AGED, which only a live server sends.
 * Should a gRPC release word that status otherwise, a lane ended by a
 * connection's age moves for a second as it did before: a warm cache lost,
 * never a command.
 */
function memberGone(broken) {
  if (!MEMBER_GONE.has(broken.code)) return false;
  if (broken.reason !== broken.code) return GOING_REASONS.has(broken.reason); // an ErrorInfo: the member answered
  return (broken.cause?.details ?? broken.message) !== CONNECTION_AGED;
}

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
    this.lanes = new Map(); // member address → { home, address, input, stream, results, failure }
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
        await this.changed.wait();
      }
    } finally {
      this.stop();
    }
  }

  stop() {
    this.stopped = true;
    this.space.notify();
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
      lane = { home, address: home, input: new Inbox(), stream: null, results: [], failure: null };
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
   * the member the call was on down when memberGone says so.
   */
  stubFor(lane, broken) {
    if (broken !== null) {
      if (memberGone(broken)) this.routes.unreachable(lane.address);
      lane.address = this.routes.memberFor(lane.home);
    }
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
