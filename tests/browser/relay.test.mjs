// Browser end to end through TURN: two Chromium pages restricted to relayed candidates
// (`iceTransportPolicy: 'relay'`, with only the TURN server the join response hands out)
// meet through Hearth's own TURN server to Hearth's SFU. One page relays over UDP, the
// other over TCP (`?relay=1&turn=tcp` keeps only the TCP URL).
//
//   node tests/browser/relay.test.mjs <path to hearth binary>
import assert from 'node:assert/strict';
import { counter, launchBrowser, openParticipant, startServer, until } from './lib.mjs';

const binary = process.argv[2] || 'target/debug/hearth';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882', '--turn-port', '3478']);
const chromium = await launchBrowser();
let failed = false;

const metric = async (name) => {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line ? Number(line.split(' ').pop()) : 0;
};
const relayed = async () => {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  return text.split('\n')
    .filter((l) => l.startsWith('hearth_turn_relayed_packets_total'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
};

try {
  const alice = await openParticipant(chromium.browser, server.base, 'behind-firewalls', 'alice', logs, '&relay=1');
  const bob = await openParticipant(chromium.browser, server.base, 'behind-firewalls', 'bob', logs, '&relay=1&turn=tcp');
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  const bobId = await until('bob joined', async () => (await bob.stats()).participantId);
  for (const [p, from] of [[alice, bobId], [bob, aliceId]]) {
    await until(`${p.name} decodes video and hears audio through TURN`, async () => {
      const s = await p.stats();
      return counter(s, from, 'video', 'framesDecoded') > 30 && counter(s, from, 'audio', 'packetsReceived') > 50;
    }, 30000);
  }
  // Media really went through TURN: both pages use relayed candidates only, and the TURN
  // server counted what it relayed both ways.
  const candidates = (p) => p.page.evaluate(() => window.hearth.selectedCandidateTypes());
  for (const p of [alice, bob]) {
    const types = await candidates(p);
    assert.equal(types.local, 'relay', `${p.name} sends from a relayed candidate: ${JSON.stringify(types)}`);
  }
  assert.equal((await candidates(bob)).relayProtocol, 'tcp', 'bob reaches TURN over TCP');
  assert.ok(await metric('hearth_turn_allocations') >= 2, 'two allocations');
  // The TURN counters are flushed to /metrics once a second.
  await until('TURN has relayed over 1000 packets', async () => (await relayed()) > 1000, 15000);
  console.log(`PASS relay.test.mjs: ${await relayed()} packets relayed by Hearth's TURN`);
} catch (e) {
  failed = true;
  console.error('FAIL relay.test.mjs:', e.stack || e);
  console.error('--- browser console ---\n' + logs.join('\n'));
  console.error('--- server output ---\n' + server.output.join(''));
} finally {
  await chromium.close();
  await server.stop();
}
process.exit(failed ? 1 : 0);
