// Interop fixture: panva's oidc-provider as a real authorization server, and
// a protected API that verifies its JWT access tokens and DPoP proofs.
//
// Used by tests/tests/interop_oidc_provider.rs; see README.md beside this file.
//
//   node server.mjs            (after `npm ci` in this directory)
//
// Both listen on 127.0.0.1 on ephemeral ports. Once ready, ONE JSON line goes
// to stdout: {"issuer": …, "api": …, "resource": …, "token_ttl": …, "clients": […]}.
// Everything else (the reasons behind every refusal) goes to stderr.
// The process exits when its stdin closes, or after INTEROP_TIME_LIMIT_S.
//
// Environment:
//   INTEROP_CLIENT_SECRET  secret of the client_secret_basic/_post clients
//                          (default below; it needs form-urlencoding on purpose)
//   INTEROP_JWT_CLIENTS    JSON object {client_id: public JWK with "alg"}: one
//                          private_key_jwt client per entry (and a DPoP-bound twin)
//   INTEROP_TOKEN_TTL_S    access token lifetime in seconds (default 10)
//   INTEROP_API_NONCE_S    how often the API rotates its DPoP nonce (default 4)
//   INTEROP_TIME_LIMIT_S   hard limit on the process's life (default 600)

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import {
  calculateJwkThumbprint,
  createRemoteJWKSet,
  EmbeddedJWK,
  exportJWK,
  generateKeyPair,
  jwtVerify,
} from 'jose';
import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const TOKEN_TTL = positiveInt('INTEROP_TOKEN_TTL_S', 10);
const API_NONCE_ROTATE = positiveInt('INTEROP_API_NONCE_S', 4);
const TIME_LIMIT = positiveInt('INTEROP_TIME_LIMIT_S', 600);
const SECRET = process.env.INTEROP_CLIENT_SECRET ?? 'interop s3cret: a+b/c%d&e=f';
const SCOPES = 'api:read api:write';
/** Seconds a DPoP proof's iat may be away from the API's clock. */
const PROOF_IAT_WINDOW = 60;
const PROOF_ALGS = ['ES256', 'Ed25519', 'EdDSA', 'RS256', 'PS256'];

function positiveInt(name, fallback) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) {
    fail(`${name}: expected a positive integer, got ${JSON.stringify(text)}`);
  }
  return value;
}

function fail(message) {
  process.stderr.write(`[interop] fatal: ${message}\n`);
  process.exit(2);
}

function log(message) {
  process.stderr.write(`[interop] ${message}\n`);
}

// ---- lifetime: stdin closing or the hard limit ends the process ----------------

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
setTimeout(() => {
  log(`time limit of ${TIME_LIMIT} s reached, exiting`);
  process.exit(3);
}, TIME_LIMIT * 1000).unref();

// ---- counters, served on GET /stats of the API port ----------------------------

const stats = { token: {}, api: {}, rejections: [] };

function tokenStats(clientId) {
  stats.token[clientId] ??= {
    requests: 0, // POSTs to the token endpoint
    issued: 0, // 200 responses
    issued_dpop: 0, // 200 responses with token_type DPoP
    use_dpop_nonce: 0, // 400 use_dpop_nonce
    errors: 0, // every other error
    with_dpop_proof: 0, // requests that carried a DPoP header
    auth: {}, // client authentication as sent: basic / post / private_key_jwt / none
  };
  return stats.token[clientId];
}

const apiTokens = new Map(); // clientId -> Set of access token jti

function apiStats(clientId) {
  stats.api[clientId] ??= {
    requests: 0,
    ok: 0,
    ok_dpop: 0,
    ok_bearer: 0,
    use_dpop_nonce: 0,
    rejected: 0,
    distinct_tokens: 0,
  };
  return stats.api[clientId];
}

function reject(clientId, reason) {
  log(`api: rejected (client ${clientId}): ${reason}`);
  stats.rejections.push({ client_id: clientId, reason });
  if (stats.rejections.length > 200) stats.rejections.shift();
}

// ---- listen first: the issuer and the API's URL need the ports -----------------

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve(server.address().port));
  });
}

const authServer = http.createServer();
const apiServer = http.createServer();
const issuer = `http://${HOST}:${await listen(authServer)}`;
const api = `http://${HOST}:${await listen(apiServer)}`;
/** The API's RFC 8707 resource indicator, and the `aud` of its tokens. */
const resource = `${api}/`;

// ---- the authorization server --------------------------------------------------

async function signingKey(alg, kid) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
}

let jwtClients = {};
if (process.env.INTEROP_JWT_CLIENTS) {
  try {
    jwtClients = JSON.parse(process.env.INTEROP_JWT_CLIENTS);
  } catch (e) {
    fail(`INTEROP_JWT_CLIENTS is not JSON: ${e.message}`);
  }
}

const common = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
};
const clients = [];
for (const method of ['client_secret_basic', 'client_secret_post']) {
  const id = method === 'client_secret_basic' ? 'basic' : 'post';
  for (const dpop of [false, true]) {
    clients.push({
      ...common,
      client_id: dpop ? `${id}-dpop` : id,
      client_secret: SECRET,
      token_endpoint_auth_method: method,
      dpop_bound_access_tokens: dpop,
    });
  }
}
for (const [id, jwk] of Object.entries(jwtClients)) {
  if (!jwk || typeof jwk !== 'object' || typeof jwk.alg !== 'string' || 'd' in jwk) {
    fail(`INTEROP_JWT_CLIENTS[${id}]: expected a public JWK with "alg"`);
  }
  for (const dpop of [false, true]) {
    clients.push({
      ...common,
      client_id: dpop ? `${id}-dpop` : id,
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: jwk.alg,
      jwks: { keys: [{ ...jwk, use: 'sig' }] },
      dpop_bound_access_tokens: dpop,
    });
  }
}

const provider = new Provider(issuer, {
  clients,
  jwks: {
    keys: [await signingKey('ES256', 'at-es256'), await signingKey('RS256', 'id-rs256')],
  },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      // Every DPoP proof at the token endpoint must carry the server's nonce.
      requireNonce: () => true,
    },
    resourceIndicators: {
      enabled: true,
      // No `resource` parameter still gets a JWT for the API (else: opaque, API scopes dropped).
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator !== resource) {
          throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
        }
        return {
          scope: SCOPES,
          audience: resource,
          accessTokenTTL: TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
  },
});

// oidc-provider's error bodies are vague (`invalid_grant` covers several DPoP
// faults, `invalid_client` every authentication fault): log the reason.
function describe(err) {
  const cause = err?.cause ? ` (cause: ${err.cause.message ?? err.cause})` : '';
  return `${err?.error ?? err?.name}: ${err?.error_description ?? ''}`
    + `${err?.error_detail ? ` [${err.error_detail}]` : ''}${cause}`;
}
for (const event of ['grant.error', 'discovery.error', 'jwks.error', 'server_error']) {
  provider.on(event, (ctx, err) => {
    const client = ctx.oidc?.client?.clientId ?? ctx.oidc?.params?.client_id ?? '?';
    log(`provider ${event} (client ${client}): ${describe(err)}`);
  });
}

/** The client id of a `Basic` Authorization header, for requests refused before it was looked up. */
function basicClientId(authorization) {
  const [scheme, value] = authorization.split(' ');
  if (!/^basic$/i.test(scheme ?? '') || !value) return 'unknown';
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  try {
    return colon > 0 ? decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20')) : 'unknown';
  } catch {
    return 'unknown';
  }
}

// Count token endpoint traffic per client, with the authentication as sent.
provider.use(async (ctx, next) => {
  const isToken = ctx.method === 'POST' && ctx.path === '/token';
  const authorization = ctx.get('authorization');
  const hasProof = ctx.get('dpop') !== '';
  await next();
  if (!isToken) return;
  const params = ctx.oidc?.params ?? {};
  const clientId = ctx.oidc?.client?.clientId ?? params.client_id ?? basicClientId(authorization);
  const s = tokenStats(clientId);
  s.requests += 1;
  if (hasProof) s.with_dpop_proof += 1;
  let auth = 'none';
  if (/^basic /i.test(authorization)) auth = 'basic';
  else if (params.client_assertion) auth = 'private_key_jwt';
  else if (params.client_secret) auth = 'post';
  s.auth[auth] = (s.auth[auth] ?? 0) + 1;
  const body = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
  if (ctx.status === 200) {
    s.issued += 1;
    if (String(body.token_type).toLowerCase() === 'dpop') s.issued_dpop += 1;
    log(`token issued to ${clientId} (${body.token_type}, ${body.expires_in} s, scope ${body.scope})`);
  } else if (body.error === 'use_dpop_nonce') {
    s.use_dpop_nonce += 1;
  } else {
    s.errors += 1;
  }
});

authServer.on('request', provider.callback());

// ---- the protected API ---------------------------------------------------------

const metadata = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const providerKeys = createRemoteJWKSet(new URL(metadata.jwks_uri));

// The API's own DPoP nonce: rotated every API_NONCE_ROTATE seconds; only the
// current one is accepted, so a client holding an old one is challenged again.
let apiNonce = crypto.randomBytes(16).toString('base64url');
setInterval(() => {
  apiNonce = crypto.randomBytes(16).toString('base64url');
}, API_NONCE_ROTATE * 1000).unref();

const seenProofs = new Map(); // `${jkt} ${jti}` -> unix time after which it may be forgotten
setInterval(() => {
  const now = Date.now() / 1000;
  for (const [k, until] of seenProofs) if (until < now) seenProofs.delete(k);
}, 30_000).unref();

class Refusal extends Error {
  constructor(status, scheme, error, description, extraHeaders = {}) {
    super(description);
    this.status = status;
    this.scheme = scheme;
    this.error = error;
    this.extraHeaders = extraHeaders;
  }
}

function quote(text) {
  return `"${String(text).replace(/["\\]/g, '\\$&')}"`;
}

function unixNow() {
  return Math.floor(Date.now() / 1000);
}

/** Checks a request's token (and DPoP proof); returns what the API learned. */
async function authorize(req, url) {
  const authorization = req.headers.authorization ?? '';
  const match = /^(Bearer|DPoP) +([A-Za-z0-9\-._~+/]+=*)$/i.exec(authorization);
  if (!match) {
    throw new Refusal(401, 'Bearer', 'invalid_request', authorization ? 'malformed Authorization header' : 'no access token');
  }
  const scheme = match[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
  const token = match[2];

  let claims;
  try {
    ({ payload: claims } = await jwtVerify(token, providerKeys, {
      issuer,
      audience: resource,
      typ: 'at+jwt',
      algorithms: ['ES256'],
      requiredClaims: ['exp', 'iat', 'jti', 'client_id'],
      clockTolerance: 0,
    }));
  } catch (e) {
    throw new Refusal(401, scheme, 'invalid_token', `access token refused: ${e.code ?? ''} ${e.message}`);
  }
  const clientId = claims.client_id;
  const info = { clientId, claims, scheme };

  const scopes = new Set(String(claims.scope ?? '').split(' '));
  if (!scopes.has('api:read')) {
    throw Object.assign(
      new Refusal(403, scheme, 'insufficient_scope', `scope ${claims.scope} lacks api:read`),
      { clientId },
    );
  }

  const jkt = claims.cnf?.jkt;
  const proofs = [req.headers.dpop].flat().filter((p) => p !== undefined);
  if (!jkt) {
    if (scheme !== 'Bearer') {
      throw Object.assign(new Refusal(401, 'DPoP', 'invalid_token', 'token is not DPoP-bound but presented as DPoP'), { clientId });
    }
    return info;
  }
  const refuse = (error, description, extra) => Object.assign(new Refusal(401, 'DPoP', error, description, extra), { clientId });
  if (scheme !== 'DPoP') throw refuse('invalid_token', 'DPoP-bound token presented as Bearer');
  if (proofs.length !== 1) throw refuse('invalid_dpop_proof', `expected one DPoP header, got ${proofs.length}`);

  let payload;
  let protectedHeader;
  try {
    ({ payload, protectedHeader } = await jwtVerify(proofs[0], EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: PROOF_ALGS,
    }));
  } catch (e) {
    throw refuse('invalid_dpop_proof', `proof signature or header refused: ${e.code ?? ''} ${e.message}`);
  }
  const jwk = protectedHeader.jwk;
  for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) {
    if (member in jwk) throw refuse('invalid_dpop_proof', `proof jwk carries private member ${member}`);
  }
  if (typeof payload.jti !== 'string' || !payload.jti) throw refuse('invalid_dpop_proof', 'proof without jti');
  if (payload.htm !== req.method) throw refuse('invalid_dpop_proof', `htm ${payload.htm} != ${req.method}`);
  const expectedHtu = `http://${req.headers.host}${url.pathname}`;
  if (typeof payload.htu !== 'string') throw refuse('invalid_dpop_proof', 'proof without htu');
  const htu = URL.parse(payload.htu);
  if (!htu || htu.search || htu.hash || payload.htu.includes('?') || payload.htu.includes('#')) {
    throw refuse('invalid_dpop_proof', `htu ${payload.htu} is not a URI without query and fragment`);
  }
  if (htu.href !== new URL(expectedHtu).href) throw refuse('invalid_dpop_proof', `htu ${payload.htu} != ${expectedHtu}`);
  if (typeof payload.iat !== 'number' || Math.abs(unixNow() - payload.iat) > PROOF_IAT_WINDOW) {
    throw refuse('invalid_dpop_proof', `iat ${payload.iat} is not within ${PROOF_IAT_WINDOW} s of ${unixNow()}`);
  }
  const ath = crypto.createHash('sha256').update(token).digest('base64url');
  if (payload.ath !== ath) throw refuse('invalid_dpop_proof', `ath ${payload.ath} != base64url(SHA-256(token))`);
  const thumbprint = await calculateJwkThumbprint(jwk, 'sha256');
  if (thumbprint !== jkt) throw refuse('invalid_token', `proof key thumbprint ${thumbprint} != cnf.jkt ${jkt}`);
  const replayKey = `${jkt} ${payload.jti}`;
  if (seenProofs.has(replayKey)) throw refuse('invalid_dpop_proof', `replayed proof jti ${payload.jti}`);
  seenProofs.set(replayKey, payload.iat + 2 * PROOF_IAT_WINDOW);
  if (payload.nonce !== apiNonce) {
    const why = payload.nonce === undefined ? 'proof without the API nonce' : 'stale API nonce';
    throw refuse('use_dpop_nonce', why, { 'DPoP-Nonce': apiNonce });
  }
  return info;
}

function send(res, status, headers, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}

/** The protected API's paths: all answer alike. */
const API_PATHS = new Set(['/data', '/api/v1/integration/health-records']);

async function handleApi(req, res) {
  const url = new URL(req.url, `http://${req.headers.host ?? HOST}`);
  if (req.method === 'GET' && url.pathname === '/stats') {
    send(res, 200, {}, stats);
    return;
  }
  // `/api/v1/integration/health-records` is the seed's path (the example
  // service calls it): the same answer as `/data`.
  if (!API_PATHS.has(url.pathname) || (req.method !== 'GET' && req.method !== 'POST')) {
    send(res, 404, {}, { error: 'not_found' });
    return;
  }
  // Drain any body (POST /data is accepted like GET).
  for await (const chunk of req) void chunk;
  try {
    const { clientId, claims, scheme } = await authorize(req, url);
    const s = apiStats(clientId);
    s.requests += 1;
    s.ok += 1;
    if (scheme === 'DPoP') s.ok_dpop += 1;
    else s.ok_bearer += 1;
    if (!apiTokens.has(clientId)) apiTokens.set(clientId, new Set());
    apiTokens.get(clientId).add(claims.jti);
    s.distinct_tokens = apiTokens.get(clientId).size;
    const headers = scheme === 'DPoP' ? { 'DPoP-Nonce': apiNonce } : {};
    send(res, 200, headers, {
      ok: true,
      client_id: clientId,
      token_type: scheme,
      scope: claims.scope,
      exp: claims.exp,
      jkt: claims.cnf?.jkt ?? null,
    });
  } catch (e) {
    if (!(e instanceof Refusal)) {
      log(`api: internal error: ${e.stack ?? e}`);
      send(res, 500, {}, { error: 'server_error' });
      return;
    }
    const clientId = e.clientId ?? 'unknown';
    const s = apiStats(clientId);
    s.requests += 1;
    if (e.error === 'use_dpop_nonce') s.use_dpop_nonce += 1;
    else {
      s.rejected += 1;
      reject(clientId, `${e.status} ${e.error}: ${e.message}`);
    }
    const challenge = `${e.scheme} error=${quote(e.error)}, error_description=${quote(e.message)}`
      + (e.scheme === 'DPoP' ? `, algs="${PROOF_ALGS.join(' ')}"` : '');
    send(res, e.status, { 'WWW-Authenticate': challenge, ...e.extraHeaders }, {
      error: e.error,
      error_description: e.message,
    });
  }
}

apiServer.on('request', (req, res) => {
  handleApi(req, res).catch((e) => {
    log(`api: ${e.stack ?? e}`);
    if (!res.headersSent) send(res, 500, {}, { error: 'server_error' });
  });
});

log(`oidc-provider at ${issuer}, API at ${api}, token TTL ${TOKEN_TTL} s, `
  + `clients ${clients.map((c) => c.client_id).join(' ')}`);
process.stdout.write(`${JSON.stringify({
  issuer,
  api,
  resource,
  token_ttl: TOKEN_TTL,
  clients: clients.map((c) => c.client_id),
})}\n`);
