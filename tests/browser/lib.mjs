// Shared helpers for the browser tests: start a Hearth server, launch Chromium, poll with
// deadlines (never sleep-and-hope).
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.HEARTH_CHROMIUM || '/usr/bin/chromium';

/** Starts `hearth` with the given args; resolves once /readyz answers. */
export async function startServer(binary, args, { http = '127.0.0.1:7880' } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hearth-e2e-'));
  const proc = spawn(binary, ['serve', '--http', http, '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env, // HEARTH_LOG, if set, picks the server's log filter
  });
  const output = [];
  proc.stdout.on('data', (d) => output.push(d.toString()));
  proc.stderr.on('data', (d) => output.push(d.toString()));
  const base = `http://${http}`;
  await until('server ready', async () => {
    if (proc.exitCode !== null) throw new Error(`hearth exited early:\n${output.join('')}`);
    try {
      const res = await fetch(`${base}/readyz`);
      return res.ok;
    } catch {
      return false;
    }
  }, 20000);
  return {
    base,
    proc,
    output,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await until('server exit', () => proc.exitCode !== null, 10000).catch(() => proc.kill('SIGKILL'));
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Launches headless Chromium with fake camera and microphone. */
export async function launchBrowser(extraArgs = []) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'hearth-chromium-'));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      ...extraArgs,
    ],
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Opens the demo page for `name` in its own browser context, auto-joining `meeting`. */
export async function openParticipant(browser, base, meeting, name, logs, extraQuery = '') {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') logs.push(`[${name}] ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  await page.goto(`${base}/?meeting=${encodeURIComponent(meeting)}&name=${encodeURIComponent(name)}&autojoin=1${extraQuery}`);
  return { name, page, context, stats: () => page.evaluate(() => window.hearth.stats()) };
}

/** Polls `fn` until it returns a truthy value or the deadline passes. */
export async function until(what, fn, timeoutMs = 15000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${e.stack || e}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * The width at which `viewer` receives `from`'s camera now (0 if none), from the web
 * client's stats overlay (turn it on with `window.hearth.setStatsOverlay(true)`).
 */
/** A style that turns every tile into a 96 px thumbnail (small tiles get small layers). */
export const SMALL_TILES = '#grid { grid-template-columns: repeat(auto-fill, 96px) !important; } #grid .tile { width: 96px !important; }';

export async function receivedWidth(viewer, from) {
  const lines = await viewer.page.evaluate(() => window.hearth.statsOverlay());
  const video = lines.find((l) => l.participant === from && l.kind === 'video');
  return video ? video.width : 0;
}

/** Sum of a counter over a participant's remote entries from `from` of `kind`. */
export function counter(stats, from, kind, field) {
  return stats.remote
    .filter((r) => r.participant === from && r.kind === kind)
    .reduce((sum, r) => sum + (r[field] || 0), 0);
}

/**
 * A second network namespace for a browser on a shaped link: a veth pair, c0 (`serverIp`,
 * in our namespace, where the server listens) and c1 (10.78.0.2, in the new one). What
 * we send toward it leaves through c0, where `shape` puts a token bucket (tc tbf: the rate
 * and a queue of at most `queueMs`) and an nftables rule dropping `lossPercent` at
 * random. This kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so no propagation
 * delay is added. The namespace is held by a process of its own (`unshare --net`) and
 * entered with nsenter, not named with `ip netns add` (which needs to mount /run/netns):
 * so it works as root and in the user namespace tests/run.sh uses without root. Needs ip,
 * tc, nft and nsenter; call `cleanup` in a finally.
 */
export async function farNamespace(serverIp = '10.78.0.1') {
  const sh = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const holder = spawn('unshare', ['--net', 'sleep', 'infinity'], { stdio: 'ignore' });
  const netns = `/proc/${holder.pid}/ns/net`;
  const ours = readlinkSync('/proc/self/ns/net');
  await until('the far namespace exists', () => {
    if (holder.exitCode !== null) throw new Error('unshare --net failed');
    try { return readlinkSync(netns) !== ours; } catch { return false; }
  }, 5000, 10);
  const inNs = (args) => sh('nsenter', [`--net=${netns}`, ...args]);
  const tmp = mkdtempSync(join(tmpdir(), 'hearth-far-'));
  const browsers = [];
  const far = {
    serverIp,
    shaped: null,
    shape({ kbps, queueMs = 300, lossPercent = 1 }) {
      sh('tc', ['qdisc', 'add', 'dev', 'c0', 'root', 'tbf', 'rate', `${kbps}kbit`, 'burst', '3000', 'latency', `${queueMs}ms`]);
      sh('nft', ['add', 'table', 'inet', 'hearthfar']);
      sh('nft', ['add', 'chain', 'inet', 'hearthfar', 'out', '{ type filter hook postrouting priority 0; }']);
      if (lossPercent > 0) {
        sh('nft', ['add', 'rule', 'inet', 'hearthfar', 'out', 'oifname', 'c0', 'meta', 'l4proto', 'udp',
          'numgen', 'random', 'mod', '1000', '<', String(Math.round(lossPercent * 10)), 'drop']);
      }
      far.shaped = `tbf ${kbps} kbit/s, queue <= ${queueMs} ms, ${lossPercent} % random loss`;
    },
    unshape() {
      sh('tc', ['qdisc', 'del', 'dev', 'c0', 'root']);
      sh('nft', ['delete', 'table', 'inet', 'hearthfar']);
      far.shaped = null;
    },
    /** Launches Chromium inside the namespace (Playwright drives it over a pipe). */
    async launch(extraArgs = []) {
      const wrapper = join(tmp, 'chromium-in-ns');
      writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=${netns} ${CHROMIUM} "$@"\n`);
      chmodSync(wrapper, 0o755);
      const browser = await chromium.launch({
        executablePath: wrapper,
        headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--use-fake-device-for-media-stream',
          '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required', ...extraArgs],
      });
      browsers.push(browser);
      return browser;
    },
    async cleanup() {
      for (const b of browsers) await b.close().catch(() => {});
      if (far.shaped) {
        try { far.unshape(); } catch { /* half shaped */ }
      }
      try { sh('nft', ['delete', 'table', 'inet', 'hearthfar']); } catch { /* not there */ }
      // The veth pair goes with the namespace, and the namespace with its holder.
      holder.kill('SIGKILL');
      try { sh('ip', ['link', 'del', 'c0']); } catch { /* already gone */ }
      rmSync(tmp, { recursive: true, force: true });
    },
  };
  try {
    sh('ip', ['link', 'add', 'c0', 'type', 'veth', 'peer', 'name', 'c1', 'netns', String(holder.pid)]);
    sh('ip', ['addr', 'add', `${serverIp}/24`, 'dev', 'c0']);
    sh('ip', ['link', 'set', 'c0', 'up']);
    inNs(['ip', 'link', 'set', 'lo', 'up']);
    inNs(['ip', 'addr', 'add', '10.78.0.2/24', 'dev', 'c1']);
    inNs(['ip', 'link', 'set', 'c1', 'up']);
    inNs(['ip', 'route', 'add', 'default', 'via', serverIp]);
  } catch (e) {
    await far.cleanup();
    throw e;
  }
  return far;
}

/**
 * Test hosts for a cluster: `count` network namespaces (each held by an `unshare --net`
 * process and entered with nsenter, as in farNamespace), each with a veth pair whose outer
 * end joins a bridge in our namespace. Host i has 10.79.0.(i+1); our namespace (where the
 * browsers and Redis run) has 10.79.0.254 on the bridge. `run(i, cmd, args)` spawns a
 * process in host i. Call `cleanup` in a finally.
 */
export async function clusterHosts(count) {
  const sh = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const ours = readlinkSync('/proc/self/ns/net');
  const holders = [];
  const cleanup = () => {
    for (const h of holders) h.kill('SIGKILL');
    try { sh('ip', ['link', 'del', 'hbr0']); } catch { /* gone */ }
  };
  try {
    sh('ip', ['link', 'add', 'hbr0', 'type', 'bridge']);
    sh('ip', ['addr', 'add', '10.79.0.254/24', 'dev', 'hbr0']);
    sh('ip', ['link', 'set', 'hbr0', 'up']);
    for (let i = 0; i < count; i++) {
      const holder = spawn('unshare', ['--net', 'sleep', 'infinity'], { stdio: 'ignore' });
      holders.push(holder);
      const netns = `/proc/${holder.pid}/ns/net`;
      await until(`host ${i} exists`, () => {
        if (holder.exitCode !== null) throw new Error('unshare --net failed');
        try { return readlinkSync(netns) !== ours; } catch { return false; }
      }, 5000, 10);
      const inNs = (args) => sh('nsenter', [`--net=${netns}`, ...args]);
      sh('ip', ['link', 'add', `hv${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(holder.pid)]);
      sh('ip', ['link', 'set', `hv${i}`, 'master', 'hbr0']);
      sh('ip', ['link', 'set', `hv${i}`, 'up']);
      inNs(['ip', 'link', 'set', 'lo', 'up']);
      inNs(['ip', 'addr', 'add', `10.79.0.${i + 1}/24`, 'dev', 'eth0']);
      inNs(['ip', 'link', 'set', 'eth0', 'up']);
      inNs(['ip', 'route', 'add', 'default', 'via', '10.79.0.254']);
    }
  } catch (e) {
    cleanup();
    throw e;
  }
  return {
    ip: (i) => `10.79.0.${i + 1}`,
    gateway: '10.79.0.254',
    run(i, cmd, args, options = {}) {
      return spawn('nsenter', [`--net=/proc/${holders[i].pid}/ns/net`, cmd, ...args], options);
    },
    cleanup,
  };
}
