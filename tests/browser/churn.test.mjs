// Churn during the first negotiation: a participant leaves while two others are still
// negotiating their first offers. Nobody else's session may end because of it: the two
// pages keep their first session (no reconnect) and decode each other. Repeated in fresh
// meetings, since the window is a few hundred milliseconds wide.
//
//   tests/browser/run.sh churn.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const ROUNDS = Number(process.env.CHURN_ROUNDS || 4);
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--empty-timeout', '5s']);
const chromium = await launchBrowser();
let failed = false;
let open = [];

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

async function decodes(p, fromId) {
  const s = await p.stats();
  return counter(s, fromId, 'video', 'framesDecoded') > 0
    && counter(s, fromId, 'audio', 'packetsReceived') > 0;
}

try {
  for (let round = 1; round <= ROUNDS; round += 1) {
    const meeting = `churn-${round}`;
    const probe = await openParticipant(chromium.browser, server.base, meeting, 'probe', logs);
    await until('the probe joined', () => probe.page.evaluate(() => window.hearth.state === 'joined'));
    const alice = await openParticipant(chromium.browser, server.base, meeting, 'alice', logs);
    const bob = await openParticipant(chromium.browser, server.base, meeting, 'bob', logs);
    open = [alice, bob];
    // Leave as soon as both have joined: their first offers (and the server's offers of
    // the probe's tracks) are in flight now.
    await until('alice and bob joined', async () => (await alice.page.evaluate(() => window.hearth.state)) === 'joined'
      && (await bob.page.evaluate(() => window.hearth.state)) === 'joined', 15000, 10);
    await probe.page.evaluate(() => window.hearth.leave());
    const t0 = Date.now();
    const aliceId = await alice.page.evaluate(() => window.hearth.participantId);
    const bobId = await bob.page.evaluate(() => window.hearth.participantId);
    await until(`round ${round}: alice decodes bob`, () => decodes(alice, bobId), 20000);
    await until(`round ${round}: bob decodes alice`, () => decodes(bob, aliceId), 20000);
    const restarts = {
      alice: await alice.page.evaluate(() => window.hearth.reconnects),
      bob: await bob.page.evaluate(() => window.hearth.reconnects),
    };
    log(`round ${round}: both decode ${Date.now() - t0} ms after the probe left; restarts`, JSON.stringify(restarts));
    assert.deepEqual(restarts, { alice: [], bob: [] }, 'the probe leaving restarted nobody');
    assert.equal(await alice.page.evaluate(() => window.hearth.participantId), aliceId, 'alice kept her session');
    assert.equal(await bob.page.evaluate(() => window.hearth.participantId), bobId, 'bob kept his session');
    for (const p of [probe, alice, bob]) await p.context.close();
  }
  log(`churn: ${ROUNDS} rounds, nobody restarted`);
} catch (e) {
  failed = true;
  console.error(e);
  for (const p of open) {
    const info = await p.page.evaluate(() => ({ state: window.hearth.state, lastError: window.hearth.lastError,
      reconnects: window.hearth.reconnects })).catch((err) => String(err));
    console.error(`${p.name}:`, JSON.stringify(info));
  }
  console.error('--- page logs ---\n' + logs.join('\n'));
  console.error('--- server output (tail) ---\n' + server.output.join('').split('\n').slice(-200).join('\n'));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
