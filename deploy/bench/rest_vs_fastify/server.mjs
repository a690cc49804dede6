// The Fastify side of the benchmark: Hearth's `POST /v1/meetings` and `GET /v1/meetings/{id}`
// in Node.js, one process, with the same checks in the same order as Hearth's REST guard
// (api/src/rest/guard.rs, api/src/grpc/mod.rs authorize_header, api/src/token.rs):
//
//   1. `Authorization: Bearer <token>` (ASCII, `Bearer ` or `bearer `), the token verified
//      (jwt.mjs: HS256 with the API key's secret, constant-time compare, kid, exp, nbf);
//      401 problem + `WWW-Authenticate` otherwise;
//   2. the `admin` grant (403);
//   3. the per-API-key token bucket (50 requests/s, burst 100, 429 + `Retry-After`);
//   4. the meeting name (`^[A-Za-z0-9._~-]{1,128}$`, 400) within the token's scope (403);
//   5. the meeting (404), answered with the same JSON as Hearth: a meeting with an empty
//      participant list, serialized from a response schema (fast-json-stringify).
//
//   node server.mjs --port 7990 --keys keys.json [--max-participants 100] [--empty-timeout 20]
//
// keys.json: {"APIkey": "secret", ...}. Meetings live in memory.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import { verify, TokenError } from './jwt.mjs';

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '7990' },
    keys: { type: 'string' },
    'max-participants': { type: 'string', default: '100' },
    'empty-timeout': { type: 'string', default: '20' },
  },
});
if (!opts.keys) {
  console.error('--keys FILE is required');
  process.exit(2);
}
const keys = new Map(Object.entries(JSON.parse(readFileSync(opts.keys, 'utf8'))));
const defaults = {
  maxParticipants: Number(opts['max-participants']),
  emptyTimeoutSeconds: Number(opts['empty-timeout']),
};

// ----- Problems (RFC 9457), as Hearth writes them ---------------------------------------------

const TITLES = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found',
  409: 'Conflict', 413: 'Payload Too Large', 415: 'Unsupported Media Type',
  429: 'Too Many Requests', 500: 'Internal Server Error' };

function problem(reply, status, code, detail) {
  reply.code(status).header('content-type', 'application/problem+json');
  if (code === 'UNAUTHENTICATED') reply.header('www-authenticate', 'Bearer realm="hearth"');
  return reply.send(
    JSON.stringify({ type: 'about:blank', title: TITLES[status], status, detail, code }),
  );
}

// ----- The guard: token, admin grant, rate limit -----------------------------------------------

const RATE_PER_SECOND = 50;
const RATE_BURST = 100;
const buckets = new Map();

/** Takes a request from the key's bucket; returns 0, or the seconds until one is back. */
function takeToken(apiKey) {
  const now = performance.now() / 1000;
  let b = buckets.get(apiKey);
  if (b === undefined) {
    b = { tokens: RATE_BURST, at: now };
    buckets.set(apiKey, b);
  }
  b.tokens = Math.min(b.tokens + (now - b.at) * RATE_PER_SECOND, RATE_BURST);
  b.at = now;
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return 0;
  }
  return Math.max(1, Math.ceil((1 - b.tokens) / RATE_PER_SECOND));
}

const ASCII = /^[\x00-\x7f]*$/;

async function guard(request, reply) {
  const value = request.headers.authorization;
  if (value === undefined) {
    return problem(reply, 401, 'UNAUTHENTICATED', 'missing `authorization: Bearer <token>`');
  }
  if (!ASCII.test(value)) {
    return problem(reply, 401, 'UNAUTHENTICATED', 'the authorization value is not ASCII');
  }
  let token;
  if (value.startsWith('Bearer ') || value.startsWith('bearer ')) token = value.slice(7).trim();
  else return problem(reply, 401, 'UNAUTHENTICATED', 'authorization must be `Bearer <token>`');
  let claims;
  try {
    claims = verify(keys, token);
  } catch (e) {
    if (e instanceof TokenError) return problem(reply, 401, 'UNAUTHENTICATED', e.message);
    throw e;
  }
  if (!claims.grants.admin) {
    return problem(reply, 403, 'PERMISSION_DENIED',
      'the token lacks the admin grant needed for this API');
  }
  const retryAfter = takeToken(claims.iss);
  if (retryAfter !== 0) {
    reply.header('retry-after', String(retryAfter));
    return problem(reply, 429, 'RESOURCE_EXHAUSTED',
      `too many requests for this API key; retry in ${retryAfter} s`);
  }
  request.claims = claims;
}

// ----- Meetings --------------------------------------------------------------------------------

const MEETING_ID = /^[A-Za-z0-9._~-]{1,128}$/;
const meetings = new Map();
let nextActor = 2; // Hearth's node actor is 0.1; meetings count on from 0.2

/** The meeting of a path within the caller's scope, or a problem already sent. */
function meetingInScope(request, reply, id) {
  if (!MEETING_ID.test(id)) {
    problem(reply, 400, 'INVALID_ARGUMENT',
      'id: a meeting name is 1 to 128 characters of A-Z a-z 0-9 . _ ~ -');
    return null;
  }
  const scope = request.claims.meeting;
  if (scope !== '' && scope !== id) {
    problem(reply, 403, 'PERMISSION_DENIED', `the token manages meeting ${JSON.stringify(scope)} only`);
    return null;
  }
  return id;
}

/** RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, like Hearth's `rfc3339`. */
function rfc3339(nanos) {
  const secs = nanos / 1_000_000_000n;
  const frac = Number(nanos % 1_000_000_000n);
  const base = new Date(Number(secs) * 1000).toISOString().slice(0, 19);
  let digits = '';
  if (frac !== 0) {
    if (frac % 1_000_000 === 0) digits = '.' + String(frac / 1_000_000).padStart(3, '0');
    else if (frac % 1000 === 0) digits = '.' + String(frac / 1000).padStart(6, '0');
    else digits = '.' + String(frac).padStart(9, '0');
  }
  return `${base}${digits}Z`;
}

// Wall-clock nanoseconds (the wall clock at start plus the monotonic clock since).
const clockBase = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
const nowNanos = () => clockBase + process.hrtime.bigint();

const settingsSchema = {
  type: 'object',
  properties: {
    maxParticipants: { type: 'integer' },
    emptyTimeoutSeconds: { type: 'integer' },
  },
  required: ['maxParticipants', 'emptyTimeoutSeconds'],
};

// Hearth's `Meeting` (api/src/rest/model.rs), fields in the same order.
const meetingSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    startedAt: { type: 'string' },
    participantCount: { type: 'integer' },
    settings: settingsSchema,
    participants: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          id: { type: 'string' },
          identity: { type: 'string' },
          name: { type: 'string' },
          joinedAt: { type: 'string' },
          tracks: { type: 'array', items: { type: 'object', additionalProperties: true } },
          permissions: {
            type: 'object',
            properties: { publish: { type: 'boolean' }, subscribe: { type: 'boolean' } },
          },
          virtual: { type: 'boolean' },
          actorId: { type: 'string' },
        },
      },
    },
    actorId: { type: 'string' },
    metadata: { type: 'string' },
  },
  required: ['id', 'startedAt', 'participantCount', 'settings', 'participants', 'actorId',
    'metadata'],
};

// No request logging (Hearth logs none either); unknown body fields refused, not dropped
// (Hearth's `deny_unknown_fields`).
const app = Fastify({ logger: false, ajv: { customOptions: { removeAdditional: false } } });
app.decorateRequest('claims', null); // set by the guard; declared for V8's object shapes

app.get('/healthz', async () => 'ok');

app.register(async (v1) => {
  v1.addHook('onRequest', guard);

  v1.post('/v1/meetings', {
    schema: {
      body: {
        type: 'object',
        properties: {
          id: { type: 'string' },
          settings: {
            type: 'object',
            properties: {
              maxParticipants: { type: 'integer', minimum: 0, maximum: 10000 },
              emptyTimeoutSeconds: { type: 'integer', minimum: 0, maximum: 86400 },
            },
            additionalProperties: false,
          },
          metadata: { type: 'string', maxLength: 16384 },
        },
        required: ['id'],
        additionalProperties: false,
      },
      response: { 201: meetingSchema },
    },
  }, async (request, reply) => {
    const id = meetingInScope(request, reply, request.body.id);
    if (id === null) return reply;
    if (meetings.has(id)) {
      return problem(reply, 409, 'ALREADY_EXISTS', `meeting ${id} already exists`);
    }
    const s = request.body.settings ?? {};
    const meeting = {
      id,
      startedAt: rfc3339(nowNanos()),
      participantCount: 0,
      settings: {
        maxParticipants: s.maxParticipants || defaults.maxParticipants,
        emptyTimeoutSeconds: s.emptyTimeoutSeconds || defaults.emptyTimeoutSeconds,
      },
      participants: [],
      actorId: `0.${nextActor++}`,
      metadata: request.body.metadata ?? '',
    };
    meetings.set(id, meeting);
    reply.code(201).header('location', `/v1/meetings/${id}`).header('content-type', 'application/json');
    return meeting;
  });

  v1.get('/v1/meetings/:id', {
    schema: { response: { 200: meetingSchema } },
  }, async (request, reply) => {
    const id = meetingInScope(request, reply, request.params.id);
    if (id === null) return reply;
    const meeting = meetings.get(id);
    if (meeting === undefined) {
      return problem(reply, 404, 'NOT_FOUND', `meeting ${id} not found`);
    }
    reply.header('content-type', 'application/json');
    return meeting;
  });
});

app.setErrorHandler((error, request, reply) => {
  const status = TITLES[error.statusCode] ? error.statusCode : 500;
  const code = status === 413 ? 'RESOURCE_EXHAUSTED' : status < 500 ? 'INVALID_ARGUMENT' : 'INTERNAL';
  return problem(reply, status, code, error.message);
});

await app.listen({ host: opts.host, port: Number(opts.port) });
console.log(`fastify ${app.version} on node ${process.version} listening on ${opts.host}:${opts.port}`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => app.close().then(() => process.exit(0)));
}
