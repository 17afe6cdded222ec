// `pyro mcp serve` through the official TypeScript MCP SDK, no guest booted: the tool list
// of each profile (stdio), a session over Streamable HTTP, and malformed JSON-RPC written as
// raw frames to the server's stdin.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { call, callOk, connectStdio, spawnHttp, spawnRaw } from './lib.mjs';

const CORE_SAMPLE = [
  'vm_run',
  'workspace_create',
  'workspace_list',
  'workspace_exec',
  'workspace_file_read',
  'workspace_file_write',
  'workspace_diff',
  'workspace_delete',
];
const FULL_ONLY_SAMPLE = ['vm_create', 'workspace_stop', 'shell_open', 'service_start'];

function checkSchemas(tools) {
  for (const t of tools) {
    assert.equal(t.inputSchema?.type, 'object', `${t.name}: inputSchema is an object schema`);
    assert.equal(t.outputSchema?.type, 'object', `${t.name}: outputSchema is an object schema`);
    assert.ok(t.description, `${t.name}: has a description`);
  }
}

describe('tools/list over stdio', () => {
  const listed = {};

  for (const profile of ['vm-run', 'workspace-core', 'workspace-full']) {
    test(`${profile}: initialize and tools/list`, async () => {
      const s = await connectStdio(profile);
      try {
        const info = s.client.getServerVersion();
        assert.equal(info?.name, 'pyro');
        assert.ok(s.client.getServerCapabilities()?.tools, 'the server offers tools');
        assert.match(s.client.getInstructions() ?? '', /vm_run/);
        const { tools } = await s.client.listTools();
        checkSchemas(tools);
        const names = tools.map((t) => t.name);
        assert.equal(new Set(names).size, names.length, 'no tool listed twice');
        listed[profile] = names;
      } finally {
        await s.close();
      }
    });
  }

  test('the profiles offer the expected tools and nest', () => {
    assert.deepEqual(listed['vm-run'], ['vm_run']);
    for (const name of CORE_SAMPLE) {
      assert.ok(listed['workspace-core'].includes(name), `workspace-core offers ${name}`);
    }
    for (const name of FULL_ONLY_SAMPLE) {
      assert.ok(!listed['workspace-core'].includes(name), `workspace-core lacks ${name}`);
      assert.ok(listed['workspace-full'].includes(name), `workspace-full offers ${name}`);
    }
    for (const name of listed['workspace-core']) {
      assert.ok(listed['workspace-full'].includes(name), `workspace-full offers ${name}`);
    }
  });
});

test('Streamable HTTP on a free loopback port', async () => {
  const { proc, url } = spawnHttp('workspace-core');
  try {
    const endpoint = await url;
    const client = new Client({ name: 'pyro-ts-tests', version: '0.0.0' });
    await client.connect(new StreamableHTTPClientTransport(endpoint));
    try {
      assert.equal(client.getServerVersion()?.name, 'pyro');
      const { tools } = await client.listTools();
      checkSchemas(tools);
      for (const name of CORE_SAMPLE) {
        assert.ok(tools.some((t) => t.name === name), `offers ${name}`);
      }
      const listedWs = await callOk(client, 'workspace_list', {});
      assert.equal(typeof listedWs.count, 'number');
      const missing = await call(client, 'workspace_status', { workspace_id: '0123456789ab' });
      assert.equal(missing.isError, true);
      assert.match(missing.content[0].text, /\[not_found\]/);
    } finally {
      await client.close();
    }

    // A body that is not JSON: HTTP 400 with a JSON-RPC parse error (id null).
    const res = await fetch(endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: '{not json',
    });
    assert.equal(res.status, 400);
    const body = await res.json();
    assert.equal(body.jsonrpc, '2.0');
    assert.equal(body.id, null);
    assert.equal(body.error.code, -32700);
  } finally {
    proc.kill('SIGTERM');
    if (proc.exitCode === null) await new Promise((r) => proc.once('exit', r));
  }
  assert.equal(proc.exitCode, 0, 'the HTTP server exits cleanly on SIGTERM');
});

describe('malformed input as raw stdio frames', () => {
  const raw = spawnRaw(['--profile', 'vm-run']);
  after(async () => {
    const code = await raw.close();
    assert.equal(code, 0, 'the server exits cleanly when stdin closes');
    assert.deepEqual(raw.nonJson, [], 'every line on stdout is JSON');
  });

  test('initialize first', async () => {
    raw.send({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: {
        protocolVersion: '2025-06-18',
        capabilities: {},
        clientInfo: { name: 'raw-frames', version: '0' },
      },
    });
    const init = await raw.next(1);
    assert.equal(init.result.serverInfo.name, 'pyro');
    raw.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  });

  test('a line that is not JSON: -32700, id null', async () => {
    raw.send('this is {not json');
    const r = await raw.next(null);
    assert.equal(r.jsonrpc, '2.0');
    assert.equal(r.error.code, -32700);
    assert.equal('result' in r, false);
  });

  test('tools/call with ill-typed params: -32602 with the request id', async () => {
    raw.send({ jsonrpc: '2.0', id: 'bad-params', method: 'tools/call', params: { name: 5 } });
    const r = await raw.next('bad-params');
    assert.equal(r.error.code, -32602);
    assert.match(r.error.message, /tools\/call/);
    raw.send({ jsonrpc: '2.0', id: 11, method: 'tools/call', params: [1] });
    assert.equal((await raw.next(11)).error.code, -32602);
  });

  test('invalid request objects: -32600', async () => {
    // No method, with an id: the id is kept.
    raw.send({ jsonrpc: '2.0', id: 21 });
    assert.equal((await raw.next(21)).error.code, -32600);
    // jsonrpc other than "2.0": the id is kept.
    raw.send({ jsonrpc: '1.0', id: 22, method: 'ping' });
    assert.equal((await raw.next(22)).error.code, -32600);
    // method not a string.
    raw.send({ jsonrpc: '2.0', id: 23, method: 5 });
    assert.equal((await raw.next(23)).error.code, -32600);
    // Not an object (a scalar, a batch): nothing to take an id from.
    raw.send('3');
    const scalar = await raw.next(null);
    assert.equal(scalar.error.code, -32600);
    raw.send('[]');
    const batch = await raw.next(null);
    assert.equal(batch.error.code, -32600);
    // An id that is neither a string nor a number: answered with id null.
    raw.send({ jsonrpc: '2.0', id: { x: 1 }, method: 'ping' });
    const objId = await raw.next(null);
    assert.equal(objId.error.code, -32600);
  });

  test('a malformed notification is not answered', async () => {
    raw.send({ jsonrpc: '1.0', method: 'notifications/initialized' });
    // A ping after it: its answer is the next line, with nothing in between.
    raw.send({ jsonrpc: '2.0', id: 31, method: 'ping' });
    const pong = await raw.next(31);
    assert.deepEqual(pong.result, {});
    assert.deepEqual(raw.replies, [], 'no other reply arrived');
  });

  test('an unknown method: -32601 with the id', async () => {
    raw.send({ jsonrpc: '2.0', id: 41, method: 'no/such/method' });
    assert.equal((await raw.next(41)).error.code, -32601);
  });

  test('an unknown tool: an error result naming it once', async () => {
    const name = 'no_such_tool_xyz';
    raw.send({
      jsonrpc: '2.0',
      id: 51,
      method: 'tools/call',
      params: { name, arguments: {} },
    });
    const r = await raw.next(51);
    let text;
    if (r.error) {
      assert.equal(r.error.code, -32602);
      text = r.error.message;
    } else {
      assert.equal(r.result.isError, true);
      text = r.result.content.map((c) => c.text).join('\n');
      assert.match(text, /vm_run/, 'it says which tools are offered');
    }
    assert.equal(text.split(name).length - 1, 1, `the name appears once: ${text}`);
  });

  test('the session still works after all that', async () => {
    raw.send({ jsonrpc: '2.0', id: 61, method: 'tools/list' });
    const r = await raw.next(61);
    assert.deepEqual(
      r.result.tools.map((t) => t.name),
      ['vm_run'],
    );
  });
});
