// (exploration) VP9 SVC publishing.
import { counter, launchBrowser, openParticipant, receivedWidth, startServer, until } from './lib.mjs';
const binary = process.argv[2] || 'target/debug/hearth';
const logs = [];
const server = await startServer(binary, ['--dev', '--media-port', '7882']);
const chromium = await launchBrowser();
try {
  const alice = await openParticipant(chromium.browser, server.base, 'svc', 'alice', logs, '&codec=vp9&svc=L3T3_KEY');
  const bob = await openParticipant(chromium.browser, server.base, 'svc', 'bob', logs);
  const aliceId = await until('alice joined', async () => (await alice.stats()).participantId);
  await until('bob decodes', async () => counter(await bob.stats(), aliceId, 'video', 'framesDecoded') > 0, 30000);
  for (let i = 0; i < 5; i++) {
    const t = Date.now(); await until('wait', () => Date.now() - t > 1000, 3000, 100);
    console.log(JSON.stringify(await alice.page.evaluate(() => window.hearth.outboundLayers())), await receivedWidth(bob, aliceId),
      counter(await bob.stats(), aliceId, 'video', 'framesDecoded'), (await bob.stats()).remote.find((r) => r.kind === 'video')?.codec);
  }
} catch (e) { console.error(e); console.error(logs.join('\n')); } finally { await chromium.close(); await server.stop(); }
