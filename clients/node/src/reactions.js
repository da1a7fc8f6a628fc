// ReactionService from Node (chronicle.v1; protos/chronicle/v1/reaction_service.proto):
// where each reaction (a plugin's process manager) stands, and what an
// operator does with the commands it parked and the process states it keeps.
// `client.reactions` is one of these; every call is a unary call of the
// client, retried as `submit` is (chronicle.js), and a refusal is a
// ChronicleError with the server's reason.

/**
 * A reaction's progress (chronicle.v1.ReactionStatus), with the proto's
 * field names; 64-bit counts are numbers, and the two message fields are
 * turned into JavaScript values.
 *
 * @typedef {object} ReactionStatus
 * @property {string} name
 * @property {number} position the log position handled (committed) up to
 * @property {number} log_head the log's last position (position === log_head: caught up)
 * @property {boolean} running whether it runs on the server that answered
 * @property {string} error the failure holding it there now ('' while it runs normally)
 * @property {string[]} aggregate_types
 * @property {string[]} event_types
 * @property {number} parked commands parked, waiting for an operator
 * @property {number} handled
 * @property {number} accepted
 * @property {number} refused
 * @property {number} replayed
 * @property {string} runner the address of the server that runs it ('' when none or not known)
 * @property {string} last_error the last failure it met on the server that answered ('' if none)
 * @property {Date|null} last_error_time when; null if it met none since that server started
 * @property {number|null} retry_interval seconds between tries of a failed batch; null from servers older than it
 * @property {number} start_position where it started when new to the store
 * @property {string} start_from 'end', 'beginning', or '' (not declared)
 * @property {string} on_failure 'stop' or 'park' ('' from servers older than it)
 * @property {number} max_attempts with on_failure 'park': failures of a command before it is parked; else 0
 * @property {number} ignored refusals its on_refused accepted as harmless (IGNORE): neither compensated nor
 *   parked; each counted in `refused` too (0 from servers older than it)
 * @property {number} deadlines deadlines its processes scheduled that are pending (0 from servers older than it)
 * @property {Date|null} next_deadline when the soonest of them is due; null when none is
 * @property {number} deadlines_fired deadlines of its processes that fired on the server that answered since it
 *   started, in commits that went through (0 from servers older than it)
 */

/** A google.protobuf.Timestamp as a Date (null when unset). */
function dateOf(timestamp) {
  return timestamp ? new Date(timestamp.seconds * 1000 + Math.floor(timestamp.nanos / 1e6)) : null;
}

/** `status` (a ReactionStatus as the loader decodes it) with its Timestamps and Duration as Dates and seconds. */
export function reactionStatus(status) {
  const { last_error_time: failedAt, retry_interval: interval, next_deadline: nextDeadline } = status;
  return {
    ...status,
    last_error_time: dateOf(failedAt),
    retry_interval: interval ? interval.seconds + interval.nanos / 1e9 : null,
    next_deadline: dateOf(nextDeadline),
  };
}

/**
 * `state` (a StoredProcessState as the loader decodes it) with its
 * Timestamps as Dates: `deadlines` ({ name, due }, soonest first), `started`
 * and `updated` (null from servers older than them, or for a state an older
 * server wrote).
 */
function processStateOf(state) {
  return {
    ...state,
    deadlines: (state.deadlines ?? []).map(({ name, due }) => ({ name, due: dateOf(due) })),
    started: dateOf(state.started),
    updated: dateOf(state.updated),
  };
}

export class Reactions {
  #call;
  #bound;

  /**
   * `call(method, request, limit)`: the client's retried unary call on a
   * ReactionService stub, within `limit`; `bound({ signal, timeoutSeconds })`:
   * the limit of a call (chronicle.js: a CallLimit), one for a listing's
   * every page.
   *
   * Every method takes `signal` and `timeoutSeconds` among its options: the
   * whole call (a listing: from its first page to its last), retries and the
   * waits between them included; stopped, it rejects (a listing's loop
   * throws) at once CANCELLED or DEADLINE_EXCEEDED.
   */
  constructor(call, bound) {
    this.#call = call;
    this.#bound = bound;
  }

  /** Every loaded reaction the caller may read: ReactionStatus[], by name. */
  async list({ signal, timeoutSeconds } = {}) {
    const listed = await this.#call('ListReactions', {}, this.#bound({ signal, timeoutSeconds }));
    return listed.reactions.map(reactionStatus);
  }

  /** One reaction's ReactionStatus; rejects NOT_FOUND REACTION_NOT_FOUND for one no loaded plugin declares. */
  async get(name, { signal, timeoutSeconds } = {}) {
    return reactionStatus(await this.#call('GetReaction', { name }, this.#bound({ signal, timeoutSeconds })));
  }

  /**
   * Every command `reaction` parked, oldest first (chronicle.v1.ParkedCommand,
   * with `command` still packed: `unpack(parked.command)` decodes it), read a
   * page at a time: the server bounds each page by bytes too, since a parked
   * command carries its metadata, so one answer may not hold them all. This
   * follows `next_page_token` to the last page; each page is retried as a
   * unary call. `pageSize` (0: the server's, 1,000) bounds a page's commands;
   * over 1,000 is INVALID_ARGUMENT PAGE_SIZE_TOO_LARGE. A command replayed or
   * dismissed while this is iterated is left out of the later pages, and
   * one parked meanwhile is on a later page. Rejects NOT_FOUND
   * REACTION_NOT_FOUND for a reaction no loaded plugin declares.
   */
  async *parked(reaction, { pageSize = 0, signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds });
    let token = '';
    do {
      const request = { reaction, page_size: pageSize, page_token: token };
      const page = await this.#call('ListParkedCommands', request, limit);
      yield* page.commands;
      token = page.next_page_token;
    } while (token);
  }

  /**
   * Sends a parked command again, under a new id: { accepted, command_id,
   * reason, message }. Accepted: it leaves the parked commands; refused
   * again (`accepted` false, with the refusal's `reason` and `message`): it
   * stays parked. Takes the admin grant, and the server that runs the
   * reaction: elsewhere FAILED_PRECONDITION REACTION_RUNS_ELSEWHERE (its
   * address in `metadata.runner` when known). NOT_FOUND
   * PARKED_COMMAND_NOT_FOUND for an id not parked (as a retry whose first
   * answer was lost finds one that was accepted).
   */
  async replay(reaction, commandId, { signal, timeoutSeconds } = {}) {
    const request = { reaction, command_id: commandId };
    return this.#call('ReplayParkedCommand', request, this.#bound({ signal, timeoutSeconds }));
  }

  /** Removes a parked command without sending it. As `replay` for where, who and a missing id. */
  async dismiss(reaction, commandId, { signal, timeoutSeconds } = {}) {
    const request = { reaction, command_id: commandId };
    await this.#call('DismissParkedCommand', request, this.#bound({ signal, timeoutSeconds }));
  }

  /**
   * Sends every parked command of `reaction` again (or those refused with
   * `reason`), oldest first, each once: { accepted, refused }, the refused
   * ones still parked. Stops at the first failure that is not a refusal
   * (those sent before it stay sent). As `replay` for where and who.
   */
  async replayAll(reaction, { reason = '', signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds });
    const { accepted, refused } = await this.#call('ReplayAllParkedCommands', { reaction, reason }, limit);
    return { accepted, refused };
  }

  /**
   * Removes every parked command of `reaction` (or those refused with
   * `reason`) without sending them, in one transaction: how many. As
   * `replay` for where and who.
   */
  async dismissAll(reaction, { reason = '', signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds });
    return (await this.#call('DismissAllParkedCommands', { reaction, reason }, limit)).dismissed;
  }

  /**
   * Moves the checkpoint of `reaction` to `to`: a log position, 'start' (0)
   * or 'end' (the log's head): back, it handles the events after it again,
   * its commands under the same ids (answered from their records where the
   * store has them; imported events stay history). { previous_position,
   * position, log_head }. Rejects INVALID_ARGUMENT POSITION_BEYOND_HEAD for
   * a position past the log's head, FAILED_PRECONDITION
   * COMMAND_RECORDS_PRUNED back past the server's command retention unless
   * `evenIfRecordsPruned`. As `replay` for where and who.
   */
  async reset(reaction, to, { evenIfRecordsPruned = false, signal, timeoutSeconds } = {}) {
    const request = {
      name: reaction,
      position: 0,
      to_end: to === 'end',
      even_if_records_pruned: evenIfRecordsPruned,
    };
    if (to !== 'start' && to !== 'end') request.position = to;
    const { previous_position, position, log_head } = await this.#call(
      'ResetReaction',
      request,
      this.#bound({ signal, timeoutSeconds }),
    );
    return { previous_position, position, log_head };
  }

  /**
   * Deletes the state `reaction` keeps under `stateKey` (one process's): the
   * way out of a state it cannot load (DOCUMENT_TYPE_MISMATCH, with the key
   * in the error's metadata `state_key`; STATE_UPCAST_FAILED); the process
   * goes on from an empty state at its next event. NOT_FOUND
   * PROCESS_STATE_NOT_FOUND if it keeps none under that key (as a retry
   * whose first answer was lost finds it); INVALID_ARGUMENT
   * INVALID_STATE_KEY for a key that is no identifier. As `replay` for where
   * and who.
   */
  async dropProcessState(reaction, stateKey, { signal, timeoutSeconds } = {}) {
    const request = { reaction, state_key: stateKey };
    await this.#call('DropProcessState', request, this.#bound({ signal, timeoutSeconds }));
  }

  /**
   * Deletes the states `reaction` keeps under each of `stateKeys` (distinct,
   * at most 1,000) in one transaction: all, or none when it keeps no state
   * under one of them (NOT_FOUND PROCESS_STATE_NOT_FOUND, `metadata.state_key`
   * the first such key and `metadata.missing` how many); how many were
   * dropped. As `replay` for where and who.
   */
  async dropProcessStates(reaction, stateKeys, { signal, timeoutSeconds } = {}) {
    // The first in state_key, the field every server reads (none: INVALID_STATE_KEY).
    const [first = '', ...rest] = stateKeys;
    const request = { reaction, state_key: first, state_keys: rest };
    return (await this.#call('DropProcessState', request, this.#bound({ signal, timeoutSeconds }))).dropped;
  }

  /**
   * The state `reaction` keeps under `stateKey` (chronicle.v1.StoredProcessState:
   * `state_key`, `state` still packed, `state_type` its full name,
   * `state_json` the state as JSON through the server's plugins, '' for a
   * type the reaction no longer knows, `subjects`, its pending `deadlines`
   * as { name, due } with `due` a Date, soonest first, and when the process
   * began and last changed, `started` and `updated`, Dates: commit times),
   * with the reaction's checkpoint as `position`. Takes the admin grant (a state may hold
   * personal data; each read is audited). Rejects NOT_FOUND
   * PROCESS_STATE_NOT_FOUND if it keeps none there, REACTION_NOT_FOUND for
   * a reaction no loaded plugin declares.
   */
  async processState(reaction, stateKey, { signal, timeoutSeconds } = {}) {
    const request = { reaction, state_key: stateKey };
    const { state, position } = await this.#call('GetProcessState', request, this.#bound({ signal, timeoutSeconds }));
    return { ...processStateOf(state), position };
  }

  /**
   * Every state `reaction` keeps whose key starts with `prefix`, by key, as
   * `processState` shows each (without `position`), read a page at a time
   * (`pageSize`, 0: the server's 100; at most 1,000). Rejects
   * FAILED_PRECONDITION DOCUMENT_KEYS_HIDDEN on a server with encryption at
   * rest, which cannot list them.
   */
  async *processStates(reaction, { prefix = '', pageSize = 0, signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds }); // one bound over every page
    let token = '';
    do {
      const request = { reaction, key_prefix: prefix, page_size: pageSize, page_token: token };
      const page = await this.#call('ListProcessStates', request, limit);
      yield* page.states.map(processStateOf);
      token = page.next_page_token;
    } while (token);
  }
}
