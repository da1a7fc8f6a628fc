// Copies the .proto files the package loads into its protos/ folder, run by
// `npm pack` (prepack); `--remove` deletes the copy again (postpack), so
// that in the repository the files are read where they live and the
// repository's protos/ and domain_plugins/*/protos stay the one source.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { BUNDLED_SOURCES } from '../src/proto_sources.js';

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repository = path.resolve(packageRoot, '..', '..');
const target = path.join(packageRoot, 'protos');

function copyProtos(from, to) {
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    const source = path.join(from, entry.name);
    if (entry.isDirectory()) copyProtos(source, path.join(to, entry.name));
    else if (entry.name.endsWith('.proto')) {
      fs.mkdirSync(to, { recursive: true });
      fs.copyFileSync(source, path.join(to, entry.name));
    }
  }
}

fs.rmSync(target, { recursive: true, force: true });
if (!process.argv.includes('--remove')) {
  for (const source of BUNDLED_SOURCES) copyProtos(path.join(repository, source), target);
}
