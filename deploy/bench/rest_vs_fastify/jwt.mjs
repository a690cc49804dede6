// Hearth's access tokens in Node.js: HS256 JWTs with the claims of api/src/token.rs.
//
// `verify` is the Fastify server's token check and follows KeyStore::verify step by step
// (same order, same refusals, same messages): at most 8 KiB, three base64url parts, header
// `alg` exactly "HS256", a `kid` (if any) that names a known key and equals `iss`, the
// signature checked in constant time (crypto.timingSafeEqual) before any claim is trusted,
// `exp` strict, `nbf`/`iat` with 10 s of skew, `sub` 1 to 256 bytes, `name` at most 256.
// `mint` is used by bench.mjs to make the tokens both servers are loaded with.

import { createHmac, timingSafeEqual } from 'node:crypto';

const LEEWAY_SECS = 10;
const MAX_TOKEN_LEN = 8 * 1024;
const B64URL = /^[A-Za-z0-9_-]*$/;

export class TokenError extends Error {}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function b64urlDecode(part) {
  // Strict like the base64 crate's URL_SAFE_NO_PAD (Buffer.from alone accepts almost
  // anything): the URL-safe alphabet, no padding, no dangling character, and the unused low
  // bits of the last character zero (one encoding per byte string).
  const rest = part.length % 4;
  if (!B64URL.test(part) || rest === 1) return null;
  if (rest !== 0) {
    const last = ALPHABET.indexOf(part[part.length - 1]);
    if ((last & (rest === 2 ? 0x0f : 0x03)) !== 0) return null;
  }
  return Buffer.from(part, 'base64url');
}

function decodeJson(part) {
  const bytes = b64urlDecode(part);
  if (bytes === null) throw new TokenError('the token is not a well-formed JWT: a part is not base64url');
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new TokenError('the token is not a well-formed JWT: a part is not the expected JSON');
  }
}

const notJson = () =>
  new TokenError('the token is not a well-formed JWT: a part is not the expected JSON');
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isU64 = (v) => Number.isInteger(v) && v >= 0;

// The typed shapes serde would accept (absent optional fields take their defaults).
function header(h) {
  if (!isObject(h) || typeof h.alg !== 'string') throw notJson();
  if (h.typ != null && typeof h.typ !== 'string') throw notJson();
  if (h.kid != null && typeof h.kid !== 'string') throw notJson();
  return h;
}

function claims(c) {
  if (!isObject(c) || typeof c.iss !== 'string' || typeof c.sub !== 'string') throw notJson();
  if (!isObject(c.grants) || !isU64(c.exp)) throw notJson();
  for (const g of ['join', 'publish', 'subscribe', 'create', 'admin']) {
    if (c.grants[g] !== undefined && typeof c.grants[g] !== 'boolean') throw notJson();
  }
  for (const s of ['name', 'meeting']) {
    if (c[s] !== undefined && typeof c[s] !== 'string') throw notJson();
  }
  for (const n of ['iat', 'nbf']) {
    if (c[n] !== undefined && !isU64(c[n])) throw notJson();
  }
  return {
    iss: c.iss,
    sub: c.sub,
    name: c.name ?? '',
    meeting: c.meeting ?? '',
    grants: {
      join: c.grants.join === true,
      publish: c.grants.publish === true,
      subscribe: c.grants.subscribe === true,
      create: c.grants.create === true,
      admin: c.grants.admin === true,
    },
    iat: c.iat ?? 0,
    nbf: c.nbf ?? 0,
    exp: c.exp,
  };
}

/** Checks `token` against `keys` (a Map of API key to secret); returns its claims. */
export function verify(keys, token, nowSecs = Math.floor(Date.now() / 1000)) {
  if (token.length > MAX_TOKEN_LEN) throw new TokenError('the token is not a well-formed JWT: too long');
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw new TokenError('the token is not a well-formed JWT: expected three dot-separated parts');
  }
  const [h64, c64, s64] = parts;
  const h = header(decodeJson(h64));
  if (h.alg !== 'HS256') throw new TokenError("the token's algorithm must be HS256");
  const c = claims(decodeJson(c64));
  if (h.kid != null) {
    if (!keys.has(h.kid)) throw new TokenError('the token was signed by an unknown API key');
    if (h.kid !== c.iss) {
      throw new TokenError("the token's claims are invalid: kid and iss name different API keys");
    }
  }
  const secret = keys.get(c.iss);
  if (secret === undefined) throw new TokenError('the token was signed by an unknown API key');
  const sig = b64urlDecode(s64);
  if (sig === null) throw new TokenError('the token is not a well-formed JWT: signature is not base64url');
  const mac = createHmac('sha256', secret).update(h64).update('.').update(c64).digest();
  if (sig.length !== mac.length || !timingSafeEqual(sig, mac)) {
    throw new TokenError("the token's signature does not verify");
  }
  if (c.exp <= nowSecs) throw new TokenError('the token has expired');
  const skew = nowSecs + LEEWAY_SECS;
  if (c.nbf > skew || c.iat > skew) throw new TokenError('the token is not valid yet');
  const subLen = Buffer.byteLength(c.sub);
  if (subLen === 0 || subLen > 256) {
    throw new TokenError("the token's claims are invalid: sub (identity) must be 1 to 256 bytes");
  }
  if (Buffer.byteLength(c.name) > 256) {
    throw new TokenError("the token's claims are invalid: name must be at most 256 bytes");
  }
  return c;
}

/** Signs `claims` with `secret` (HS256); the header names the key in `kid` when given. */
export function mint(claimsObj, secret, kid) {
  const h = kid === undefined ? { alg: 'HS256', typ: 'JWT' } : { alg: 'HS256', typ: 'JWT', kid };
  const h64 = Buffer.from(JSON.stringify(h)).toString('base64url');
  const c64 = Buffer.from(JSON.stringify(claimsObj)).toString('base64url');
  const sig = createHmac('sha256', secret).update(h64).update('.').update(c64).digest('base64url');
  return `${h64}.${c64}.${sig}`;
}

/** Claims of a node-wide admin token, like `hearth token --admin --identity ID`. */
export function adminClaims(apiKey, identity, ttlSecs, nowSecs = Math.floor(Date.now() / 1000)) {
  return {
    iss: apiKey,
    sub: identity,
    name: identity,
    meeting: '',
    grants: { join: true, publish: true, subscribe: true, create: true, admin: true },
    iat: nowSecs,
    nbf: nowSecs,
    exp: nowSecs + ttlSecs,
  };
}
