// A failure found in the client before anything was sent (a field that is
// not in the message, an expected version that is no version, a .proto not
// found): its machine-readable reason and the metadata naming what is at
// fault. chronicle.js hands it to the application as a ChronicleError
// (INVALID_ARGUMENT), as a server's refusal of the same input would be.
export class Problem extends Error {
  constructor(reason, message, metadata = {}) {
    super(message);
    this.name = 'Problem';
    this.reason = reason;
    this.metadata = metadata;
  }
}
