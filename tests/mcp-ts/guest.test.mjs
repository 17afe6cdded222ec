// `pyro mcp serve` through the official TypeScript MCP SDK with real guests (QEMU/TCG where
// KVM is missing: each boot takes seconds to tens of seconds): a vm_run, cancelling a
// running workspace_exec, and large results, each of which must leave the session usable.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  BOOT_TIMEOUT_MS,
  SDK_STDIO_MAX_BYTES,
  call,
  callOk,
  connectStdio,
} from './lib.mjs';

const MiB = 1024 * 1024;

test('vm_run echo hi (vm-run profile)', { timeout: BOOT_TIMEOUT_MS }, async () => {
  const s = await connectStdio('vm-run');
  try {
    const { tools } = await s.client.listTools();
    const props = tools.find((t) => t.name === 'vm_run').inputSchema.properties;
    assert.ok(props.environment && props.command, 'vm_run takes environment and command');
    // The SDK checks structuredContent against the tool's outputSchema.
    const r = await callOk(s.client, 'vm_run', { environment: 'debian:12', command: 'echo hi' });
    assert.equal(r.exit_code, 0);
    assert.equal(r.stdout, 'hi\n');
    assert.equal(r.stderr, '');
    assert.equal(r.timed_out, false);
  } finally {
    await s.close();
  }
});

/** Keys anywhere in `v` that say a result was cut or paged, with a truthy value. */
function cutMarkers(v, prefix = '') {
  const found = [];
  if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (/truncat|paged|page|cursor|omitted|elided|more/i.test(k) && x) found.push(prefix + k);
      if (x && typeof x === 'object') found.push(...cutMarkers(x, `${prefix}${k}.`));
    }
  }
  return found;
}

/** A stream of `n` binary bytes came back whole (exactly, as base64) or is marked as cut. */
function wholeOrMarkedCut(r, stream, n) {
  const b64 = r[`${stream}_base64`];
  const whole =
    r[`${stream}_bytes`] === n &&
    !r[`${stream}_truncated`] &&
    typeof b64 === 'string' &&
    Buffer.from(b64, 'base64').length === n;
  const marks = cutMarkers(r).filter((k) => k.includes(stream) || !/std(out|err)/.test(k));
  assert.ok(
    whole || marks.length > 0,
    `${stream}: neither whole (${n} bytes) nor marked as cut; fields: ${Object.keys(r).join(', ')}`,
  );
  return whole ? 'whole' : `cut (${marks.join(', ')})`;
}

test(
  'large result: vm_run with 1 MiB of binary on stdout and stderr stays under the SDK 10 MiB message cap and the session survives',
  { timeout: BOOT_TIMEOUT_MS },
  async (t) => {
    const sizes = [];
    const s = await connectStdio('workspace-core', { sizes });
    try {
      const command =
        'head -c 1048576 /dev/urandom; head -c 1048576 /dev/urandom >&2; echo fin >&2';
      let r;
      try {
        r = await call(s.client, 'vm_run', { environment: 'debian:12', command });
      } catch (e) {
        assert.fail(
          `the call failed (${e.message}); session closed: ${s.isClosed()}; largest message ` +
            `seen: ${Math.max(0, ...sizes)} bytes; the SDK's stdio transport drops messages ` +
            `over ${SDK_STDIO_MAX_BYTES} bytes; transport errors: ${s.errors.join(' | ')}`,
        );
      }
      const largest = Math.max(...sizes);
      t.diagnostic(`largest message: ${largest} bytes`);
      assert.ok(largest < SDK_STDIO_MAX_BYTES, `a ${largest}-byte message`);
      if (r.isError) {
        // A refusal that says why (too large to return whole) is an acceptable shape.
        const text = r.content.map((c) => c.text).join('\n');
        assert.match(text, /truncat|too large|limit|budget|page/i, text.slice(0, 2000));
        t.diagnostic(`answered with an error: ${text.slice(0, 300)}`);
      } else {
        const out = r.structuredContent;
        assert.equal(out.exit_code, 0);
        t.diagnostic(`stdout ${wholeOrMarkedCut(out, 'stdout', MiB)}`);
        t.diagnostic(`stderr ${wholeOrMarkedCut(out, 'stderr', MiB + 4)}`);
      }
      // The session is alive: a later call works.
      const listed = await callOk(s.client, 'workspace_list', {});
      assert.equal(typeof listed.count, 'number');
      assert.equal(s.isClosed(), false);
    } finally {
      await s.close();
    }
  },
);

describe('a workspace', { timeout: 3 * BOOT_TIMEOUT_MS }, () => {
  let workspaceId;

  before(async () => {
    const s = await connectStdio('workspace-core');
    try {
      const w = await callOk(s.client, 'workspace_create', {
        environment: 'debian:12',
        name: 'pyro-ts-tests',
      });
      workspaceId = w.workspace_id;
      assert.match(workspaceId, /^[0-9a-f]+$/);
    } finally {
      await s.close();
    }
  });

  after(async () => {
    if (!workspaceId) return;
    const s = await connectStdio('workspace-core');
    try {
      await callOk(s.client, 'workspace_delete', { workspace_id: workspaceId });
    } finally {
      await s.close();
    }
  });

  test('cancelling workspace_exec kills the guest command', async (t) => {
    const s = await connectStdio('workspace-core');
    try {
      const exec = (command) => callOk(s.client, 'workspace_exec', { workspace_id: workspaceId, command });
      // The guest's processes, one command line a line (no procps needed).
      const processes = async () => {
        const r = await exec(
          "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done",
        );
        return r.stdout.split('\n').map((l) => l.trim());
      };
      const sleeping = (lines) => lines.filter((l) => /^sleep 35$|sleep 35; echo done/.test(l));

      const abort = new AbortController();
      const started = Date.now();
      const pending = call(
        s.client,
        'workspace_exec',
        { workspace_id: workspaceId, command: 'sleep 35; echo done' },
        { signal: abort.signal },
      );
      // Make sure the command is running before cancelling (the exec itself may still be
      // queued on a slow host).
      let seen = [];
      while (Date.now() - started < 30_000) {
        seen = sleeping(await processes());
        if (seen.length > 0) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.ok(seen.length > 0, 'the sleep started in the guest');
      await new Promise((r) => setTimeout(r, Math.max(0, 3_000 - (Date.now() - started))));
      abort.abort('test cancels');
      await assert.rejects(pending, (e) => {
        t.diagnostic(`the call rejected with: ${e?.name ?? ''} ${String(e?.message ?? e)}`);
        return true;
      });
      t.diagnostic(`cancelled after ${Date.now() - started} ms`);
      // The server kills the command's process tree; give it a moment.
      let left = seen;
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline) {
        left = sleeping(await processes());
        if (left.length === 0) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.deepEqual(left, [], 'no `sleep 35` left in the guest');
      assert.ok(Date.now() - started < 35_000, 'checked before the sleep would have ended');
      // And its `echo done` never ran later: the session and workspace still work.
      const after = await exec('echo still here');
      assert.equal(after.stdout, 'still here\n');
    } finally {
      await s.close();
    }
  });

  test(
    'large result: workspace_file_write of 6 MiB then workspace_file_read of it stays under the SDK 10 MiB message cap and the session survives',
    async (t) => {
      const sizes = [];
      const s = await connectStdio('workspace-core', { sizes });
      try {
        // 6 MiB of numbered ASCII lines.
        const lines = [];
        let n = 0;
        let size = 0;
        while (size < 6 * MiB) {
          const line = `line ${String(n++).padStart(8, '0')} ${'x'.repeat(50)}\n`;
          lines.push(line);
          size += line.length;
        }
        const text = lines.join('');
        const w = await callOk(s.client, 'workspace_file_write', {
          workspace_id: workspaceId,
          path: 'big.txt',
          text,
        });
        assert.equal(w.size_bytes ?? w.bytes_written, text.length);

        let r;
        try {
          r = await call(s.client, 'workspace_file_read', {
            workspace_id: workspaceId,
            path: 'big.txt',
            max_bytes: 16 * MiB,
          });
        } catch (e) {
          assert.fail(
            `the call failed (${e.message}); session closed: ${s.isClosed()}; largest message ` +
              `seen: ${Math.max(0, ...sizes)} bytes; the SDK's stdio transport drops messages ` +
              `over ${SDK_STDIO_MAX_BYTES} bytes; transport errors: ${s.errors.join(' | ')}`,
          );
        }
        const largest = Math.max(...sizes);
        t.diagnostic(`largest message: ${largest} bytes`);
        assert.ok(largest < SDK_STDIO_MAX_BYTES, `a ${largest}-byte message`);
        if (r.isError) {
          const msg = r.content.map((c) => c.text).join('\n');
          assert.match(msg, /truncat|too large|limit|budget|page/i, msg.slice(0, 2000));
        } else {
          const out = r.structuredContent;
          assert.equal(out.size_bytes, text.length);
          if (out.content === text && !out.truncated) {
            t.diagnostic('read back whole');
          } else {
            assert.ok(cutMarkers(out).length > 0, 'a partial read says so');
            assert.equal(out.content.slice(0, 4096), text.slice(0, 4096), 'a partial read starts as the file');
            t.diagnostic(`read back ${out.content.length} bytes, marked as cut`);
          }
        }
        const listed = await callOk(s.client, 'workspace_list', {});
        assert.ok(listed.count >= 1);
        assert.equal(s.isClosed(), false);
      } finally {
        await s.close();
      }
    },
  );
});
