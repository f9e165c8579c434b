// The only way the page talks to the platform: the public APIs on the page's own origin.
//
// Shedding (429/503) is answered honestly: the waiting room shows when the request will be tried
// again (Retry-After, or retry_at in the body), counts down, and sends the *same* request again,
// with the same Idempotency-Key, never sooner than told. A lost connection is retried with
// backoff. The access token lives in this module's memory only; the refresh token is an HttpOnly
// cookie the order service sets on /v1/auth (scripts cannot read it), so a reload signs in again
// by POST /v1/auth/refresh without the page ever holding the refresh token.

import { t, when } from './i18n.js';

let accessToken = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export function signedIn() { return accessToken !== null; }
export function setSignedOutHandler(fn) { onSignedOut = fn; }
export function setToken(token) { accessToken = token; }

export function newKey() {
  return crypto.randomUUID();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function retryDelayS(response, body) {
  const header = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
  const fromBody = Number(body?.error?.retry_after_s);
  const candidates = [header, fromBody].filter((v) => Number.isFinite(v) && v > 0);
  const at = Date.parse(body?.error?.retry_at ?? '');
  if (Number.isFinite(at)) candidates.push(Math.ceil((at - Date.now()) / 1000));
  return Math.max(1, ...candidates);
}

async function waitingRoom(seconds) {
  const room = document.getElementById('waiting');
  const text = document.getElementById('waiting-text');
  const count = document.getElementById('waiting-count');
  const until = Date.now() + seconds * 1000;
  text.textContent = t('waiting_text', { at: when(new Date(until).toISOString()) });
  room.hidden = false;
  try {
    for (let left = seconds; left > 0; left = Math.ceil((until - Date.now()) / 1000)) {
      count.textContent = t('waiting_count', { s: left });
      await sleep(Math.min(1000, until - Date.now()));
    }
  } finally {
    room.hidden = true;
  }
}

async function parse(response) {
  const type = response.headers.get('Content-Type') ?? '';
  if (type.includes('json')) return response.json().catch(() => null);
  return null;
}

// One API call. `body` is JSON unless it is FormData; `key` is the Idempotency-Key reused on
// every retry of this call; `raw` returns the Response (for PDFs); a 503 whose code is in `noWait`
// (qris_unavailable: the buyer can pay another way now) is thrown instead of waited out.
// `etag` (a view's ETag, or '' for none yet) makes it a conditional GET: the answer is then
// `{ status, etag, body }`, with status 304 (and no body) while the view is still that one.
// `signal` aborts the request (a long poll of a view the phone has left): the promise then rejects.
export async function api(method, path, { body, key, raw = false, auth = true, retried = false, noWait = [], etag, signal } = {}) {
  const headers = {};
  if (auth && accessToken) headers.Authorization = `Bearer ${accessToken}`;
  if (key) headers['Idempotency-Key'] = key;
  if (etag) headers['If-None-Match'] = etag;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', cache: 'no-store', signal });
    } catch (error) {
      if (signal?.aborted) throw error;
      announce(t('offline'));
      await sleep(Math.min(30, 2 ** attempt) * 1000);
      continue;
    }
    if (response.status === 429 || response.status === 503) {
      const data = await parse(response);
      if (noWait.includes(data?.error?.code)) {
        throw new ApiError(response.status, data.error.code, data.error.message ?? response.statusText, data);
      }
      await waitingRoom(retryDelayS(response, data));
      continue;
    }
    if (response.status === 401 && auth && !retried && path !== '/v1/auth/refresh') {
      if (await refresh()) return api(method, path, { body, key, raw, auth, retried: true, noWait, etag, signal });
      accessToken = null;
      onSignedOut();
    }
    if (etag !== undefined && response.status === 304) return { status: 304, etag, body: null };
    if (!response.ok) {
      const data = await parse(response);
      const error = data?.error ?? {};
      throw new ApiError(response.status, error.code ?? String(response.status),
        error.message ?? response.statusText, data);
    }
    if (raw) return response;
    if (response.status === 204) return null;
    if (etag !== undefined) return { status: response.status, etag: response.headers.get('ETag') ?? '', body: await parse(response) };
    return parse(response);
  }
}

// A new access token from the HttpOnly refresh cookie; false when there is no session.
export async function refresh() {
  try {
    const response = await fetch('/v1/auth/refresh', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}', credentials: 'same-origin',
    });
    if (!response.ok) return false;
    const data = await response.json();
    accessToken = data.token;
    return true;
  } catch {
    return false;
  }
}

export async function signOut() {
  try {
    await api('POST', '/v1/auth/logout', { body: {} });
  } catch { /* signed out anyway */ }
  accessToken = null;
}

export function announce(text) {
  const status = document.getElementById('status');
  status.textContent = '';
  setTimeout(() => { status.textContent = text; }, 50);
}

// Follows a view that answers long polls (GET /v1/orders/{id}: ETag, If-None-Match, wait_s) until
// `done`: each request is held by the server until the view changes (or `waitS` passes), so a
// change shows at once and a waiting phone asks about twice a minute instead of every few seconds.
// `show` gets every new version of the view. A 304 that comes back sooner than asked (the server
// had no room to hold it) is followed by a pause, so the page never asks in a tight loop.
export async function follow(path, done, show, { signal, waitS = 25 } = {}) {
  let etag = '';
  let view = null;
  for (;;) {
    const started = Date.now();
    let answer;
    try {
      answer = await api('GET', etag ? `${path}?wait_s=${waitS}` : path, { etag, signal });
    } catch (error) {
      if (signal?.aborted) return view; // the phone left the view: its long poll is dropped, not left holding a connection
      throw error;
    }
    if (signal?.aborted) return view;
    if (answer.status === 304) {
      if (Date.now() - started < 1000) await sleep(2000);
      continue;
    }
    ({ etag, body: view } = answer);
    show(view);
    if (done(view)) return view;
    if (!etag) await sleep(2000); // a view without an ETag cannot be waited on: ask again later, not at once
  }
}

// Poll `fn` until `done(result)`, with backoff from 1 s to `maxS` (not a tight loop).
export async function poll(fn, done, { maxS = 5, signal } = {}) {
  let delay = 1;
  for (;;) {
    const result = await fn();
    if (done(result) || signal?.aborted) return result;
    await sleep(delay * 1000);
    delay = Math.min(maxS, delay * 1.5);
  }
}
