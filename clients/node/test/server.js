// Starts a real Chronicle server process for the tests, on a port the
// operating system picks (--listen 127.0.0.1:0); its first line of output
// names the address it bound. CHRONICLE_SERVER=host:port uses a running
// server instead; CHRONICLE_PYTHON picks the interpreter (default: the
// repository's .venv, as `make` creates it).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function python() {
  if (process.env.CHRONICLE_PYTHON) return process.env.CHRONICLE_PYTHON;
  const venv = path.join(repository, '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
}

// `args`: the server's arguments after its address and database, instead of
// the default --anonymous-admin (the group tests create groups, an admin
// action; it is refused together with --auth). A server given arguments is
// always started here, whatever CHRONICLE_SERVER says.
export async function startServer({ args, timeoutMs = 30_000 } = {}) {
  if (process.env.CHRONICLE_SERVER && args === undefined) {
    return { address: process.env.CHRONICLE_SERVER, stop: async () => {} };
  }
  const serve = ['-m', 'service', 'serve', '--listen', '127.0.0.1:0', '--database-url', 'memory://'];
  const child = spawn(python(), [...serve, ...(args ?? ['--anonymous-admin'])], {
    cwd: repository,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = [];
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  const lines = readline.createInterface({ input: child.stdout });
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no server after ${timeoutMs} ms: ${output.join('')}`)), timeoutMs);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${output.join('')}`)));
    lines.on('line', (line) => {
      const match = /Chronicle serving gRPC on (\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.on('exit', () => resolve());
      child.kill('SIGTERM');
    });
  return { address, stop };
}

// Replicas of one cluster on a throwaway PostgreSQL (the repository's
// tests/support/node_cluster.py starts them): [{ address, pid }, ...], and
// stop() to shut them and the database down. `anonymousAdmin`: the replicas
// let an anonymous caller create subscription groups. `shutdownDrain`: each
// replica's --shutdown-drain (e.g. '10s').
export async function startCluster({ replicas = 2, anonymousAdmin = false, shutdownDrain = null, timeoutMs = 90_000 } = {}) {
  const args = ['-m', 'tests.support.node_cluster', '--replicas', String(replicas)];
  if (anonymousAdmin) args.push('--anonymous-admin');
  if (shutdownDrain !== null) args.push('--shutdown-drain', shutdownDrain);
  const child = spawn(python(), args, {
    cwd: repository,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const output = [];
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  const lines = readline.createInterface({ input: child.stdout });
  const started = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no cluster after ${timeoutMs} ms: ${output.join('')}`)), timeoutMs);
    child.on('exit', (code) => reject(new Error(`the cluster helper exited with ${code}: ${output.join('')}`)));
    lines.on('line', (line) => {
      clearTimeout(timer);
      resolve(JSON.parse(line));
    });
  });
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.on('exit', () => resolve());
      child.stdin.end();
    });
  return { replicas: started.replicas, stop };
}
