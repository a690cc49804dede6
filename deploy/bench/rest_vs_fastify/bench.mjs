// The REST benchmark's driver (run.sh installs what it needs and starts it):
// `GET /v1/meetings/{id}` with a bearer token, Hearth against the same endpoint in Fastify,
// each server alone on one core and the load on the other, alternating in one run.
//
// Per round and server: start it pinned to the server CPU, create meeting `bench` with
// `POST /v1/meetings`, warm up, then
//   1. the maximum rate: wrk (closed loop, --connections keep-alive connections) for
//      --duration seconds: requests/s, p50/p99 from wrk;
//   2. half of that rate (--fraction): build/fixedrate (open loop, latency from when each
//      request was due) for --duration seconds: p50/p99;
//   3. with --pipeline N (N > 0): the maximum rate again, wrk pipelining N requests per write
//      on each connection (HTTP/1.1), for --duration seconds: requests/s; first a probe
//      checks that one batch of N pipelined requests gets N answers 200 in order;
// and around each the server's CPU time (utime+stime of /proc/PID/stat, all its threads),
// so each gets requests per CPU-second. Then the Markdown tables and the targets.
//
// The API keys: Hearth limits REST requests to 50/s per API key (burst 100) by default
// (--rest-rate, --rest-burst; kept at the defaults, which server.mjs has too), so one key
// cannot carry a load test; the load spreads over --keys keys (a [keys] table in a config
// file), one token each, used in turn. Every request still goes through the token check
// and the rate limiter; Fastify does both the same way. See README.md.

import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, openSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { adminClaims, mint } from './jwt.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: o } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    runs: { type: 'string', default: '2' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '64' },
    'fixed-connections': { type: 'string', default: '32' },
    fraction: { type: 'string', default: '0.5' },
    keys: { type: 'string', default: '5000' },
    pipeline: { type: 'string', default: '0' },
    only: { type: 'string', default: 'both' },
    out: { type: 'string' },
    'check-only': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (o.help) {
  console.log(`usage: run.sh [--duration S] [--runs N] [--warmup S] [--connections N]
       [--fixed-connections N] [--fraction F] [--keys N] [--pipeline N]
       [--only hearth|fastify] [--out DIR] [--check-only]
env: HEARTH_BIN, HEARTH_EXTRA_ARGS, SERVER_CPU (0), LOAD_CPU (1)`);
  process.exit(0);
}
const duration = Number(o.duration);
const runs = Number(o.runs);
const warmup = Number(o.warmup);
const fraction = Number(o.fraction);
const nkeys = Math.max(1, Number(o.keys));
// Requests per write in the pipelined maximum-rate phase; 0: no such phase.
const depth = Number(o.pipeline);
if (!Number.isInteger(depth) || depth < 0) throw new Error(`--pipeline: a whole number >= 0, not ${o.pipeline}`);
const servers = o.only === 'both' ? ['hearth', 'fastify'] : [o.only];
for (const s of servers) {
  if (s !== 'hearth' && s !== 'fastify') throw new Error(`--only: hearth or fastify, not ${s}`);
}

const repo = resolve(here, '../../..');
const hearthBin = process.env.HEARTH_BIN ||
  ['/tmp/soakbin/hearth', join(repo, 'target/release/hearth')].find((b) => existsSync(b));
const fixedrate = process.env.FIXEDRATE ?? join(here, 'build', 'fixedrate');
const serverCpu = process.env.SERVER_CPU ?? '0';
const loadCpu = process.env.LOAD_CPU ?? (cpus().length > 1 ? '1' : '0');
const work = o.out ? resolve(o.out) : mkdtempSync(join(tmpdir(), 'rest-bench-'));
mkdirSync(work, { recursive: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('#', ...a);

// ----- Keys and tokens ---------------------------------------------------------------------

const API_KEY = 'APIbench';
const secret = () => randomBytes(16).toString('hex'); // 32 characters, never a leading '-'
const keys = [[API_KEY, secret()]];
for (let i = 1; i < nkeys; i++) keys.push([`${API_KEY}${i}`, secret()]);
// A key of its own for the conformance checks (never in the load's tokens).
const CHECK_KEY = 'APIcheck';
const checkSecret = secret();
const allKeys = [...keys, [CHECK_KEY, checkSecret]];
writeFileSync(join(work, 'keys.json'), JSON.stringify(Object.fromEntries(allKeys)));
writeFileSync(join(work, 'hearth.toml'),
  '[keys]\n' + allKeys.map(([k, s]) => `${k} = "${s}"`).join('\n') + '\n');
const TTL = 12 * 3600;
const tokens = keys.map(([k, s]) => mint(adminClaims(k, 'bench', TTL), s, k));
writeFileSync(join(work, 'tokens.txt'), tokens.join('\n') + '\n');

// Hearth runs on its flags and the generated config only: no HEARTH_* from the caller.
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HEARTH_')));

// The setup token comes from Hearth's own minting (`hearth token`), which both servers must
// accept as well.
let setupToken = tokens[0];
if (servers.includes('hearth')) {
  setupToken = execFileSync(hearthBin, ['token', '--admin', `--api-key=${API_KEY}`,
    `--api-secret=${keys[0][1]}`, '--identity', 'bench', '--ttl', '12h'], { env: cleanEnv })
    .toString().trim();
}

// ----- Processes, CPU time -----------------------------------------------------------------

const TICK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

function cpuSeconds(pid) {
  const { user, sys } = cpuSplit(pid);
  return user + sys;
}

/** The process's user and system CPU seconds (utime, stime: fields 14 and 15). */
function cpuSplit(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) / TICK, sys: Number(f[12]) / TICK };
}

/** Busy and total jiffies of each CPU (/proc/stat). */
function cpuTimes() {
  const out = {};
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[m[1]] = { busy: total - v[3] - v[4], total };
  }
  return out;
}

const busyShare = (a, b, cpu) =>
  b[cpu].total > a[cpu].total ? (b[cpu].busy - a[cpu].busy) / (b[cpu].total - a[cpu].total) : 0;

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function run(cmd, args) {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', rej);
    p.on('close', (code) => (code === 0 ? res(out) : rej(new Error(`${cmd} exited ${code}: ${err}`))));
  });
}

const lastJson = (text) => JSON.parse(text.trim().split('\n').filter((l) => l.startsWith('{')).pop());

async function http(port, method, path, token, body) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() };
}

let hearthHelp = '';
const versions = {};
// Servers still running if the driver dies: stopped on the way out.
const running = new Set();
process.on('exit', () => { for (const c of running) c.kill('SIGKILL'); });
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

async function startServer(name, port, round) {
  const logFile = join(work, `${name}-${round}.log`);
  const fd = openSync(logFile, 'w');
  let cmd;
  if (name === 'hearth') {
    const data = join(work, `hearth-data-${round}`);
    mkdirSync(data, { recursive: true });
    cmd = [hearthBin, '--http', `127.0.0.1:${port}`, '--media-port', '0', '--turn-port', '0',
      `--api-key=${API_KEY}`, `--api-secret=${keys[0][1]}`, '--data-dir', data,
      '--empty-timeout', '1h'];
    cmd.push('--config', join(work, 'hearth.toml'));
    if (hearthHelp.includes('--no-ledger')) cmd.push('--no-ledger');
    cmd.push(...(process.env.HEARTH_EXTRA_ARGS ?? '').split(/\s+/).filter(Boolean));
  } else {
    cmd = [process.execPath, join(here, 'server.mjs'), '--port', String(port),
      '--keys', join(work, 'keys.json'), '--empty-timeout', '3600', '--max-participants', '100'];
  }
  const child = spawn('taskset', ['-c', serverCpu, ...cmd],
    { stdio: ['ignore', fd, fd], env: name === 'hearth' ? cleanEnv : process.env });
  let exited = null;
  running.add(child);
  child.on('exit', (code, signal) => { exited = { code, signal }; running.delete(child); });
  for (let i = 0; i < 300; i++) {
    if (exited) throw new Error(`${name} exited at start (${JSON.stringify(exited)}); see ${logFile}`);
    try {
      if ((await http(port, 'GET', '/healthz')).status === 200) {
        return { child, pid: child.pid, exited: () => exited, logFile };
      }
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  throw new Error(`${name} did not answer /healthz; see ${logFile}`);
}

async function stopServer(s) {
  if (s.exited()) return;
  s.child.kill('SIGTERM');
  for (let i = 0; i < 100 && !s.exited(); i++) await sleep(50);
  if (!s.exited()) s.child.kill('SIGKILL');
  for (let i = 0; i < 100 && !s.exited(); i++) await sleep(50);
}

const url = (port) => `http://127.0.0.1:${port}`;
const PATH = '/v1/meetings/bench';
const tokensFile = join(work, 'tokens.txt');

async function wrk(port, seconds, pipeline = 0) {
  const out = await run('taskset', ['-c', loadCpu, 'wrk', '-t1', `-c${o.connections}`,
    `-d${Math.max(1, Math.round(seconds))}s`, '--latency', '-s', join(here, 'wrk.lua'), url(port), '--', tokensFile, PATH,
    ...(pipeline > 0 ? [String(pipeline)] : [])]);
  return lastJson(out);
}

/**
 * Writes `n` GET requests (the first `n` load tokens) in one write on one connection and
 * reads the answers: their statuses in order. Throws if fewer than `n` come back.
 */
function pipelineProbe(port, n) {
  const batch = Array.from({ length: n }, (_, k) =>
    `GET ${PATH} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
    `Authorization: Bearer ${tokens[k % tokens.length]}\r\n\r\n`).join('');
  return new Promise((res, rej) => {
    const sock = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const statuses = [];
    const fail = (why) => { sock.destroy(); rej(new Error(`pipelined probe: ${why} (${statuses.length} of ${n} answers)`)); };
    const timer = setTimeout(() => fail('timed out'), 10000);
    sock.setNoDelay(true);
    sock.on('connect', () => sock.write(batch));
    sock.on('error', (e) => { clearTimeout(timer); fail(e.message); });
    sock.on('end', () => { clearTimeout(timer); if (statuses.length < n) fail('connection closed'); });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const head = buf.indexOf('\r\n\r\n');
        if (head < 0) return;
        const lines = buf.subarray(0, head).toString('latin1').split('\r\n');
        const status = /^HTTP\/1\.1 (\d{3}) /.exec(lines[0]);
        const length = lines.map((l) => /^content-length:\s*(\d+)\s*$/i.exec(l)).find(Boolean);
        if (!status || !length) return fail(`cannot read answer ${statuses.length + 1}: ${lines[0]}`);
        const end = head + 4 + Number(length[1]);
        if (buf.length < end) return;
        statuses.push(Number(status[1]));
        buf = buf.subarray(end);
        if (statuses.length === n) {
          clearTimeout(timer);
          sock.destroy();
          return res(statuses);
        }
      }
    });
  });
}

async function fixed(port, rate, seconds) {
  const out = await run('taskset', ['-c', loadCpu, fixedrate, '-p', String(port), '-u', PATH,
    '-t', tokensFile, '-r', String(rate), '-d', String(seconds), '-c', o['fixed-connections']]);
  return lastJson(out);
}

/** Runs `load` and measures the server's CPU time and both CPUs' busy share around it. */
async function measured(pid, load) {
  const c0 = cpuSplit(pid);
  const t0 = cpuTimes();
  const result = await load();
  const c1 = cpuSplit(pid);
  const t1 = cpuTimes();
  const user = c1.user - c0.user;
  const sys = c1.sys - c0.sys;
  // System time includes the softirq work done while the server runs (loopback TCP: its
  // writes' delivery into the peer's socket); no CONFIG_IRQ_TIME_ACCOUNTING assumed.
  return { ...result, server_cpu_s: user + sys, server_user_s: user, server_sys_s: sys,
    server_core_busy: busyShare(t0, t1, serverCpu), load_core_busy: busyShare(t0, t1, loadCpu) };
}

const samples = { hearth: {}, fastify: {} };

/** Signs arbitrary header and claims JSON (for the malformed and forbidden cases). */
function rawToken(headerObj, claimsObj, key) {
  const h = Buffer.from(JSON.stringify(headerObj)).toString('base64url');
  const c = Buffer.from(JSON.stringify(claimsObj)).toString('base64url');
  const sig = createHmac('sha256', key).update(`${h}.${c}`).digest('base64url');
  return `${h}.${c}.${sig}`;
}

/**
 * Requests both servers must answer alike: the token check's refusals, scopes, bad and
 * unknown meetings (made once, so both get the very same tokens).
 */
function checkCases() {
  const now = Math.floor(Date.now() / 1000);
  const good = adminClaims(CHECK_KEY, 'checker', 12 * 3600, now);
  const signed = (claims, hdr = { alg: 'HS256', typ: 'JWT' }, key = checkSecret) =>
    rawToken(hdr, claims, key);
  const cases = [
    ['no authorization', PATH, null],
    ['basic scheme', PATH, 'Basic YTpi'],
    ['two parts', PATH, 'Bearer a.b'],
    ['not base64url', PATH, 'Bearer a*.b.c'],
    ['not json', PATH, `Bearer ${Buffer.from('nope').toString('base64url')}.e30.c2ln`],
    ['alg none', PATH, `Bearer ${signed(good, { alg: 'none' })}`],
    ['alg HS512', PATH, `Bearer ${signed(good, { alg: 'HS512', typ: 'JWT' })}`],
    ['no alg', PATH, `Bearer ${signed(good, { typ: 'JWT' })}`],
    ['kid unknown', PATH, `Bearer ${signed(good, { alg: 'HS256', kid: 'APInobody' })}`],
    ['kid is not iss', PATH, `Bearer ${signed(good, { alg: 'HS256', kid: API_KEY })}`],
    ['iss unknown', PATH, `Bearer ${signed({ ...good, iss: 'APInobody' })}`],
    ['wrong secret', PATH, `Bearer ${signed(good, undefined, 'another-secret-0123456789')}`],
    ['exp not a number', PATH, `Bearer ${signed({ ...good, exp: 'soon' })}`],
    ['expired', PATH, `Bearer ${signed({ ...good, exp: now - 1 })}`],
    ['expires now', PATH, `Bearer ${signed({ ...good, exp: now })}`],
    ['nbf ahead', PATH, `Bearer ${signed({ ...good, nbf: now + 3600 })}`],
    ['iat ahead', PATH, `Bearer ${signed({ ...good, iat: now + 7200 })}`],
    ['empty sub', PATH, `Bearer ${signed({ ...good, sub: '' })}`],
    ['no admin grant', PATH, `Bearer ${signed({ ...good, grants: { ...good.grants, admin: false } })}`],
    ['other meeting scope', PATH, `Bearer ${signed({ ...good, meeting: 'other' })}`],
    ['own meeting scope', PATH, `Bearer ${signed({ ...good, meeting: 'bench' })}`],
    ['lowercase bearer', PATH, `bearer ${signed(good)}`],
    ['kid is iss', PATH, `Bearer ${signed(good, { alg: 'HS256', kid: CHECK_KEY })}`],
    ['unknown meeting', '/v1/meetings/nope', `Bearer ${signed(good)}`],
    ['bad meeting name', '/v1/meetings/bad%20name', `Bearer ${signed(good)}`],
  ];
  // Signatures cut short by 1 to 4 characters: some are still base64url, some not.
  const whole = signed({ ...good, sub: 'cut' });
  for (let cut = 1; cut <= 4; cut++) {
    cases.push([`signature short by ${cut}`, PATH, `Bearer ${whole.slice(0, -cut)}`]);
  }
  return { cases, burst: signed({ ...good, sub: 'burst' }) };
}
const checks = checkCases();

async function conformance(port) {
  const { cases, burst } = checks;
  const out = [];
  for (const [what, path, auth] of cases) {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, {
      headers: auth === null ? {} : { authorization: auth },
    });
    const body = (await r.text()).replace(/"startedAt":"[^"]*"/, '"startedAt":"…"')
      .replace(/"actorId":"[^"]*"/, '"actorId":"…"');
    out.push([what, r.status, r.headers.get('www-authenticate'), body]);
  }
  // The rate limit: 150 requests at once with one key, more than its burst of 100.
  const answers = await Promise.all(Array.from({ length: 150 }, () =>
    fetch(`http://127.0.0.1:${port}${PATH}`, { headers: { authorization: `Bearer ${burst}` } })
      .then(async (r) => [r.status, r.headers.get('retry-after'), await r.text()])));
  const limited = answers.filter(([st]) => st === 429);
  // About 50 are refused (burst 100, minus the checks above, plus what refills meanwhile).
  const about50 = limited.length >= 30 && limited.length <= 60;
  out.push(['150 at once, one key', about50 ? 'about 50 x 429' : `${limited.length} x 429`,
    limited[0]?.[1] ?? null, limited[0]?.[2] ?? '']);
  return out;
}

async function measureServer(name, round) {
  const port = await freePort();
  const s = await startServer(name, port, round);
  try {
    const created = await http(port, 'POST', '/v1/meetings', setupToken, { id: 'bench' });
    if (created.status !== 201) throw new Error(`${name}: POST /v1/meetings: ${created.status} ${created.body}`);
    const got = await http(port, 'GET', PATH, tokens[tokens.length - 1]);
    if (got.status !== 200) throw new Error(`${name}: GET ${PATH}: ${got.status} ${got.body}`);
    samples[name] = { created, got };
    if (round === 1) samples[name].conformance = await conformance(port);
    if (o['check-only']) return null;
    if (warmup > 0) await wrk(port, warmup);
    const max = await measured(s.pid, () => wrk(port, duration));
    max.ok = max.requests - max.status_errors;
    max.rps = max.ok / (max.duration_us / 1e6);
    // CPU time comes in clock ticks (10 ms): too few of them say nothing.
    max.req_per_cpu_s = max.server_cpu_s >= 0.05 ? max.ok / max.server_cpu_s : null;
    const rate = Math.max(1, Math.floor(max.rps * fraction));
    const half = await measured(s.pid, () => fixed(port, rate, duration));
    half.req_per_cpu_s = half.server_cpu_s >= 0.05 ? half.status_2xx / half.server_cpu_s : null;
    let pipe = null;
    if (depth > 0) {
      // After both phases above, so they run just as they do without --pipeline.
      // Fewer than `depth` answers (pipelining not served) stops the run; answers other
      // than 200 (429s with too few --keys) are a warning, as in wrk's count.
      const probe = await pipelineProbe(port, depth);
      pipe = await measured(s.pid, () => wrk(port, duration, depth));
      pipe.depth = depth;
      pipe.probe_statuses = [...new Set(probe)];
      pipe.probe_not_200 = probe.filter((st) => st !== 200).length;
      pipe.ok = pipe.requests - pipe.status_errors;
      pipe.rps = pipe.ok / (pipe.duration_us / 1e6);
      pipe.req_per_cpu_s = pipe.server_cpu_s >= 0.05 ? pipe.ok / pipe.server_cpu_s : null;
    }
    if (s.exited()) throw new Error(`${name} died during the run; see ${s.logFile}`);
    return { round, server: name, max, half, ...(pipe ? { pipe } : {}) };
  } finally {
    await stopServer(s);
  }
}

const ms = (us) => (us / 1000).toFixed(3);
const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-');
const pct = (x) => `${Math.round(x * 100)}%`;
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

// ----- The run -----------------------------------------------------------------------------

if (servers.includes('hearth')) {
  hearthHelp = execFileSync(hearthBin, ['--help']).toString();
  versions.hearth = `${execFileSync(hearthBin, ['--version']).toString().trim()} (${hearthBin})`;
}
versions.node = process.version;
versions.fastify = JSON.parse(readFileSync(join(here, 'node_modules/fastify/package.json'), 'utf8')).version;
versions.wrk = spawnSync('wrk', ['-v']).stdout.toString().split('\n')[0].replace(/ Copyright.*/, '').trim();

log(`work dir ${work}`);
if (!o['check-only']) {
  log(`server CPU ${serverCpu}, load CPU ${loadCpu}; ${runs} round(s) of ${duration} s per phase, ${warmup} s warm-up`);
}
const results = [];
for (let round = 1; round <= (o['check-only'] ? 1 : runs); round++) {
  for (const name of servers) {
    log(`round ${round}: ${name} ...`);
    const r = await measureServer(name, round);
    if (r === null) continue;
    log(`round ${round}: ${name}: ${r.max.rps.toFixed(0)} req/s at most, ` +
      `${int(r.max.req_per_cpu_s)} req per CPU-s; at ${r.half.target_rate} req/s p99 ` +
      `${(r.half.p99_us / 1000).toFixed(3)} ms` +
      (r.pipe ? `; pipelined x${depth}: ${r.pipe.rps.toFixed(0)} req/s, ${int(r.pipe.req_per_cpu_s)} req per CPU-s` : ''));
    results.push(r);
  }
}
const conformanceOf = (name) => samples[name]?.conformance;
writeFileSync(join(work, 'results.json'), JSON.stringify({ versions, options: o, results,
  checks: { hearth: conformanceOf('hearth'), fastify: conformanceOf('fastify') } }, null, 2));

// ----- Report ------------------------------------------------------------------------------

const cpuModel = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1] ?? '?';
const lines = [];
const p = (s = '') => lines.push(s);
p(`## REST GET /v1/meetings/{id}: Hearth vs Node.js + Fastify`);
p();
p(`${new Date().toISOString()}; ${cpus().length} CPUs (${cpuModel}), Linux ` +
  `${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}; hearth ${versions.hearth ?? '-'}; ` +
  `node ${versions.node}, fastify ${versions.fastify}; ${versions.wrk}.`);
if (!o['check-only']) p(`Server on CPU ${serverCpu}, load on CPU ${loadCpu}. Max: wrk, 1 thread, ${o.connections} ` +
  `connections, ${duration} s after ${warmup} s warm-up. Half: build/fixedrate, open loop at ` +
  `${fraction} x that server's max, ${o['fixed-connections']} connections, ${duration} s. ` +
  `${nkeys} API key(s), one token each, used in turn.` +
  (depth > 0 ? ` Pipelined: wrk as in Max, ${depth} requests per write on each connection, ` +
    `${duration} s, after the half run.` : ''));
if (results.length) {
  p();
  p('| round | server | max req/s | p50 / p99 at max (ms) | server CPU-s | req per CPU-s | ' +
    'half rate (req/s) | p50 / p99 at half (ms) | req per CPU-s at half | non-2xx | server core busy | load core busy |');
  p('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    const bad = r.max.status_errors + r.max.connect_errors + r.max.read_errors + r.max.write_errors +
      r.max.timeouts + r.half.status_4xx + r.half.status_5xx + r.half.failed +
      (r.half.scheduled - r.half.answered);
    p(`| ${r.round} | ${r.server} | ${int(r.max.rps)} | ${ms(r.max.p50_us)} / ${ms(r.max.p99_us)} | ` +
      `${r.max.server_cpu_s.toFixed(2)} | ${int(r.max.req_per_cpu_s)} | ${int(r.half.target_rate)} | ` +
      `${ms(r.half.p50_us)} / ${ms(r.half.p99_us)} | ${int(r.half.req_per_cpu_s)} | ${bad} | ` +
      `${pct(r.max.server_core_busy)} / ${pct(r.half.server_core_busy)} | ` +
      `${pct(r.max.load_core_busy)} / ${pct(r.half.load_core_busy)} |`);
  }
  p();
  p('Core busy columns: max run / half run, from /proc/stat (anything running on that CPU).');
  const piped = results.filter((r) => r.pipe);
  const sysShare = (x) => (x.server_cpu_s > 0 ? pct(x.server_sys_s / x.server_cpu_s) : '-');
  if (piped.length) {
    p();
    p(`Pipelined maximum rate, ${depth} requests per write (wrk, ${o.connections} connections):`);
    p();
    p('| round | server | pipelined req/s | server CPU-s | req per CPU-s | ' +
      'req per CPU-s without pipelining | server system time share, without / with | ' +
      'non-2xx | other errors | server core busy | load core busy |');
    p('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of piped) {
      const other = r.pipe.connect_errors + r.pipe.read_errors + r.pipe.write_errors + r.pipe.timeouts;
      p(`| ${r.round} | ${r.server} | ${int(r.pipe.rps)} | ${r.pipe.server_cpu_s.toFixed(2)} | ` +
        `${int(r.pipe.req_per_cpu_s)} | ${int(r.max.req_per_cpu_s)} | ` +
        `${sysShare(r.max)} / ${sysShare(r.pipe)} | ${r.pipe.status_errors} | ${other} | ` +
        `${pct(r.pipe.server_core_busy)} | ${pct(r.pipe.load_core_busy)} |`);
    }
    p();
    p('System time share: stime / (utime + stime) of the server in the max run and the pipelined ' +
      'run; the kernel\'s part, loopback TCP and its softirq work included.');
  }

  const by = (name) => results.filter((r) => r.server === name);
  if (servers.length === 2) {
    const h = by('hearth');
    const f = by('fastify');
    const hEff = median(h.map((r) => r.max.req_per_cpu_s));
    const fEff = median(f.map((r) => r.max.req_per_cpu_s));
    const hRps = median(h.map((r) => r.max.rps));
    const fRps = median(f.map((r) => r.max.rps));
    const hP99 = median(h.map((r) => r.half.p99_us));
    p();
    p('| median over rounds | Hearth | Fastify | Hearth / Fastify |');
    p('|---|---:|---:|---:|');
    p(`| max req/s | ${int(hRps)} | ${int(fRps)} | ${(hRps / fRps).toFixed(2)} |`);
    p(`| req per CPU-second (max run) | ${int(hEff)} | ${int(fEff)} | ${(hEff / fEff).toFixed(2)} |`);
    p(`| p99 at half of own max (ms) | ${ms(hP99)} | ${ms(median(f.map((r) => r.half.p99_us)))} | |`);
    let pipeRatio = null;
    if (depth > 0) {
      const hPipe = median(h.map((r) => r.pipe.rps));
      const fPipe = median(f.map((r) => r.pipe.rps));
      const hPipeCpu = median(h.map((r) => r.pipe.server_cpu_s));
      const fPipeCpu = median(f.map((r) => r.pipe.server_cpu_s));
      const hPipeEff = median(h.map((r) => r.pipe.req_per_cpu_s));
      const fPipeEff = median(f.map((r) => r.pipe.req_per_cpu_s));
      pipeRatio = hPipeEff / fPipeEff;
      p(`| pipelined x${depth}: req/s | ${int(hPipe)} | ${int(fPipe)} | ${(hPipe / fPipe).toFixed(2)} |`);
      p(`| pipelined x${depth}: server CPU-s | ${hPipeCpu.toFixed(2)} | ${fPipeCpu.toFixed(2)} | |`);
      p(`| pipelined x${depth}: req per CPU-second | ${int(hPipeEff)} | ${int(fPipeEff)} | ${pipeRatio.toFixed(2)} |`);
    }
    p();
    p(`Targets: requests per CPU-second at least 5x Fastify's: ${(hEff / fEff).toFixed(2)}x, ` +
      `${hEff >= 5 * fEff ? 'met' : 'NOT met'}; p99 under 1 ms at half the maximum rate: ` +
      `${ms(hP99)} ms, ${hP99 < 1000 ? 'met' : 'NOT met'}.`);
    if (pipeRatio !== null) {
      p(`Pipelined (${depth} requests per write): ${pipeRatio.toFixed(2)}x Fastify's requests ` +
        `per CPU-second.`);
    }
  }

  const warnings = [];
  for (const r of results) {
    if (r.max.status_errors > 0 || r.half.status_4xx + r.half.status_5xx > 0) {
      warnings.push(`round ${r.round} ${r.server}: non-2xx answers (max run ${r.max.status_errors}, ` +
        `half run ${r.half.status_4xx + r.half.status_5xx}); 429s mean too few --keys for this rate`);
    }
    if (r.half.send_lag_p99_us > 50) {
      warnings.push(`round ${r.round} ${r.server}: fixedrate sent late (p99 send lag ` +
        `${r.half.send_lag_p99_us} us): the load core is not free, the half-rate latency is inflated`);
    }
    if (r.half.achieved_rate < 0.97 * r.half.target_rate) {
      warnings.push(`round ${r.round} ${r.server}: half run reached ${int(r.half.achieved_rate)} of ` +
        `${int(r.half.target_rate)} req/s`);
    }
    if (r.max.load_core_busy > 0.97) {
      warnings.push(`round ${r.round} ${r.server}: the load core was saturated during the max run ` +
        `(${pct(r.max.load_core_busy)}): the max rate may be the load tool's`);
    }
    const own = r.max.server_cpu_s / (r.max.duration_us / 1e6);
    if (r.max.server_core_busy - own > 0.1) {
      warnings.push(`round ${r.round} ${r.server}: something else used the server CPU during the ` +
        `max run (the server ${pct(own)} of it, the CPU busy ${pct(r.max.server_core_busy)})`);
    }
    if (r.pipe) {
      const q = r.pipe;
      if (q.probe_not_200 > 0) {
        warnings.push(`round ${r.round} ${r.server}: the pipelined probe (${depth} requests in one write) ` +
          `got ${q.probe_not_200} answers other than 200 (${q.probe_statuses.join(', ')})`);
      }
      if (q.status_errors > 0) {
        warnings.push(`round ${r.round} ${r.server}: ${q.status_errors} non-2xx answers in the pipelined run; ` +
          `429s mean too few --keys for this rate (each key: 50/s, burst 100)`);
      }
      const other = q.connect_errors + q.read_errors + q.write_errors + q.timeouts;
      if (other > 0) {
        warnings.push(`round ${r.round} ${r.server}: pipelined run: ${q.connect_errors} connect, ` +
          `${q.read_errors} read, ${q.write_errors} write errors, ${q.timeouts} timeouts`);
      }
      if (q.load_core_busy > 0.97) {
        warnings.push(`round ${r.round} ${r.server}: the load core was saturated during the pipelined run ` +
          `(${pct(q.load_core_busy)}): the rate may be wrk's`);
      }
      const ownPipe = q.server_cpu_s / (q.duration_us / 1e6);
      if (q.server_core_busy - ownPipe > 0.1) {
        warnings.push(`round ${r.round} ${r.server}: something else used the server CPU during the ` +
          `pipelined run (the server ${pct(ownPipe)} of it, the CPU busy ${pct(q.server_core_busy)})`);
      }
    }
  }
  if (warnings.length) {
    p();
    p('Warnings:');
    for (const w of warnings) p(`- ${w}`);
  }
}

// The two answers side by side (the volatile values masked).
const mask = (body) => body.replace(/"startedAt":"[^"]*"/, '"startedAt":"…"').replace(/"actorId":"[^"]*"/, '"actorId":"…"');
if (servers.length === 2) {
  const hb = mask(samples.hearth.got.body);
  const fb = mask(samples.fastify.got.body);
  p();
  p(`Same JSON (startedAt and actorId masked): ${hb === fb ? 'yes' : 'NO'}`);
  if (hb !== fb) {
    p('```');
    p(`hearth:  ${samples.hearth.got.body}`);
    p(`fastify: ${samples.fastify.got.body}`);
    p('```');
  }
  const hc = samples.hearth.conformance || [];
  const fc = samples.fastify.conformance || [];
  if (!hc.length || !fc.length) p('(the refused and edge-case requests were not recorded in this run)');
  const differ = hc.filter((c, i) => JSON.stringify(c) !== JSON.stringify(fc[i]));
  p(`Same answers to ${hc.length} refused or edge-case requests (status, WWW-Authenticate, ` +
    `body): ${differ.length === 0 ? 'yes' : `NO, ${differ.length} differ`}`);
  for (const c of differ) {
    const f = fc.find((x) => x[0] === c[0]);
    p(`- ${c[0]}: hearth ${JSON.stringify(c.slice(1))}; fastify ${JSON.stringify(f.slice(1))}`);
  }
  const hdr = (h) => Object.keys(h).sort().join(', ');
  p(`Response headers: hearth ${hdr(samples.hearth.got.headers)}; fastify ${hdr(samples.fastify.got.headers)}.`);
}
p();
p(`Raw results: ${join(work, 'results.json')}`);
const report = lines.join('\n');
writeFileSync(join(work, 'report.md'), report + '\n');
console.log(report);
