// The repository's folders the package's .proto files come from (relative
// to the repository): the public API, the server's default domain
// (users.v1) and the example domains (bank.v1, box.v1: the README's
// examples). A module of its own, loading nothing, so that
// scripts/bundle_protos.js can read it while the copy is half-written.
export const BUNDLED_SOURCES = [
  'protos',
  'domain_plugins/users/protos',
  'domain_plugins/bank_account/protos',
  'domain_plugins/box/protos',
];
