// Shared setup for the TypeScript-SDK client tests: where the `pyro` binary is, the
// environment its server runs with, and connecting an SDK client to it.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The binary under test: $PYRO_BIN, else this checkout's debug build. */
export const PYRO_BIN = process.env.PYRO_BIN
  ? path.resolve(process.env.PYRO_BIN)
  : path.resolve(here, '../../target/debug/pyro');

/** A call that boots a guest (QEMU/TCG on CI) may take a while. */
export const BOOT_TIMEOUT_MS = 300_000;

/** What the SDK's stdio transport accepts per message (its ReadBuffer's default cap). */
export const SDK_STDIO_MAX_BYTES = 10 * 1024 * 1024;

/**
 * A scratch directory: the server's working directory (not a Git checkout, so workspaces
 * start empty) and, unless the caller set one, its state directory.
 */
export const SCRATCH = mkdtempSync(path.join(tmpdir(), 'pyro-mcp-ts-'));
process.on('exit', () => rmSync(SCRATCH, { recursive: true, force: true }));

/**
 * The server's environment: all of ours (the SDK's stdio transport passes only a default
 * subset unless told otherwise), so PYRO_AGENT_BIN, PYRO_CACHE_DIR and PYRO_STATE_DIR reach
 * it.
 */
export function serverEnv() {
  const env = { ...process.env };
  if (!env.PYRO_STATE_DIR) {
    env.PYRO_STATE_DIR = path.join(SCRATCH, 'state');
    mkdirSync(env.PYRO_STATE_DIR, { recursive: true });
  }
  return env;
}

/**
 * An SDK client connected over stdio to `pyro mcp serve --profile <profile>`. `sizes`
 * receives the byte length of every message the client receives (its JSON, as the wire
 * carries it, give or take escapes).
 */
export async function connectStdio(profile, { sizes } = {}) {
  const transport = new StdioClientTransport({
    command: PYRO_BIN,
    args: ['mcp', 'serve', '--profile', profile],
    env: serverEnv(),
    cwd: SCRATCH,
    stderr: 'pipe',
  });
  const stderr = [];
  transport.stderr?.on('data', (chunk) => {
    stderr.push(chunk);
  });
  const client = new Client({ name: 'pyro-ts-tests', version: '0.0.0' });
  let closed = false;
  client.onclose = () => {
    closed = true;
  };
  const errors = [];
  client.onerror = (e) => {
    errors.push(String(e?.message ?? e));
  };
  await client.connect(transport);
  if (sizes) {
    const deliver = transport.onmessage;
    transport.onmessage = (message, extra) => {
      sizes.push(Buffer.byteLength(JSON.stringify(message)));
      deliver?.(message, extra);
    };
  }
  return {
    client,
    transport,
    isClosed: () => closed,
    /** The transport's errors (the SDK closes the session on a message over its cap). */
    errors,
    stderrText: () => Buffer.concat(stderr).toString('utf8'),
    close: () => client.close(),
  };
}

/** callTool with a timeout fit for a guest boot. */
export function call(client, name, args, options = {}) {
  return client.callTool({ name, arguments: args }, undefined, {
    timeout: BOOT_TIMEOUT_MS,
    ...options,
  });
}

/** The structured result of a successful call (fails the test on an error result). */
export async function callOk(client, name, args, options = {}) {
  const r = await call(client, name, args, options);
  if (r.isError) {
    throw new Error(`${name} failed: ${JSON.stringify(r.content).slice(0, 2000)}`);
  }
  return r.structuredContent;
}

/**
 * The raw server: `pyro mcp serve` with pipes, for writing frames the SDK would never send.
 * `next(id)` resolves to the next reply whose id is `id` (null for an error without one).
 */
export function spawnRaw(args) {
  const proc = spawn(PYRO_BIN, ['mcp', 'serve', ...args], {
    env: serverEnv(),
    cwd: SCRATCH,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  proc.stderr.resume();
  const replies = [];
  const waiting = [];
  const nonJson = [];
  createInterface({ input: proc.stdout, crlfDelay: Infinity }).on('line', (line) => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      nonJson.push(line);
      return;
    }
    replies.push(msg);
    for (const w of [...waiting]) {
      const i = replies.findIndex(w.match);
      if (i >= 0) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve(replies.splice(i, 1)[0]);
      }
    }
  });
  return {
    proc,
    nonJson,
    /** Unclaimed replies so far. */
    replies,
    send(line) {
      proc.stdin.write(typeof line === 'string' ? `${line}\n` : `${JSON.stringify(line)}\n`);
    },
    next(id, timeoutMs = 30_000) {
      const match = (m) => 'id' in m && m.id === id;
      const i = replies.findIndex(match);
      if (i >= 0) return Promise.resolve(replies.splice(i, 1)[0]);
      return new Promise((resolve, reject) => {
        const w = { match, resolve };
        waiting.push(w);
        setTimeout(() => {
          const j = waiting.indexOf(w);
          if (j >= 0) {
            waiting.splice(j, 1);
            reject(new Error(`no reply with id ${JSON.stringify(id)} in ${timeoutMs} ms`));
          }
        }, timeoutMs).unref();
      });
    },
    async close() {
      proc.stdin.end();
      if (proc.exitCode !== null) return proc.exitCode;
      return new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
    },
  };
}

/** `pyro mcp serve --http 127.0.0.1:0` (a free loopback port); resolves to its URL. */
export function spawnHttp(profile) {
  const proc = spawn(
    PYRO_BIN,
    ['mcp', 'serve', '--profile', profile, '--http', '127.0.0.1:0'],
    { env: serverEnv(), cwd: SCRATCH, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const url = new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stderr, crlfDelay: Infinity });
    lines.on('line', (line) => {
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+\/\S*)/.exec(line);
      if (m) resolve(new URL(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`the HTTP server exited (${code}) before listening`)));
  });
  return { proc, url };
}
