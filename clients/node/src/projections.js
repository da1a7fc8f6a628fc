// ProjectionService from Node (chronicle.v1; protos/chronicle/v1/projection_service.proto):
// the plugins' read models. A projection's documents, one by key or page
// after page by key prefix, where it stands, the events it parked, and a
// rebuild. `client.projections` is one of these; every call (and every page
// of a listing) is a unary call of the client, retried as `submit` is
// (chronicle.js), and a refusal is a ChronicleError with the server's reason.
//
// Read your own writes: pass a submit's `position` as `minPosition`, and the
// read waits until the projection has applied the log that far. One still
// behind after the server's wait (--read-wait-seconds) is UNAVAILABLE
// PROJECTION_BEHIND with a RetryInfo, retried for the retry policy's
// `retryForSeconds`; one stopped on a handler's failure at or before that
// position is FAILED_PRECONDITION PROJECTION_FAILED, which is not retried (it
// lasts until the plugin is fixed; the event's position is
// `metadata.failed_at`).

/** A google.protobuf.Timestamp as the loader decodes it, as a Date (null when unset). */
export function date(timestamp) {
  return timestamp ? new Date(timestamp.seconds * 1000 + Math.floor(timestamp.nanos / 1e6)) : null;
}

/**
 * Where a projection stands (chronicle.v1.GetProjectionResponse), with the
 * proto's field names; 64-bit numbers are numbers, `last_error_time` a Date
 * (null if none) and `retry_interval` seconds (null from servers older than
 * it).
 *
 * @typedef {object} ProjectionStatus
 * @property {string} name
 * @property {number} position the log position applied (committed) up to
 * @property {number} log_head the log's last position (position === log_head: caught up)
 * @property {boolean} running whether it runs on the server that answered
 * @property {string} error the failure holding it there now ('' while it runs normally)
 * @property {string[]} aggregate_types
 * @property {string[]} event_types
 * @property {number} parked_events
 * @property {string} on_failure 'stop' or 'park'
 * @property {number} max_attempts with on_failure 'park': tries before an event is parked; else 0
 * @property {number|null} retry_interval
 * @property {string} runner the address of the server that runs it ('' when none or not known)
 * @property {string} last_error
 * @property {Date|null} last_error_time
 * @property {number} version the projection's declared version on the server that answered (0 from servers older than it)
 * @property {number} stored_version the version its stored documents were built by (0: no checkpoint yet, or a server older than it)
 */

/** `status` (a GetProjectionResponse as the loader decodes it), its Timestamp and Duration as a Date and seconds. */
export function projectionStatus(status) {
  const interval = status.retry_interval;
  return {
    ...status,
    last_error_time: date(status.last_error_time),
    retry_interval: interval ? interval.seconds + interval.nanos / 1e9 : null,
  };
}

export class Projections {
  #call;
  #unpack;
  #bound;

  /**
   * `call(method, request, limit)`: the client's retried unary call on a
   * ProjectionService stub, within `limit`; `unpack(any)`: how the client
   * decodes a payload; `bound({ signal, timeoutSeconds })`: the limit of a
   * call (chronicle.js: a CallLimit), one for a listing's every page.
   *
   * Every method takes `signal` and `timeoutSeconds` among its options: the
   * whole call (a listing: from its first page to its last), retries and the
   * waits between them included; stopped, it rejects (a listing's loop
   * throws) at once CANCELLED or DEADLINE_EXCEEDED.
   */
  constructor(call, unpack, bound) {
    this.#call = call;
    this.#unpack = unpack;
    this.#bound = bound;
  }

  /**
   * The document `key` of `projection`: { key, document, position }, the
   * document decoded as the client decodes payloads (a plain object with its
   * '@type'), `position` the projection's checkpoint it reflects.
   * `minPosition` (a submit's `position`): wait until the projection has
   * applied the log that far. Rejects NOT_FOUND PROJECTION_NOT_FOUND or
   * DOCUMENT_NOT_FOUND; INVALID_ARGUMENT INVALID_KEY (empty, too long,
   * control characters), INVALID_PROJECTION, POSITION_BEYOND_END;
   * FAILED_PRECONDITION DOCUMENT_FORGOTTEN for a key of a tenant whose
   * master key was destroyed, of a tenant-keyed projection under encryption
   * at rest (`metadata.projection`, `metadata.tenant`); DOCUMENT_IN_TWO_FORMS
   * (same metadata) for one an older server wrote beside this version's copy
   * (a rollback: the projection needs a rebuild).
   */
  async document(projection, key, { minPosition = 0, signal, timeoutSeconds } = {}) {
    const request = { projection, key, min_position: minPosition };
    const { document, position } = await this.#call('GetDocument', request, this.#bound({ signal, timeoutSeconds }));
    return { key, document: this.#unpack(document), position };
  }

  /**
   * The documents of `projection` under `keys` (at most 100; more rejects
   * INVALID_ARGUMENT TOO_MANY_KEYS), read in one call and one store read:
   * `{ documents, missing, position }`, `documents` a Map from key to
   * `{ key, document, position }` as `document` gives it, in the order
   * asked; `missing` the keys that hold nothing (yet), in the order asked;
   * `position` the projection's checkpoint at the (first) read.
   * Refusals and `minPosition` as for `document` (a tenant-scoped reader
   * naming another tenant's key is refused the whole call, READ_DENIED;
   * one key of a tenant whose master key was destroyed, DOCUMENT_FORGOTTEN;
   * one in two forms, DOCUMENT_IN_TWO_FORMS).
   * Documents too large for one answer (the server's `unread_keys`) are
   * read by another call.
   */
  async documentsByKeys(projection, keys, { minPosition = 0, signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds });
    const wanted = [...new Set(keys)];
    const found = new Map();
    const missing = new Set();
    let position = null;
    let asked = wanted;
    while (asked.length > 0) {
      const request = { projection, keys: asked, min_position: minPosition };
      const answer = await this.#call('GetDocuments', request, limit);
      position ??= answer.position;
      for (const document of answer.documents) {
        const decoded = this.#unpack(document.document);
        found.set(document.key, { key: document.key, document: decoded, position: answer.position });
      }
      for (const key of answer.missing_keys) missing.add(key);
      if (answer.unread_keys.length >= asked.length) {
        throw new Error(`the server read none of ${asked.length} documents of ${projection}`);
      }
      asked = answer.unread_keys;
    }
    return {
      documents: new Map(wanted.filter((key) => found.has(key)).map((key) => [key, found.get(key)])),
      missing: wanted.filter((key) => missing.has(key)),
      position: position ?? 0,
    };
  }

  /**
   * The documents of `projection` whose keys start with `keyPrefix`, in key
   * order (by Unicode code point; `descending` the other way), as
   * `document` gives them, following `next_page_token` to the last page.
   * `pageSize` (0: the server's, 100) bounds a page; over 1,000 is
   * INVALID_ARGUMENT PAGE_SIZE_TOO_LARGE. Each document carries its page's
   * checkpoint; a document written meanwhile shows if its key comes after
   * the pages read. `minPosition` as for `document`. On a server with
   * encryption at rest: FAILED_PRECONDITION DOCUMENT_KEYS_HIDDEN.
   */
  async *documents(
    projection,
    { keyPrefix = '', pageSize = 0, descending = false, minPosition = 0, signal, timeoutSeconds } = {},
  ) {
    const limit = this.#bound({ signal, timeoutSeconds });
    const order = descending ? 'DOCUMENT_ORDER_KEY_DESCENDING' : 'DOCUMENT_ORDER_KEY_ASCENDING';
    let token = '';
    do {
      const request = {
        projection,
        key_prefix: keyPrefix,
        page_size: pageSize,
        page_token: token,
        order,
        min_position: minPosition,
      };
      const page = await this.#call('ListDocuments', request, limit);
      for (const found of page.documents) {
        yield { key: found.key, document: this.#unpack(found.document), position: page.position };
      }
      token = page.next_page_token;
    } while (token);
  }

  /**
   * How many documents of `projection` have keys starting with `keyPrefix`
   * (CountDocuments): `{ count, more, position }`, `count` up to `limit`
   * (0: the server's 10,000; over 1,000,000 INVALID_ARGUMENT
   * COUNT_LIMIT_TOO_LARGE), `more` true when there are more than that,
   * `position` the checkpoint counted at. The server reads an index entry
   * per document counted, no document. `minPosition` as for `document`; with
   * encryption at rest a prefix is FAILED_PRECONDITION DOCUMENT_KEYS_HIDDEN.
   */
  async count(projection, { keyPrefix = '', limit = 0, minPosition = 0, signal, timeoutSeconds } = {}) {
    const request = { projection, key_prefix: keyPrefix, limit, min_position: minPosition };
    const { count, more, position } = await this.#call(
      'CountDocuments',
      request,
      this.#bound({ signal, timeoutSeconds }),
    );
    return { count, more, position };
  }

  /** Where projection `name` stands: a ProjectionStatus. Rejects NOT_FOUND PROJECTION_NOT_FOUND. */
  async get(name, { signal, timeoutSeconds } = {}) {
    return projectionStatus(await this.#call('GetProjection', { name }, this.#bound({ signal, timeoutSeconds })));
  }

  /** Every loaded projection the caller may read: ProjectionStatus[], by name. */
  async list({ signal, timeoutSeconds } = {}) {
    const listed = await this.#call('ListProjections', {}, this.#bound({ signal, timeoutSeconds }));
    return listed.projections.map(projectionStatus);
  }

  /**
   * The events `projection` parked (its handler kept failing on them), in
   * log order (chronicle.v1.ParkedEvent, `parked_at` a Date), following the
   * pages to the last. `pageSize` as for `documents`.
   */
  async *parked(projection, { pageSize = 0, signal, timeoutSeconds } = {}) {
    const limit = this.#bound({ signal, timeoutSeconds });
    let token = '';
    do {
      const request = { projection, page_size: pageSize, page_token: token };
      const page = await this.#call('ListParkedEvents', request, limit);
      for (const event of page.events) yield { ...event, parked_at: date(event.parked_at) };
      token = page.next_page_token;
    } while (token);
  }

  /**
   * Parks the event at `position`, where `projection` is stopped (a handler
   * keeps failing on it), and lets the projection go on; resolves to the
   * event as parked (a chronicle.v1.ParkedEvent, `parked_at` a Date). A
   * rebuild applies it again once the plugin is fixed. Takes the admin
   * grant; ask the server that runs the projection (`get(name).runner`):
   * another rejects FAILED_PRECONDITION PROJECTION_RUNS_ELSEWHERE
   * (`metadata.runner`), a position it is not stopped at NOT_STOPPED_AT
   * (`metadata.stopped_at`, '0' at no event).
   */
  async skip(projection, position, { signal, timeoutSeconds } = {}) {
    const request = { projection, position };
    const { parked } = await this.#call('SkipEvent', request, this.#bound({ signal, timeoutSeconds }));
    return { ...parked, parked_at: date(parked.parked_at) };
  }

  /**
   * Clears projection `name` (documents, parked events, checkpoint) so that
   * it applies the log again from the start; resolves to the log's head
   * then, which `get(name).position` reaches when the rebuild is done. Takes
   * the admin grant (PERMISSION_DENIED ADMIN_DENIED; ANONYMOUS_ADMIN_DENIED
   * for an anonymous caller of a server without --anonymous-admin). A retry
   * after an answer lost once the server acted starts the rebuild again.
   */
  async rebuild(name, { signal, timeoutSeconds } = {}) {
    return (await this.#call('RebuildProjection', { name }, this.#bound({ signal, timeoutSeconds }))).log_head;
  }

  /**
   * The projections the store holds that no loaded plugin of the server
   * declares (renamed away or removed): `{ name, position }`[], by name.
   * Takes the admin grant.
   */
  async orphaned({ signal, timeoutSeconds } = {}) {
    const request = { include_orphaned: true };
    return (await this.#call('ListProjections', request, this.#bound({ signal, timeoutSeconds }))).orphaned;
  }

  /**
   * Deletes the stored documents, parked events and checkpoint of
   * projection `name`, which no loaded plugin declares; resolves to how many
   * documents and parked events went (0: nothing was left, so a retry is
   * harmless). Takes the admin grant; FAILED_PRECONDITION PROJECTION_LOADED
   * while a loaded plugin declares it.
   */
  async delete(name, { signal, timeoutSeconds } = {}) {
    return (await this.#call('DeleteProjection', { name }, this.#bound({ signal, timeoutSeconds }))).deleted;
  }
}
