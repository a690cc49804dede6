// Benchmark: a receiver on a constrained link, through Hearth and directly.
//
// Two runs over the same shaped link (farNamespace: tbf rate, bounded queue, random loss),
// back to back:
//   hearth: Alice (camera in simulcast + microphone) publishes into a meeting; Carol, in the
//           shaped namespace, receives through Hearth (its send-side estimate and layer
//           choice do the adapting);
//   p2p:    Alice's page and Carol's page connect directly (plain RTCPeerConnection, one
//           camera encoding + microphone): Chromium's own congestion control adapts the
//           encoder, the peer the issue names.
// For each: the time until Carol's loss settles (the link caps the rate, so overshoot shows
// as the queue overflowing), the average received rate as a fraction of the link and the
// loss after that, frames decoded per second, the longest gap between decoded frames, and
// Chromium's freeze count and frozen time.
//
//   tests/browser/run.sh congestion.bench.mjs target/release/hearth  (deploy/bench/constrained_link.sh)
// Env: LINK_KBPS (300), LOSS_PERCENT (1), QUEUE_MS (300), HOLD_S (30), SKIP_P2P (1: Hearth only).
import { farNamespace, launchBrowser, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/release/hearth';
const SERVER_IP = '10.78.0.1';
const BASE = `http://${SERVER_IP}:7880`;
const LINK = {
  kbps: Number(process.env.LINK_KBPS || 300),
  lossPercent: Number(process.env.LOSS_PERCENT || 1),
  queueMs: Number(process.env.QUEUE_MS || 300),
};
const HOLD_MS = Number(process.env.HOLD_S || 30) * 1000;
// What Alice's page is opened with through Hearth, e.g. `&codec=vp9&svc=L3T3_KEY` (one VP9
// stream whose spatial layers Hearth drops for Carol) instead of VP8 simulcast.
const ALICE_QUERY = process.env.ALICE_QUERY || '';
const secure = [`--unsafely-treat-insecure-origin-as-secure=${BASE}`,
  '--disable-features=WebRtcHideLocalIpsWithMdns'];

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** What the page's peer connection receives now: total bytes, and its video's counters. */
async function inbound(page, pcExpr) {
  return page.evaluate(async (expr) => {
    // eslint-disable-next-line no-eval
    const pc = eval(expr);
    const report = [...(await pc.getStats()).values()].filter((s) => s.type === 'inbound-rtp');
    const video = report.filter((s) => s.kind === 'video');
    const sum = (list, f) => list.reduce((t, s) => t + (s[f] || 0), 0);
    return {
      bytes: sum(report, 'bytesReceived') + sum(report, 'headerBytesReceived'),
      packets: sum(report, 'packetsReceived'),
      lost: sum(report, 'packetsLost'),
      frames: sum(video, 'framesDecoded'),
      freezes: sum(video, 'freezeCount'),
      frozen: sum(video, 'totalFreezesDuration'),
      width: Math.max(0, ...video.map((s) => s.frameWidth || 0)),
      // For the timeline printed around a long gap.
      keyframes: sum(video, 'keyFramesDecoded'),
      nacks: sum(video, 'nackCount'),
      plis: sum(video, 'pliCount'),
      rtx: sum(video, 'retransmittedPacketsReceived'),
      videoPackets: sum(video, 'packetsReceived'),
      videoLost: sum(video, 'packetsLost'),
    };
  }, pcExpr);
}

/** Shapes the link, samples Carol's reception every 100 ms for HOLD_MS, unshapes. */
async function measure(far, page, pcExpr) {
  const samples = [];
  far.shape(LINK);
  const t0 = Date.now();
  try {
    while (Date.now() - t0 < HOLD_MS) {
      samples.push({ t: Date.now() - t0, ...(await inbound(page, pcExpr)) });
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    far.unshape();
  }
  // Per second of the run: the received rate, and the share of packets lost. The link
  // caps the rate, so overshoot shows as loss (the queue overflowing) above the random
  // loss: converged once loss stays under three times the link's random loss (at least 3 %).
  // (Both stacks repair losses with NACK and RTX; packetsLost counts what stayed lost.)
  const rates = [];
  const losses = [];
  for (let s = 1; s * 1000 <= HOLD_MS; s++) {
    const a = samples.filter((x) => x.t <= (s - 1) * 1000).at(-1) || samples[0];
    const b = samples.filter((x) => x.t <= s * 1000).at(-1);
    rates.push(((b.bytes - a.bytes) * 8) / ((b.t - a.t) / 1000) / 1000);
    const got = b.packets - a.packets;
    const lost = Math.max(0, b.lost - a.lost);
    losses.push(got + lost > 0 ? lost / (got + lost) : 0);
  }
  // Judged over 3-second windows: a second holds some 60 packets, and two random losses
  // in one are already 3 %.
  const lossBound = Math.max(0.03, (3 * LINK.lossPercent) / 100);
  const windowed = losses.map((_, i) => {
    const w = losses.slice(i, i + 3);
    return w.reduce((a, b) => a + b, 0) / w.length;
  });
  let settled = windowed.length;
  for (let i = windowed.length - 1; i >= 0 && windowed[i] <= lossBound; i--) settled = i;
  // Never settled (the last seconds lost more than the bound): the whole hold is measured.
  const after = samples.filter((x) => x.t >= settled * 1000);
  const first = after[0] || samples[0];
  const last = samples.at(-1);
  const secs = Math.max(0.001, (last.t - first.t) / 1000);
  let gap = 0;
  let gapAt = 0;
  for (let i = 1, lastNew = samples[0].t; i < samples.length; i++) {
    const ends = samples[i].frames > samples[i - 1].frames || i === samples.length - 1;
    if (ends && samples[i].t - lastNew > gap) {
      gap = samples[i].t - lastNew;
      gapAt = lastNew;
    }
    if (samples[i].frames > samples[i - 1].frames) lastNew = samples[i].t;
  }
  if (gap >= 1000) {
    // What a freeze is made of: Carol's video receiver from 1 s before the gap to its end.
    console.log('long gap: [ms, frames, keyframes, video packets, lost, nacks, plis, rtx, width]');
    for (const x of samples.filter((x) => x.t >= gapAt - 1000 && x.t <= gapAt + gap + 200)) {
      console.log(JSON.stringify([x.t, x.frames, x.keyframes, x.videoPackets, x.videoLost, x.nacks, x.plis, x.rtx, x.width]));
    }
  }
  return {
    convergedS: settled < rates.length ? settled : null,
    throughput: ((last.bytes - first.bytes) * 8) / secs / 1000 / LINK.kbps,
    fps: (last.frames - first.frames) / secs,
    framesDecoded: last.frames - samples[0].frames,
    longestGapMs: gap,
    // When the longest gap began: ms after the shaping, and the wall clock (for server logs).
    gapAtMs: gapAt,
    gapAtClock: new Date(t0 + gapAt).toISOString().slice(11, 23),
    freezes: last.freezes - samples[0].freezes,
    frozenS: last.frozen - samples[0].frozen,
    widths: [...new Set(samples.map((x) => x.width))],
    lossAfter: (() => {
      const got = last.packets - first.packets;
      const lost = Math.max(0, last.lost - first.lost);
      return got + lost > 0 ? lost / (got + lost) : 0;
    })(),
    rates: rates.map((r) => Math.round(r)),
    losses: losses.map((l) => Math.round(l * 1000) / 10),
  };
}

const far = await farNamespace(SERVER_IP);
let server = null;
let near = null;
const results = {};
try {
  server = await startServer(binary, [
    '--dev', '--media-port', '7882', '--public-ip', SERVER_IP, '--empty-timeout', '5s',
  ], { http: `${SERVER_IP}:7880` });
  near = await launchBrowser(secure);
  const farBrowser = await far.launch(secure);

  // ---- Through Hearth.
  const alice = await (await near.browser.newContext()).newPage();
  await alice.goto(`${BASE}/?meeting=bench-cc&name=alice&autojoin=1${ALICE_QUERY}`);
  const carol = await (await farBrowser.newContext()).newPage();
  await carol.goto(`${BASE}/?meeting=bench-cc&name=carol&autojoin=1&media=0`);
  await until('carol receives alice\'s full layer', async () =>
    (await carol.evaluate(() => window.hearth.stats())).remote
      .some((r) => r.kind === 'video' && r.frameWidth >= 640), 45000);
  log('hearth: carol receives alice at 640 px; shaping');
  results.hearth = await measure(far, carol, 'window.hearth.peerConnection()');
  log('hearth', JSON.stringify(results.hearth));
  await carol.close();
  await alice.close();

  // ---- Directly between two Chromium pages (the same fake camera and microphone).
  if (!process.env.SKIP_P2P) {
  const a = await (await near.browser.newContext()).newPage();
  const c = await (await farBrowser.newContext()).newPage();
  for (const p of [a, c]) await p.goto(`${BASE}/healthz`).catch(() => p.goto(`${BASE}/`));
  await a.evaluate(async () => {
    window.pc = new RTCPeerConnection();
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
    for (const t of stream.getTracks()) window.pc.addTrack(t, stream);
    window.ice = [];
    window.pc.onicecandidate = (e) => { if (e.candidate) window.ice.push(e.candidate.toJSON()); };
  });
  await c.evaluate(() => {
    window.pc = new RTCPeerConnection();
    window.ice = [];
    window.pc.onicecandidate = (e) => { if (e.candidate) window.ice.push(e.candidate.toJSON()); };
  });
  const offer = await a.evaluate(async () => {
    await window.pc.setLocalDescription();
    return window.pc.localDescription.toJSON();
  });
  const answer = await c.evaluate(async (o) => {
    await window.pc.setRemoteDescription(o);
    await window.pc.setLocalDescription();
    return window.pc.localDescription.toJSON();
  }, offer);
  await a.evaluate((ans) => window.pc.setRemoteDescription(ans), answer);
  // Trickle what each gathered (host candidates on c0/c1 and loopback).
  await until('candidates gathered', async () =>
    (await a.evaluate(() => window.ice.length)) > 0 && (await c.evaluate(() => window.ice.length)) > 0);
  await new Promise((r) => setTimeout(r, 500));
  const [ai, ci] = [await a.evaluate(() => window.ice), await c.evaluate(() => window.ice)];
  await c.evaluate(async (list) => { for (const x of list) await window.pc.addIceCandidate(x).catch(() => {}); }, ai);
  await a.evaluate(async (list) => { for (const x of list) await window.pc.addIceCandidate(x).catch(() => {}); }, ci);
  await until('carol decodes alice directly at 640 px', async () => (await inbound(c, 'window.pc')).width >= 640, 45000);
  log('p2p: carol receives alice at 640 px; shaping');
  results.p2p = await measure(far, c, 'window.pc');
  log('p2p', JSON.stringify(results.p2p));
  }
} finally {
  // The whole server log, when asked for (HEARTH_SERVER_LOG=<file>; HEARTH_LOG sets its filter).
  if (server && process.env.HEARTH_SERVER_LOG) {
    (await import('node:fs')).writeFileSync(process.env.HEARTH_SERVER_LOG, server.output.join(''));
  }
  if (near) await near.close();
  await far.cleanup();
  if (server) await server.stop();
}

const row = (name, r) => `| ${name} | ${r.convergedS === null ? 'never' : `${r.convergedS} s`} | `
  + `${(r.throughput * 100).toFixed(0)} % | ${(r.lossAfter * 100).toFixed(1)} % | ${r.fps.toFixed(1)} | ${r.framesDecoded} | ${r.longestGapMs} ms | `
  + `${r.freezes} (${r.frozenS.toFixed(2)} s) | ${r.widths.filter((w) => w).join(', ')} |`;
console.log(`\nlink: ${far.shaped || `tbf ${LINK.kbps} kbit/s, queue <= ${LINK.queueMs} ms, ${LINK.lossPercent} % loss`}, held ${HOLD_MS / 1000} s`);
console.log('| receiver | loss settles after | received / link rate, after | loss, after | fps | frames decoded | longest gap | Chromium freezes | widths seen |');
console.log('|---|---|---|---|---|---|---|---|---|');
console.log(row('Carol through Hearth', results.hearth));
if (results.p2p) console.log(row('Carol directly from Alice (Chromium GCC)', results.p2p));
process.exit(0);
