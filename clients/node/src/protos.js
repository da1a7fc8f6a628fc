// Where this client's .proto files come from, and how an application adds
// its own domain's.
//
// In the repository, the files are read where they live: the repository's
// protos/ and domain_plugins/*/protos are the one source. Installed from
// `npm pack`'s tarball, the package carries its own copy in protos/
// (scripts/bundle_protos.js writes it at pack time; test/package.test.js
// checks the tarball's copy is identical). The repository's files win when
// both are there, so a pack under way (its copy half-written) never changes
// what a client in the repository loads.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import protobuf from 'protobufjs';

import { Problem } from './problem.js';
import { BUNDLED_SOURCES } from './proto_sources.js';

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repository = path.resolve(packageRoot, '..', '..');

export const BUNDLED_FOLDER = path.join(packageRoot, 'protos');
const GOOGLEAPIS = path.join(packageRoot, 'third_party', 'googleapis');

// Where .proto imports are looked up, like protoc's -I: loadProtos adds an
// application's folders after these.
const inRepository = fs.existsSync(path.join(repository, 'protos', 'chronicle', 'v1', 'command_service.proto'));
const includeDirs = inRepository
  ? [...BUNDLED_SOURCES.map((source) => path.join(repository, source)), GOOGLEAPIS]
  : [BUNDLED_FOLDER, GOOGLEAPIS];

export const API_FILES = [
  'chronicle/v1/command_service.proto',
  'chronicle/v1/event_service.proto',
  'chronicle/v1/cluster_service.proto',
  'chronicle/v1/subscription_group_service.proto',
  'chronicle/v1/reaction_service.proto',
  'chronicle/v1/projection_service.proto',
];
const MESSAGE_FILES = [
  'users/v1/users.proto',
  'bank/v1/bank_account.proto',
  'box/v1/box.proto',
  'google/rpc/status.proto',
  'google/rpc/error_details.proto',
];

/** The folders .proto imports are looked up in, in order (a copy). */
export function protoIncludeDirs() {
  return [...includeDirs];
}

function resolve(target) {
  if (path.isAbsolute(target)) return target;
  for (const dir of includeDirs) {
    const candidate = path.join(dir, target);
    if (fs.existsSync(candidate)) return candidate;
  }
  return null;
}

// The payload types and google.rpc's error details, decoded with protobufjs.
export const messages = new protobuf.Root();
messages.resolvePath = (_origin, target) => resolve(target) ?? target; // google/protobuf/*: protobufjs has them
messages.loadSync([...MESSAGE_FILES, ...API_FILES], { keepCase: true });

/**
 * Loads an application's own domain messages, so that pack() accepts its
 * commands and unpack() decodes its events and states: `files`, paths
 * relative to one of `includeDirs` (or absolute), e.g.
 * loadProtos({ includeDirs: ['./protos'], files: ['shop/v1/shop.proto'] }).
 * The folders are added to where imports are looked up, for this and
 * later calls. Call it before the first pack or read of those types; a file
 * loaded already is not loaded again. A file not found is a Problem
 * PROTO_NOT_FOUND, one protobufjs cannot parse PROTO_INVALID.
 */
export function loadProtos({ includeDirs: dirs = [], files = [] } = {}) {
  if (!Array.isArray(dirs) || !Array.isArray(files) || ![...dirs, ...files].every((s) => typeof s === 'string')) {
    throw new Problem('INVALID_OPTION', 'loadProtos: includeDirs and files are arrays of strings');
  }
  for (const dir of dirs) {
    const absolute = path.resolve(dir);
    if (!includeDirs.includes(absolute)) includeDirs.push(absolute);
  }
  const found = files.map((file) => {
    const where = resolve(file);
    if (where === null || !fs.existsSync(where)) {
      throw new Problem('PROTO_NOT_FOUND', `loadProtos: ${file} is in none of ${includeDirs.join(', ')}`, { file });
    }
    return where;
  });
  try {
    messages.loadSync(found, { keepCase: true });
  } catch (error) {
    throw new Problem('PROTO_INVALID', `loadProtos: ${error.message}`, { file: files.join(',') });
  }
}
