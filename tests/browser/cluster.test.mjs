// A cluster in the browser: three Hearth nodes, each on a test host of its own (a network
// namespace on a bridge), one Redis. Two Chromium pages open the meeting through two
// different nodes, are redirected to the host and decode each other; the host is killed
// (kill -9); both pages are back in the meeting on another node, decoding, within 10 s.
//
//   tests/browser/run.sh cluster.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clusterHosts, counter, launchBrowser, openParticipant, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const MEETING = 'cluster-e2e';
const KEY = 'APIbrowsercluster';
const SECRET = 'browser-cluster-secret-0123456789';
const logs = [];
const procs = [];
let failed = false;

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

const hosts = await clusterHosts(3);
const dir = mkdtempSync(join(tmpdir(), 'hearth-cluster-e2e-'));
// Bound to the bridge only; protected mode off because the nodes come from other hosts.
const redis = spawn('redis-server', ['--bind', hosts.gateway, '--port', '6390', '--save', '',
  '--appendonly', 'no', '--protected-mode', 'no', '--dir', dir], { stdio: 'ignore' });
procs.push(redis);
const redisUrl = `redis://${hosts.gateway}:6390/0`;
await until('redis answers', () => {
  try {
    return execFileSync('redis-cli', ['-h', hosts.gateway, '-p', '6390', 'PING'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() === 'PONG';
  } catch { return false; }
}, 10000, 50);

/** Node i on host i: its own address, media port 7882, the shared key and Redis. */
function startNode(i) {
  const ip = hosts.ip(i);
  const output = [];
  const proc = hosts.run(i, binary, ['serve', '--http', `${ip}:7880`, '--public-ip', ip,
    '--media-port', '7882', '--turn-port', '0', '--data-dir', join(dir, `n${i + 1}`),
    '--no-ledger', '--dev', '--api-key', KEY, '--api-secret', SECRET,
    '--node-id', `n${i + 1}`, '--redis-url', redisUrl, '--empty-timeout', '30s'],
  { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  proc.stdout.on('data', (d) => output.push(d.toString()));
  proc.stderr.on('data', (d) => output.push(d.toString()));
  procs.push(proc);
  return { id: `n${i + 1}`, ip, base: `http://${ip}:7880`, proc, output };
}

async function clusterSize(node) {
  const text = await (await fetch(`${node.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('hearth_cluster_nodes '));
  return line ? Number(line.split(' ')[1]) : 0;
}

/** The node whose signaling endpoint a page is joined at. */
function nodeOf(nodes, url) {
  const node = nodes.find((n) => url.startsWith(`ws://${n.ip}:7880/`));
  assert.ok(node, `a node's URL: ${url}`);
  return node;
}

async function decodes(p, fromId, sinceFrames = 0) {
  const s = await p.stats();
  return counter(s, fromId, 'video', 'framesDecoded') > sinceFrames
    && counter(s, fromId, 'audio', 'packetsReceived') > 0;
}

// Pages come from http://10.79.0.N: not a secure context (no camera) unless Chromium is told.
const chromium = await launchBrowser([`--unsafely-treat-insecure-origin-as-secure=${
  [0, 1, 2].map((i) => `http://${hosts.ip(i)}:7880`).join(',')}`]);
let nodes = [];
const pages = [];
try {
  nodes = [0, 1, 2].map(startNode);
  for (const n of nodes) {
    await until(`${n.id} sees three nodes`, async () => (await clusterSize(n)) === 3, 20000);
  }
  // Place the meeting first (the app's backend would), to open the pages through the two
  // nodes that do not host it: those stand in for a load balancer's targets and outlive
  // the host.
  const admin = await (await fetch(`${nodes[0].base}/v1/dev/token?meeting=${MEETING}&name=backend`)).json();
  assert.ok(admin.token, 'a dev token');
  const placed = await fetch(`${nodes[0].base}/v1/meetings/${MEETING}`);
  assert.equal(placed.status, 401, 'the REST API needs a token (sanity)');
  const probe = await openParticipant(chromium.browser, nodes[0].base, MEETING, 'probe', logs);
  const hostUrl = await until('the probe joined', () => probe.page.evaluate(
    () => (window.hearth.state === 'joined' ? window.hearth.signalUrl : '')));
  const host = nodeOf(nodes, hostUrl);
  const entries = nodes.filter((n) => n !== host);
  log(`meeting hosted by ${host.id}; pages enter through ${entries.map((n) => n.id).join(' and ')}`);

  // The probe leaves first (the meeting stays for its empty timeout). It used to leave
  // while Alice and Bob negotiated their first offers: in 1 run of 5 both pages then
  // restarted and never decoded each other's video again (a churn bug of the signaling
  // and negotiation, not of the cluster; see the session note). This test is about the
  // cluster, so it no longer races that.
  await probe.page.evaluate(() => window.hearth.leave());
  await probe.context.close();
  await until('the probe is gone from the host', async () => {
    const text = await (await fetch(`${host.base}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('hearth_participants '));
    return line && Number(line.split(' ')[1]) === 0;
  }, 10000);
  const alice = await openParticipant(chromium.browser, entries[0].base, MEETING, 'alice', logs);
  const bob = await openParticipant(chromium.browser, entries[1].base, MEETING, 'bob', logs);
  pages.push(alice, bob);
  const ids = {};
  for (const p of [alice, bob]) {
    ids[p.name] = await until(`${p.name} joined`, async () => (await p.stats()).participantId);
    const url = await p.page.evaluate(() => window.hearth.signalUrl);
    assert.equal(nodeOf(nodes, url), host, `${p.name} was redirected to the host`);
  }
  await until('alice decodes bob', () => decodes(alice, ids.bob), 20000);
  await until('bob decodes alice', () => decodes(bob, ids.alice), 20000);
  log('both decode each other on', host.id);

  // kill -9 the host.
  const killedAt = Date.now();
  host.proc.kill('SIGKILL');
  const back = {};
  for (const p of [alice, bob]) {
    back[p.name] = await until(`${p.name} rejoined on another node`, async () => {
      const state = await p.page.evaluate(() => ({ s: window.hearth.state, url: window.hearth.signalUrl, id: window.hearth.participantId }));
      return state.s === 'joined' && state.url && !state.url.startsWith(`ws://${host.ip}:`) && state.id ? state : null;
    }, 10000, 50);
  }
  assert.equal(back.alice.url, back.bob.url, 'both on one node again');
  await until('alice decodes bob again', () => decodes(alice, back.bob.id), Math.max(1000, 10000 - (Date.now() - killedAt)), 50);
  await until('bob decodes alice again', () => decodes(bob, back.alice.id), Math.max(1000, 10000 - (Date.now() - killedAt)), 50);
  const took = Date.now() - killedAt;
  log(`host ${host.id} killed; both decoding again on ${nodeOf(nodes, back.alice.url).id} after ${took} ms`);
  assert.ok(took < 10000, `back within 10 s (${took} ms)`);
  console.log('PASS cluster.test.mjs');
} catch (e) {
  failed = true;
  console.error(e);
  console.error(logs.join('\n'));
  for (const p of pages) {
    const info = await p.page.evaluate(async () => ({
      state: window.hearth.state, url: window.hearth.signalUrl,
      pc: window.hearth.peerConnection() && window.hearth.peerConnection().connectionState,
      stats: await window.hearth.stats(),
    })).catch((err) => String(err));
    console.error(`--- page ${p.name}: ${JSON.stringify(info).slice(0, 1500)}`);
  }
  for (const n of nodes) console.error(`--- ${n.id}\n${n.output.join('').slice(-3000)}`);
} finally {
  await chromium.close();
  for (const p of procs) p.kill('SIGKILL');
  hosts.cleanup();
  rmSync(dir, { recursive: true, force: true });
}
if (failed) process.exit(1);
