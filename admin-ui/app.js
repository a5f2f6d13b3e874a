// Pigeon admin UI. Plain JavaScript on the admin API (`/api/v1`): no build step, no framework,
// embedded in the bus binary. Pages are chosen by the URL's hash (`#/pigeons/gift-progress`).
'use strict';

// ---------------------------------------------------------------------------------------------
// Small tools: DOM building, the API, formatting.

/** Builds an element: `h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child…)`. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name === 'value') el.value = value;
    else if (name === 'style') el.style.cssText = value; // CSSOM: allowed by the page's CSP
    else if (name === 'checked' || name === 'disabled' || name === 'selected' || name === 'hidden') el[name] = !!value;
    else el.setAttribute(name, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An SVG element. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  append(el, children);
  return el;
}

const TOKEN_KEY = 'pigeon.token';
let session = null; // {name, role}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || 'error';
    this.details = body.details || [];
  }
}

/** Calls the admin API; throws an `ApiError` with the API's message and details. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { code: 'unreachable', message: `The bus did not answer (${e.message}).` });
  }
  if (response.status === 401 && path !== '/me') {
    signOut('Your token is no longer valid: sign in again.');
    throw new ApiError(401, { message: 'Signed out.' });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { message: text }; }
  if (!response.ok) throw new ApiError(response.status, parsed || {});
  return parsed;
}

/** A box showing an error where it happened: its message and every detail. */
function errorBox(error) {
  const box = h('div', { class: 'error', role: 'alert' });
  if (!error) return box;
  box.append(h('strong', { text: error.message || String(error) }));
  if (error.details && error.details.length && !(error.details.length === 1 && error.details[0] === error.message)) {
    box.append(h('ul', {}, error.details.map((d) => h('li', { text: d }))));
  }
  return box;
}

function setError(slot, error) {
  slot.replaceChildren(error ? errorBox(error) : '');
  if (error) slot.querySelector('.error').focus?.();
}

function toast(text) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove('show'), 3500);
}

const pad = (n) => String(n).padStart(2, '0');
function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtAgo(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
const fmtNum = (n) => Number(n || 0).toLocaleString('en-US');
const pretty = (v) => JSON.stringify(v, null, 2);
function localInput(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Kafka headers as kept by the store: text, or bytes when not UTF-8. */
function headerLines(headers) {
  return headers.map((x) => `${x.name}: ${x.text ?? (x.bytes ? `<${x.bytes.length} bytes>` : '')}`).join('\n') || '—';
}

const STATE_BADGE = { live: 'ok', scheduled: 'info', disabled: '', ended: '', quarantined: 'bad' };
const STATUS_BADGE = { pending: 'warn', retrying: 'info', parked: 'bad', delivered: 'ok', discarded: '' };
const badge = (text, kind) => h('span', { class: `badge ${kind || ''}`, text });

/** Reads JSON typed by a person; marks the field and throws a clear error when it is not. */
function readJson(textarea, what) {
  try {
    const value = JSON.parse(textarea.value);
    textarea.removeAttribute('aria-invalid');
    return value;
  } catch (e) {
    textarea.setAttribute('aria-invalid', 'true');
    throw new ApiError(0, { message: `${what} is not JSON: ${e.message}` });
  }
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', {}, h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, ` — ${hint}`) : null), input);
}

function select(options, value, attrs) {
  return h('select', attrs || {}, options.map(([v, text]) => h('option', { value: v, selected: v === value, text: text || v })));
}

function table(headers, rows, attrs) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs || {},
      h('thead', {}, h('tr', {}, headers.map((x) => (typeof x === 'string' ? h('th', { scope: 'col', text: x }) : x)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted', text: 'Nothing here yet.' })))));
}

// ---------------------------------------------------------------------------------------------
// Charts.

/** Letters in (bars), out (line) and failures (red bars) per step. */
function chart(series) {
  const w = 600, hgt = 120, n = series.length || 1;
  const max = Math.max(1, ...series.map((p) => Math.max(p.letters_in, p.letters_out, p.failures)));
  const bw = w / n;
  const y = (v) => hgt - (v / max) * (hgt - 8);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': `Letters per step over the window: at most ${fmtNum(max)} in one step` });
  svg.append(s('line', { class: 'axis', x1: 0, x2: w, y1: hgt - 0.5, y2: hgt - 0.5 }));
  series.forEach((p, i) => {
    if (p.letters_in) svg.append(s('rect', { class: 'in', x: i * bw + 1, width: Math.max(1, bw - 2), y: y(p.letters_in), height: hgt - y(p.letters_in) }));
    if (p.failures) svg.append(s('rect', { class: 'fail', x: i * bw + 1, width: Math.max(1, bw - 2), y: y(p.failures), height: hgt - y(p.failures) }));
  });
  const line = series.map((p, i) => `${i ? 'L' : 'M'}${(i + 0.5) * bw},${y(p.letters_out)}`).join('');
  svg.append(s('path', { class: 'out', d: line, 'vector-effect': 'non-scaling-stroke' }));
  return svg;
}

function sparkline(series, label) {
  const w = 120, hgt = 24, max = Math.max(1, ...series.map((p) => p.letters_in));
  const d = series.map((p, i) => `${i ? 'L' : 'M'}${(i / Math.max(1, series.length - 1)) * w},${hgt - 2 - (p.letters_in / max) * (hgt - 4)}`).join('');
  return s('svg', { class: 'spark', viewBox: `0 0 ${w} ${hgt}`, role: 'img', 'aria-label': label }, s('path', { d }));
}

const legend = () => h('div', { class: 'legend' },
  h('span', {}, h('i', { style: 'background:#9fc3df' }), 'in'),
  h('span', {}, h('i', { style: 'background:#1d7a46' }), 'out'),
  h('span', {}, h('i', { style: 'background:#b3261e' }), 'failures'));

// ---------------------------------------------------------------------------------------------
// Line diff (longest common subsequence), for pigeon versions and audit entries.

function diffLines(before, after) {
  const lines = (text) => (text === '' ? [] : text.split('\n'));
  const a = lines(before), b = lines(after);
  const m = a.length, n = b.length;
  const lcs = Array.from({ length: m + 1 }, () => new Uint32Array(n + 1));
  for (let i = m - 1; i >= 0; i--) for (let j = n - 1; j >= 0; j--) {
    lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < m || j < n) {
    if (i < m && j < n && a[i] === b[j]) { out.push(['same', a[i]]); i++; j++; }
    else if (i < m && (j >= n || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push(['del', a[i]]); i++; }
    else { out.push(['add', b[j]]); j++; }
  }
  return out;
}

/** A value as diffable text: pretty JSON, with a script (a pigeon's) as its own lines. */
function diffText(value) {
  if (value === undefined || value === null) return '';
  if (typeof value === 'object' && typeof value.script === 'string') {
    const { script, ...rest } = value;
    return `${pretty(rest)}\nscript:\n${script.replace(/\n$/, '')}`;
  }
  return pretty(value);
}

function diffView(before, after, label) {
  const lines = diffLines(diffText(before), diffText(after));
  const changed = lines.filter(([k]) => k !== 'same').length;
  return h('div', { class: 'diff', role: 'region', tabindex: '0', 'aria-label': `${label}: ${changed} changed lines` },
    lines.map(([kind, text]) => h('div', { class: kind, text })));
}

// ---------------------------------------------------------------------------------------------
// Pages.

const main = () => document.getElementById('main');
let timers = [];

/**
 * Refreshes `slot` every 5 s with `fill` while it is on the page, unless focus is inside it.
 * `status` says when it was last refreshed, or since when it could not be.
 */
function keepFresh(slot, fill, status) {
  let fresh = Date.now();
  let waited = 0;
  const nav = navigation;
  const timer = setInterval(async () => {
    if (nav !== navigation) return clearInterval(timer); // another page since
    // Not on the page: not shown yet (its page still loads), or never will be.
    if (!slot.isConnected) return waited++ > 3 && clearInterval(timer);
    if (slot.contains(document.activeElement)) return;
    try {
      await fill();
      fresh = Date.now();
      if (status) status.replaceChildren(`Updated ${fmtTime(fresh)}.`);
    } catch (e) {
      if (status) status.replaceChildren(h('span', { class: 'badge bad', text: 'stale' }), ` Not updated since ${fmtTime(fresh)}: ${e.message}`);
    }
  }, 5000);
  timers.push(timer);
}

async function pageSignIn(root, reason) {
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', required: true, 'aria-describedby': 'token-hint' });
  const slot = h('div', { 'aria-live': 'assertive' });
  const form = h('form', { class: 'panel', style: 'max-width:480px;margin:40px auto',
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        session = await api('GET', '/me');
        setError(slot, null);
        startSession();
        route.moveFocus = true;
        route();
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        input.setAttribute('aria-invalid', 'true');
        setError(slot, err.status === 401 ? new ApiError(401, { message: 'That token is not valid (unknown, revoked or mistyped).' }) : err);
      }
    } },
  h('h1', { text: 'Sign in to Pigeon' }),
  h('p', { class: 'lede', id: 'token-hint' }, 'Paste an API token. ', h('code', { text: 'pigeon dev' }), ' prints one at start; ',
    h('code', { text: 'pigeon tokens create' }), ' makes others.'),
  reason ? h('div', { class: 'warning', text: reason }) : null,
  field('Token', input),
  slot,
  h('div', { class: 'actions' }, h('button', { type: 'submit', text: 'Sign in' })));
  root.replaceChildren(form);
  root.removeAttribute('aria-busy');
  input.focus();
}

async function pageOverview(root) {
  const status = h('span', { class: 'muted', 'aria-live': 'polite' });
  root.replaceChildren(h('h1', { text: 'Overview' }),
    h('p', { class: 'lede' }, 'The last hour, summed over every instance of the bus. Refreshes every 5 seconds. ', status));
  const body = h('div');
  root.append(body);
  const fill = async () => {
    const [stats, providers, backlog] = await Promise.all([
      api('GET', '/stats/pigeons?minutes=60'), api('GET', '/providers'), api('GET', '/dead-letters/backlog')]);
    const liveModules = providers.filter((p) => p.live).length;
    const liveInstances = providers.flatMap((p) => p.instances).filter((i) => i.state === 'live').length;
    const offlineCaps = providers.flatMap((p) => p.capabilities).filter((c) => !c.online && !c.retired_at).length;
    const waiting = backlog.pending + backlog.retrying + backlog.parked;
    const card = (label, value, note, kind, href) => h(href ? 'a' : 'div', { class: `card ${kind || ''}`, href, style: href ? 'text-decoration:none;color:inherit' : null },
      h('div', { class: 'label', text: label }), h('div', { class: 'value', text: value }), h('div', { class: 'note', text: note }));
    body.replaceChildren(
      h('div', { class: 'cards', id: 'overview-cards' },
        card('Letters in', fmtNum(stats.totals.letters_in), 'taken by pigeons, last hour'),
        card('Letters out', fmtNum(stats.totals.letters_out), 'delivered, last hour', 'ok'),
        card('Failures', fmtNum(stats.totals.failures), 'became dead letters, last hour', stats.totals.failures ? 'bad' : ''),
        card('Providers live', `${liveModules} / ${providers.length}`, `${liveInstances} instances${offlineCaps ? `, ${offlineCaps} capabilities offline` : ''}`, offlineCaps ? 'bad' : '', '#/providers'),
        card('Dead-letter backlog', fmtNum(waiting), `${fmtNum(backlog.parked)} parked for an operator`, backlog.parked ? 'bad' : '', '#/dead-letters')),
      h('section', { class: 'panel', 'aria-labelledby': 'traffic-h' },
        h('div', { class: 'spread' }, h('h2', { id: 'traffic-h', text: 'Letters per minute' }), legend()),
        chart(stats.series),
        h('div', { class: 'spread muted' }, h('span', { text: fmtTime(stats.from) }), h('span', { text: 'now' }))),
      h('h2', { text: 'Pigeons, last hour' }),
      table(['Pigeon', h('th', { class: 'num', text: 'In' }), h('th', { class: 'num', text: 'Out' }), h('th', { class: 'num', text: 'Failures' }), 'Trend'],
        stats.pigeons.map((p) => h('tr', { 'data-pigeon': p.pigeon_id },
          h('td', {}, h('a', { href: `#/pigeons/${encodeURIComponent(p.pigeon_id)}`, text: p.pigeon_id })),
          h('td', { class: 'num', text: fmtNum(p.letters_in) }),
          h('td', { class: 'num', text: fmtNum(p.letters_out) }),
          h('td', { class: 'num' }, p.failures ? badge(fmtNum(p.failures), 'bad') : '0'),
          h('td', {}, sparkline(p.series, `${p.pigeon_id}: letters in per minute`)))),
        { id: 'overview-pigeons' }));
  };
  try { await fill(); } catch (e) { body.replaceChildren(errorBox(e)); }
  keepFresh(body, fill, status); // a first failure mends itself at the next refresh
}

// --- Pigeons ------------------------------------------------------------------------------------

function describeSource(spec) {
  return `${spec.match.topic} · ${spec.match.tag || '**'}`;
}
function describeDest(d) {
  return d.capability || `${d.topic} · ${d.tag}`;
}

async function pagePigeons(root) {
  root.replaceChildren(h('div', { class: 'spread' },
    h('div', {}, h('h1', { text: 'Pigeons' }), h('p', { class: 'lede', text: 'Each pigeon takes letters of a source topic by tag and forwards, reshapes or archives them.' })),
    h('a', { class: 'button', href: '#/pigeons/new', text: 'New pigeon' })));
  const [pigeons, stats] = await Promise.all([allPigeons(), api('GET', '/stats/pigeons?minutes=60')]);
  const counts = Object.fromEntries(stats.pigeons.map((p) => [p.pigeon_id, p]));
  const filter = h('input', { type: 'search', placeholder: 'Filter by id, name, owner, topic…', 'aria-label': 'Filter pigeons' });
  const rows = pigeons.map((p) => {
    const c = counts[p.id] || { letters_in: 0, letters_out: 0, failures: 0 };
    const tr = h('tr', { 'data-text': [p.id, p.name, p.owner, p.match.topic, p.match.tag, p.action].join(' ').toLowerCase() },
      h('td', {}, h('a', { href: `#/pigeons/${encodeURIComponent(p.id)}`, text: p.id }), h('div', { class: 'muted', text: p.name })),
      h('td', { text: p.action }),
      h('td', { class: 'mono', text: describeSource(p) }),
      h('td', { class: 'mono', text: p.destinations.map(describeDest).join(', ') || '—' }),
      h('td', {}, badge(p.state, STATE_BADGE[p.state])),
      h('td', { class: 'num', text: `v${p.version}` }),
      h('td', { class: 'num', text: `${fmtNum(c.letters_in)} / ${fmtNum(c.letters_out)}` }),
      h('td', { class: 'num' }, c.failures ? badge(fmtNum(c.failures), 'bad') : '0'));
    return tr;
  });
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    rows.forEach((r) => { r.hidden = q && !r.dataset.text.includes(q); });
  });
  root.append(h('div', { class: 'row', style: 'margin-bottom:10px' }, h('div', { style: 'flex:0 1 360px' }, filter)),
    table(['Pigeon', 'Action', 'Source', 'Destinations', 'State', h('th', { class: 'num', text: 'Version' }),
      h('th', { class: 'num', text: 'In / out (1 h)' }), h('th', { class: 'num', text: 'Failures' })], rows, { id: 'pigeon-list' }));
}

/** Every pigeon, page after page. */
async function allPigeons() {
  const all = [];
  let cursor = null;
  do {
    const page = await api('GET', `/pigeons?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    all.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return all;
}

function blankSpec() {
  return { id: '', name: '', owner: '', enabled: true, action: 'forward', match: { topic: '', tag: '**' }, destinations: [] };
}

/** The spec as the API wants it: empty optional parts left out. */
function cleanSpec(spec) {
  const out = JSON.parse(JSON.stringify(spec));
  for (const k of ['version', 'updated_at', 'state', 'problems', 'warnings']) delete out[k];
  if (out.action !== 'script') delete out.script;
  if (out.action !== 'archive' || !out.match.filter) delete out.match.filter;
  if (out.action === 'archive') { out.destinations = []; delete out.dictionary; delete out.retry; }
  if (!out.dictionary || out.dictionary === 'off') delete out.dictionary;
  if (!out.retry || !out.retry.length) delete out.retry;
  if (out.window) {
    for (const k of ['start', 'end', 'ttl']) if (!out.window[k]) delete out.window[k];
    if (!Object.keys(out.window).length) delete out.window;
  }
  return out;
}

const SAMPLE_SCRIPT = `// The letter: payload, tag, id, source, key, time (see docs/scripts.md).
// Return a map (the payload of one letter to the first destination),
// an array of letters, or () to drop the letter.
if payload.giftCount < 1 { throw "giftCount must be at least 1"; }
#{ roomId: payload.roomId, userId: payload.userId, score: payload.giftCount * 10 }
`;

const SAMPLE_PAYLOAD = { userId: 1001, anchorId: 42, roomId: 'room-1', giftId: 7, giftCount: 3 };

async function pagePigeonEditor(root, id) {
  const creating = id === undefined;
  const [providers, schemas, stored] = await Promise.all([
    api('GET', '/providers'), api('GET', '/schemas'), creating ? null : api('GET', `/pigeons/${encodeURIComponent(id)}`)]);
  const spec = stored ? cleanSpec(stored) : blankSpec();
  const caps = providers.flatMap((p) => p.capabilities.filter((c) => !c.retired_at).map((c) => ({ ...c, module: p.module })));
  const capByName = Object.fromEntries(caps.map((c) => [c.destination, c]));
  const topics = [...new Set(schemas.map((x) => x.topic))].sort();

  root.replaceChildren(h('div', { class: 'spread' },
    h('div', {},
      h('p', { class: 'muted', style: 'margin:0' }, h('a', { href: '#/pigeons', text: 'Pigeons' }), ' / ', creating ? 'new' : id),
      h('h1', { text: creating ? 'New pigeon' : `Pigeon ${id}` }),
      stored ? h('div', { class: 'row' }, badge(stored.state, STATE_BADGE[stored.state]), h('span', { class: 'muted', text: `version ${stored.version}, saved ${fmtTime(stored.updated_at)}` })) : null)));
  if (stored && stored.problems && stored.problems.length) root.append(errorBox({ message: 'Routers leave this pigeon out: it does not compile.', details: stored.problems }));
  if (stored && stored.warnings && stored.warnings.length) root.append(h('div', { class: 'warning' }, h('strong', { text: 'Warnings' }), h('ul', {}, stored.warnings.map((w) => h('li', { text: w })))));

  const wiring = h('div', { class: 'wiring', role: 'img', id: 'wiring' });
  const left = h('div');
  const right = h('div');
  root.append(h('section', { class: 'panel', 'aria-labelledby': 'wiring-h' }, h('h2', { id: 'wiring-h', text: 'Wiring' }), wiring), h('div', { class: 'grid2' }, left, right));

  // The form.
  const input = (value, attrs) => h('input', { type: 'text', value: value || '', ...attrs });
  const idInput = input(spec.id, { required: true, disabled: !creating, pattern: '[a-z0-9._-]+', id: 'p-id', autocomplete: 'off' });
  const nameInput = input(spec.name, { id: 'p-name' });
  const ownerInput = input(spec.owner, { id: 'p-owner' });
  const actionSelect = select([['forward', 'forward — re-publish with the destination tag'], ['script', 'script — reshape with a Rhai script'], ['archive', 'archive — keep for search and replay']], spec.action, { id: 'p-action' });
  const topicInput = input(spec.match.topic, { id: 'p-topic', list: 'known-topics', required: true });
  const tagInput = input(spec.match.tag, { id: 'p-tag', list: 'known-tags' });
  const filterInput = input(spec.match.filter, { id: 'p-filter', placeholder: 'payload.amount >= 100' });
  const dictSelect = select([['off'], ['normalize'], ['enforce']], spec.dictionary || 'off', { id: 'p-dictionary' });
  const retryInput = input((spec.retry || []).join(', '), { id: 'p-retry', placeholder: '10s, 30s, 1m, 5m, 10m, 30m, 1h, 2h' });
  const win = spec.window || {};
  const startInput = input(win.start, { id: 'p-start', placeholder: '2026-12-01T20:00:00+08:00' });
  const endInput = input(win.end, { id: 'p-end' });
  const ttlInput = input(win.ttl, { id: 'p-ttl', placeholder: '7d' });
  const enabledBox = h('input', { type: 'checkbox', id: 'p-enabled', checked: spec.enabled });
  const scriptArea = h('textarea', { class: 'script', id: 'p-script', spellcheck: 'false', rows: 10, value: spec.script || SAMPLE_SCRIPT });
  const datalists = h('div', {}, h('datalist', { id: 'known-topics' }, topics.map((t) => h('option', { value: t }))), h('datalist', { id: 'known-tags' }));

  const chosen = new Set(spec.destinations.filter((d) => d.capability).map((d) => d.capability));
  let raw = spec.destinations.filter((d) => !d.capability).map((d) => ({ topic: d.topic, tag: d.tag }));
  const capList = h('div', { class: 'caps', role: 'group', 'aria-label': 'Registered capabilities' });
  const byModule = {};
  for (const c of caps) (byModule[c.module] = byModule[c.module] || []).push(c);
  for (const [module, list] of Object.entries(byModule)) {
    capList.append(h('div', { class: 'module', text: module }));
    for (const c of list) {
      const box = h('input', { type: 'checkbox', value: c.destination, checked: chosen.has(c.destination), 'data-capability': c.destination,
        onchange: (e) => { if (e.target.checked) chosen.add(c.destination); else chosen.delete(c.destination); sync(); } });
      capList.append(h('label', { class: 'check' }, box, h('span', {}, h('code', { text: c.destination }),
        c.online ? ' ' : h('span', {}, ' ', badge('offline', 'bad')),
        c.description ? h('span', { class: 'hint', text: ` — ${c.description}` }) : null,
        c.requires.length ? h('span', { class: 'hint', text: ` (requires ${c.requires.join(', ')})` }) : null)));
    }
  }
  // A destination saved earlier whose capability is not registered (any more).
  for (const name of chosen) {
    if (capByName[name]) continue;
    capList.append(h('label', { class: 'check' }, h('input', { type: 'checkbox', checked: true, 'data-capability': name,
      onchange: (e) => { if (e.target.checked) chosen.add(name); else chosen.delete(name); sync(); } }), h('code', { text: name }), ' ', badge('not registered', 'warn')));
  }
  if (!caps.length) capList.append(h('p', { class: 'muted', text: 'No module has registered a capability yet.' }));
  const rawList = h('div');
  const renderRaw = () => {
    rawList.replaceChildren(...raw.map((r, i) => h('div', { class: 'inline', style: 'margin-bottom:6px' },
      h('div', {}, field(`Topic ${i + 1}`, input(r.topic, { oninput: (e) => { r.topic = e.target.value; sync(); } }))),
      h('div', {}, field(`Tag ${i + 1}`, input(r.tag, { oninput: (e) => { r.tag = e.target.value; sync(); } }))),
      h('button', { type: 'button', class: 'quiet small', 'aria-label': `Remove raw destination ${i + 1}`, onclick: () => { raw.splice(i, 1); renderRaw(); sync(); } }, 'Remove'))));
  };
  renderRaw();
  const destFieldset = h('fieldset', {}, h('legend', { text: 'Destinations' }),
    h('p', { class: 'hint', style: 'margin-top:0', text: 'Pick registered capabilities; a raw topic and tag is for destinations outside the registry.' }),
    capList,
    rawList,
    h('button', { type: 'button', class: 'quiet small', style: 'margin-top:8px', onclick: () => { raw.push({ topic: '', tag: '' }); renderRaw(); sync(); rawList.querySelector('div:last-child input')?.focus(); } }, 'Add a raw topic'));

  const scriptBlock = h('div', {}, field('Script', scriptArea, 'Rhai; see docs/scripts.md'));
  const filterBlock = h('div', {}, field('Filter', filterInput, 'archive only: a Rhai expression that keeps a letter when true'));
  const deliveryBlock = h('div', { class: 'inline' },
    h('div', {}, field('Dictionary', dictSelect)),
    h('div', { style: 'flex:2 1 240px' }, field('Retry delays', retryInput, 'comma separated')));
  const formError = h('div', { 'aria-live': 'assertive', id: 'save-result' });
  const saveButton = h('button', { type: 'submit', id: 'save', text: creating ? 'Create pigeon' : 'Save changes' });

  const current = () => {
    const out = {
      id: idInput.value.trim(), name: nameInput.value, owner: ownerInput.value, enabled: enabledBox.checked,
      action: actionSelect.value, match: { topic: topicInput.value.trim(), tag: tagInput.value.trim() || '**' },
      destinations: [...[...chosen].map((c) => ({ capability: c })), ...raw.filter((r) => r.topic || r.tag).map((r) => ({ topic: r.topic.trim(), tag: r.tag.trim() }))],
      dictionary: dictSelect.value,
      retry: retryInput.value.split(',').map((x) => x.trim()).filter(Boolean),
      window: { start: startInput.value.trim(), end: endInput.value.trim(), ttl: ttlInput.value.trim() },
    };
    if (out.action === 'script') out.script = scriptArea.value;
    if (filterInput.value.trim()) out.match.filter = filterInput.value.trim();
    return cleanSpec(out);
  };

  function sync() {
    const p = current();
    scriptBlock.hidden = p.action !== 'script';
    filterBlock.hidden = p.action !== 'archive';
    destFieldset.hidden = p.action === 'archive';
    deliveryBlock.hidden = p.action === 'archive';
    const tags = schemas.filter((x) => x.topic === p.match.topic).map((x) => x.tag);
    datalists.querySelector('#known-tags').replaceChildren(...tags.map((t) => h('option', { value: t })));
    // The wiring diagram.
    const dests = p.action === 'archive'
      ? [h('div', { class: 'node dest online' }, h('div', { class: 'kind', text: 'archive' }), 'archived letters', p.match.filter ? h('div', { class: 'mono', text: `when ${p.match.filter}` }) : null)]
      : p.destinations.map((d) => {
        const cap = d.capability && capByName[d.capability];
        const state = d.capability ? (cap ? (cap.online ? 'online' : 'offline') : 'unknown') : 'online';
        return h('div', { class: `node dest ${state}`, 'data-state': state },
          h('div', { class: 'kind', text: d.capability ? 'capability' : 'topic' }),
          h('code', { text: describeDest(d) }),
          state === 'offline' ? h('div', {}, badge('offline: no live instance', 'bad')) : null,
          state === 'unknown' ? h('div', {}, badge('not registered', 'warn')) : null,
          cap && cap.requires.length ? h('div', { class: 'hint', text: `requires ${cap.requires.join(', ')}` }) : null);
      });
    wiring.setAttribute('aria-label', `Letters of ${p.match.topic || 'no topic yet'} tagged ${p.match.tag} go to pigeon ${p.id || '(new)'} (${p.action}), then to ${p.action === 'archive' ? 'the archive' : p.destinations.map(describeDest).join(', ') || 'no destination yet'}`);
    wiring.replaceChildren(
      h('div', { class: 'node source' }, h('div', { class: 'kind', text: 'source' }), h('code', { text: p.match.topic || '—' }), h('div', { class: 'mono', text: `tag ${p.match.tag}` })),
      h('div', { class: 'arrow', text: '→' }),
      h('div', { class: 'node pigeon' }, h('div', { class: 'kind', text: p.action }), h('strong', { text: p.id || '(new pigeon)' }), p.name ? h('div', { class: 'hint', text: p.name }) : null,
        p.dictionary ? h('div', { class: 'hint', text: `dictionary: ${p.dictionary}` }) : null, p.window ? h('div', { class: 'hint', text: 'live window' }) : null),
      h('div', { class: 'arrow', text: '→' }),
      h('div', { class: 'dests' }, dests.length ? dests : h('div', { class: 'node dest unknown muted', text: 'no destination yet' })));
  }

  async function save(force) {
    setError(formError, null);
    const p = current();
    try {
      const query = force ? '?force=true' : '';
      const saved = creating ? await api('POST', `/pigeons${query}`, p) : await api('PUT', `/pigeons/${encodeURIComponent(id)}${query}`, p);
      toast(`Pigeon ${saved.id} saved as version ${saved.version}.`);
      if (creating) location.hash = `#/pigeons/${encodeURIComponent(saved.id)}`;
      else route();
    } catch (e) {
      setError(formError, e);
      if (e.code === 'unfit_wiring') {
        formError.append(h('div', { class: 'actions' }, h('span', { class: 'hint', text: 'The destinations would miss fields. Fix the wiring, or save anyway (audited).' }),
          h('button', { type: 'button', class: 'danger', id: 'save-force', onclick: () => save(true) }, 'Save anyway')));
      }
    }
  }

  const form = h('form', { class: 'panel', 'aria-labelledby': 'form-h', novalidate: true, onsubmit: (e) => { e.preventDefault(); save(false); }, oninput: sync, onchange: sync },
    h('h2', { id: 'form-h', text: 'Settings' }),
    h('div', { class: 'inline' }, h('div', {}, field('Id', idInput, 'a-z 0-9 . _ -')), h('div', {}, field('Name', nameInput)), h('div', {}, field('Owner', ownerInput))),
    field('Action', actionSelect),
    h('div', { class: 'inline' }, h('div', {}, field('Source topic', topicInput, '^ for a pattern')), h('div', {}, field('Tag pattern', tagInput, '* one part, ** any'))),
    datalists,
    filterBlock,
    destFieldset,
    scriptBlock,
    deliveryBlock,
    h('fieldset', {}, h('legend', { text: 'Live window (optional)' }),
      h('div', { class: 'inline' }, h('div', {}, field('Start', startInput, 'RFC 3339')), h('div', {}, field('End', endInput)), h('div', {}, field('Or lifetime', ttlInput)))),
    h('label', { class: 'check' }, enabledBox, 'Enabled'),
    formError,
    h('div', { class: 'actions' }, saveButton, h('a', { href: '#/pigeons', class: 'button secondary', text: 'Cancel' })));
  left.append(form);
  sync();

  // Test run on a sample letter, with the pigeon as it stands in the form.
  const known = schemas.find((x) => x.topic === spec.match.topic && x.tag === spec.match.tag);
  const sampleTag = input(spec.match.tag.includes('*') ? (known ? known.tag : '') : spec.match.tag, { id: 't-tag' });
  const samplePayload = h('textarea', { id: 't-payload', rows: 6, spellcheck: 'false',
    value: pretty(SAMPLE_PAYLOAD) });
  const testResult = h('div', { id: 'test-result', 'aria-live': 'polite' });
  right.append(h('section', { class: 'panel', 'aria-labelledby': 'test-h' },
    h('h2', { id: 'test-h', text: 'Test on a sample letter' }),
    h('p', { class: 'hint', text: 'Runs the pigeon as written above (saved or not) on this letter and shows what it would send. Nothing is sent.' }),
    field('Tag', sampleTag), field('Payload', samplePayload, 'JSON'),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', id: 'run-test', onclick: async () => {
      testResult.replaceChildren();
      try {
        const letter = { tag: sampleTag.value.trim(), payload: readJson(samplePayload, 'The payload') };
        const result = await api('POST', '/pigeons/test', { pigeon: current(), letter });
        testResult.replaceChildren(h('div', { class: 'success', text: `${result.letters.length} letter(s) would be sent.` }),
          ...result.letters.map((l) => h('div', {}, h('div', { class: 'mono' }, `→ ${l.topic} · ${l.tag}`, l.key ? ` · key ${l.key}` : ''), h('pre', { text: pretty(l.payload) }))));
      } catch (e) { testResult.replaceChildren(errorBox(e)); }
    } }, 'Run test')),
    testResult));

  if (stored) await pigeonExtras(right, stored);
}

/** The parts of a saved pigeon's page beside its form: state, counts, flying, versions. */
async function pigeonExtras(right, stored) {
  const id = stored.id;
  const [versions, stats] = await Promise.all([api('GET', `/pigeons/${encodeURIComponent(id)}/versions`), api('GET', '/stats/pigeons?minutes=60')]);
  const stateSlot = h('div', { 'aria-live': 'polite' });
  const counts = h('div');
  const showCounts = (stats) => {
    const mine = stats.pigeons.find((p) => p.pigeon_id === id) || { letters_in: 0, letters_out: 0, failures: 0, series: stats.series.map((p) => ({ ...p, letters_in: 0, letters_out: 0, failures: 0 })) };
    counts.replaceChildren(h('div', { class: 'cards', id: 'pigeon-counts' },
      h('div', { class: 'card' }, h('div', { class: 'label', text: 'In' }), h('div', { class: 'value', id: 'count-in', text: fmtNum(mine.letters_in) })),
      h('div', { class: 'card ok' }, h('div', { class: 'label', text: 'Out' }), h('div', { class: 'value', id: 'count-out', text: fmtNum(mine.letters_out) })),
      h('div', { class: `card ${mine.failures ? 'bad' : ''}` }, h('div', { class: 'label', text: 'Failures' }), h('div', { class: 'value', id: 'count-failures', text: fmtNum(mine.failures) }))),
    chart(mine.series));
  };
  showCounts(stats);
  const countStatus = h('p', { class: 'hint', 'aria-live': 'polite', text: 'Refreshes every 5 seconds.' });
  keepFresh(counts, async () => showCounts(await api('GET', '/stats/pigeons?minutes=60')), countStatus);
  right.append(h('section', { class: 'panel', 'aria-labelledby': 'state-h' },
    h('h2', { id: 'state-h', text: 'Last hour' }),
    counts, countStatus,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', id: 'toggle-enabled', onclick: async () => {
        try {
          const next = await api('POST', `/pigeons/${encodeURIComponent(id)}/${stored.enabled ? 'disable' : 'enable'}`);
          toast(`Pigeon ${id} ${next.enabled ? 'enabled' : 'disabled'}.`);
          route();
        } catch (e) { setError(stateSlot, e); }
      } }, stored.enabled ? 'Disable' : 'Enable'),
      h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!confirm(`Delete pigeon ${id}? Its history stays in the audit log.`)) return;
        try { await api('DELETE', `/pigeons/${encodeURIComponent(id)}`); toast(`Pigeon ${id} deleted.`); location.hash = '#/pigeons'; } catch (e) { setError(stateSlot, e); }
      } }, 'Delete')),
    stateSlot));

  // Fly a letter to the pigeon now (POST /fly), as a module would.
  if (stored.action !== 'archive') {
    const tag = h('input', { type: 'text', id: 'fly-tag', value: stored.match.tag.includes('*') ? '' : stored.match.tag });
    const payload = h('textarea', { id: 'fly-payload', rows: 5, spellcheck: 'false', value: pretty(SAMPLE_PAYLOAD) });
    const result = h('div', { id: 'fly-result', 'aria-live': 'polite' });
    right.append(h('section', { class: 'panel', 'aria-labelledby': 'fly-h' },
      h('h2', { id: 'fly-h', text: 'Send a letter' }),
      h('p', { class: 'hint', text: 'Flies a real letter to this pigeon now; it is counted and delivered like any other.' }),
      field('Tag', tag), field('Payload', payload, 'JSON'),
      h('div', { class: 'actions' }, h('button', { type: 'button', id: 'fly-send', onclick: async () => {
        result.replaceChildren();
        try {
          const receipt = await api('POST', '/fly', { pigeon: id, letter: { source: 'admin-ui', tag: tag.value.trim(), payload: readJson(payload, 'The payload') } });
          result.replaceChildren(h('div', { class: receipt.dead_lettered.length ? 'warning' : 'success' },
            `Letter ${receipt.letter_id}: ${receipt.delivered.length} delivered, ${receipt.dead_lettered.length} dead-lettered.`,
            receipt.dead_lettered.length ? h('ul', {}, receipt.dead_lettered.map((d) => h('li', { text: `${d.topic || 'script'}: ${d.error}` }))) : null));
        } catch (e) { result.replaceChildren(errorBox(e)); }
      } }, 'Send')),
      result));
  }

  // Version history with a diff of any two versions.
  const list = [...versions].sort((a, b) => b.version - a.version);
  const options = list.map((v) => [String(v.version), `v${v.version} — ${fmtTime(v.updated_at)}`]);
  const from = select(options, String(list[1] ? list[1].version : list[0].version), { id: 'diff-from' });
  const to = select(options, String(list[0].version), { id: 'diff-to' });
  const diffSlot = h('div', { id: 'versions-diff' });
  const renderDiff = () => {
    const a = list.find((v) => String(v.version) === from.value), b = list.find((v) => String(v.version) === to.value);
    diffSlot.replaceChildren(diffView(cleanSpec(a), cleanSpec(b), `Changes from v${a.version} to v${b.version}`));
  };
  from.addEventListener('change', renderDiff);
  to.addEventListener('change', renderDiff);
  right.append(h('section', { class: 'panel', 'aria-labelledby': 'versions-h' },
    h('h2', { id: 'versions-h', text: `History (${list.length} version${list.length === 1 ? '' : 's'})` }),
    h('div', { class: 'inline' }, h('div', {}, field('Compare', from)), h('div', {}, field('with', to))),
    diffSlot));
  renderDiff();
}

// --- Providers ----------------------------------------------------------------------------------

async function pageProviders(root) {
  const providers = await api('GET', '/providers');
  root.replaceChildren(h('h1', { text: 'Providers' }),
    h('p', { class: 'lede', text: 'Modules register their capabilities with the bus and send heartbeats; a capability is online while a live instance offers it.' }));
  if (!providers.length) root.append(h('p', { class: 'muted', text: 'No module has registered yet.' }));
  for (const p of providers) {
    root.append(h('section', { class: 'panel', 'aria-labelledby': `mod-${p.module}` },
      h('div', { class: 'spread' }, h('h2', { id: `mod-${p.module}`, text: p.module }), p.live ? badge('live', 'ok') : badge('offline', 'bad')),
      h('p', { class: 'muted' }, 'Letters arrive on ', h('code', { text: p.topic })),
      h('h3', { text: 'Capabilities' }),
      table(['Destination', 'Description', 'Requires', 'State'], p.capabilities.map((c) => h('tr', {},
        h('td', {}, h('code', { text: c.destination })), h('td', { text: c.description || '—' }),
        h('td', { class: 'mono', text: c.requires.join(', ') || '—' }),
        h('td', {}, c.retired_at ? badge('retired', '') : c.online ? badge('online', 'ok') : badge('offline', 'bad'))))),
      h('h3', { text: 'Instances' }),
      table(['Instance', 'State', 'Host', 'Version', 'Lanes', 'Last seen'], p.instances.map((i) => h('tr', {},
        h('td', { class: 'mono', text: i.instance }), h('td', {}, badge(i.state, i.state === 'live' ? 'ok' : i.state === 'stale' ? 'warn' : '')),
        h('td', { text: i.host }), h('td', { text: i.version }), h('td', { text: i.lanes.join(', ') || '—' }),
        h('td', { title: fmtTime(i.last_seen), text: fmtAgo(i.last_seen) }))))));
  }
}

// --- Dictionary ---------------------------------------------------------------------------------

async function pageDictionary(root) {
  const [fields, drift, schemas] = await Promise.all([api('GET', '/dictionary'), api('GET', '/dictionary/drift'), api('GET', '/schemas')]);
  const name = h('input', { type: 'text', id: 'd-name', required: true, autocomplete: 'off' });
  const kind = select(['string', 'integer', 'number', 'boolean', 'object', 'array'].map((t) => [t]), 'string', { id: 'd-type' });
  const description = h('input', { type: 'text', id: 'd-description' });
  const aliases = h('input', { type: 'text', id: 'd-aliases', placeholder: 'uid, user_id' });
  const slot = h('div', { 'aria-live': 'assertive' });
  const edit = (f) => { name.value = f.name; kind.value = f.type; description.value = f.description; aliases.value = (f.aliases || []).join(', '); name.focus(); };
  root.replaceChildren(h('h1', { text: 'Dictionary' }),
    h('p', { class: 'lede', text: 'The field names every module agrees on. Pigeons in normalize or enforce mode rename aliases and check types against it.' }),
    h('div', { class: 'grid2 wide' },
      h('div', {}, table(['Field', 'Type', 'Description', 'Aliases', ''], fields.map((f) => h('tr', {},
        h('td', {}, h('code', { text: f.name })), h('td', { text: f.type }), h('td', { text: f.description }),
        h('td', { class: 'mono', text: (f.aliases || []).join(', ') || '—' }),
        h('td', { class: 'nowrap' }, h('div', { class: 'row nowrap' },
          h('button', { type: 'button', class: 'quiet small', 'aria-label': `Edit ${f.name}`, onclick: () => edit(f) }, 'Edit'),
          h('button', { type: 'button', class: 'quiet small', 'aria-label': `Delete ${f.name}`, onclick: async () => {
            if (!confirm(`Delete the field ${f.name}?`)) return;
            try { await api('DELETE', `/dictionary/${encodeURIComponent(f.name)}`); toast(`Field ${f.name} deleted.`); route(); } catch (e) { setError(slot, e); }
          } }, 'Delete'))))))),
      h('form', { class: 'panel', 'aria-labelledby': 'field-h', onsubmit: async (e) => {
        e.preventDefault();
        const body = { name: name.value.trim(), type: kind.value, description: description.value, aliases: aliases.value.split(',').map((a) => a.trim()).filter(Boolean) };
        try { await api('PUT', `/dictionary/${encodeURIComponent(body.name)}`, body); toast(`Field ${body.name} saved.`); route(); } catch (err) { setError(slot, err); }
      } },
      h('h2', { id: 'field-h', text: 'Add or change a field' }),
      field('Name', name), field('Type', kind), field('Description', description), field('Aliases', aliases, 'comma separated'),
      slot, h('div', { class: 'actions' }, h('button', { type: 'submit', text: 'Save field' })))),
    h('h2', { text: 'Drift: fields the dictionary does not know' }),
    table(['Topic', 'Field', h('th', { class: 'num', text: 'Seen' }), 'Last seen'], drift.map((d) => h('tr', {},
      h('td', { class: 'mono', text: d.topic }), h('td', { class: 'mono', text: d.field }), h('td', { class: 'num', text: fmtNum(d.seen) }), h('td', { text: fmtTime(d.last_seen) })))),
    h('h2', { text: 'Source schemas' }),
    table(['Topic', 'Tag', 'Declared', 'Observed (share of sampled letters)'], schemas.map((x) => h('tr', {},
      h('td', { class: 'mono', text: x.topic }), h('td', { class: 'mono', text: x.tag }),
      h('td', { class: 'mono', text: x.declared ? `${x.declared.join(', ')} (${x.declared_by.join(', ')})` : '—' }),
      h('td', { class: 'mono', text: x.observed.map((o) => `${o.field}: ${o.type || o.kind} ${Math.round(o.frequency * 100)}%`).join(', ') || '—' })))));
}

// --- Dead letters -------------------------------------------------------------------------------

async function pageDeadLetters(root, params) {
  const filter = { pigeon: params.get('pigeon') || '', status: params.get('status') || '', kind: params.get('kind') || '' };
  const pigeon = h('input', { type: 'text', id: 'dl-pigeon', value: filter.pigeon });
  const status = select([['', 'any'], ['pending'], ['retrying'], ['parked'], ['delivered'], ['discarded']], filter.status, { id: 'dl-status' });
  const kind = select([['', 'any'], ['produce'], ['malformed'], ['script'], ['handler'], ['dictionary'], ['internal']], filter.kind, { id: 'dl-kind' });
  const slot = h('div', { 'aria-live': 'assertive', id: 'dl-result' });
  const detail = h('div', { id: 'dl-detail' });
  const tbody = h('tbody');
  const selected = new Set();
  let cursor = null;
  const countLabel = h('span', { class: 'muted', 'aria-live': 'polite' });
  const retryButton = h('button', { type: 'button', id: 'dl-retry', disabled: true, onclick: () => act('retry', { ids: [...selected] }) }, 'Redrive selected');
  const discardButton = h('button', { type: 'button', class: 'danger', id: 'dl-discard', disabled: true, onclick: () => act('discard', { ids: [...selected] }) }, 'Discard selected');
  const allBox = h('input', { type: 'checkbox', 'aria-label': 'Select every dead letter shown', onchange: (e) => {
    tbody.querySelectorAll('input[type=checkbox]').forEach((b) => { b.checked = e.target.checked; b.dispatchEvent(new Event('change')); });
  } });
  const more = h('button', { type: 'button', class: 'secondary more', hidden: true, onclick: () => load(false).catch((e) => setError(slot, e)) }, 'Load more');
  const backlogLine = h('p', { class: 'lede', 'aria-live': 'polite' });
  const showBacklog = async () => {
    const b = await api('GET', '/dead-letters/backlog');
    backlogLine.replaceChildren(`Waiting: ${fmtNum(b.pending)} pending, ${fmtNum(b.retrying)} retrying, `, h('strong', { text: `${fmtNum(b.parked)} parked` }), ' for an operator.');
  };
  const query = () => {
    const q = new URLSearchParams();
    if (filter.pigeon) q.set('pigeon', filter.pigeon);
    if (filter.status) q.set('status', filter.status);
    if (filter.kind) q.set('kind', filter.kind);
    return q;
  };
  const refreshButtons = () => {
    retryButton.disabled = discardButton.disabled = !selected.size;
    retryButton.textContent = `Redrive selected (${selected.size})`;
    discardButton.textContent = `Discard selected (${selected.size})`;
  };
  async function act(what, selection) {
    const verb = what === 'retry' ? 'Redrive' : 'Discard';
    const described = Object.entries(selection.filter || {}).map(([k, v]) => `${k} ${v}`).join(', ');
    const n = selection.ids ? `${selection.ids.length} dead letter(s)` : `every pending or parked dead letter${described ? ` with ${described}` : ' (no filter: all of them)'}`;
    if ((what === 'discard' || !selection.ids) && !confirm(`${verb} ${n}?${what === 'discard' ? ' They are kept for the record but never retried.' : ''}`)) return;
    try {
      const done = await api('POST', `/dead-letters/${what}`, selection);
      slot.replaceChildren(h('div', { class: 'success', text: `${verb}: ${done.count} dead letter(s) ${what === 'retry' ? 'queued for redelivery now' : 'discarded'}.` }));
      selected.clear();
      await load(true);
      await showBacklog();
      // The open letter follows, unless the action left it alone or it holds an unsaved edit.
      const open = detail.querySelector('[data-letter]');
      const edited = detail.querySelector('#dl-payload');
      if (open && (!selection.ids || selection.ids.includes(Number(open.dataset.letter)))
          && !(edited && edited.value !== edited.dataset.loaded)) {
        await inspect(Number(open.dataset.letter), detail.contains(document.activeElement) || document.activeElement === document.body);
      }
    } catch (e) { setError(slot, e); }
  }
  async function inspect(id, focus = true) {
    try {
      const { letter, attempts } = await api('GET', `/dead-letters/${id}`);
      const editable = letter.status === 'pending' || letter.status === 'parked';
      const payload = h('textarea', { id: 'dl-payload', rows: 8, spellcheck: 'false', disabled: !editable,
        value: letter.payload !== null && letter.payload !== undefined ? pretty(letter.payload) : (letter.payload_text || '') });
      payload.dataset.loaded = payload.value;
      const result = h('div', { 'aria-live': 'assertive' });
      detail.replaceChildren(h('section', { class: 'panel', 'aria-labelledby': 'dl-h', 'data-letter': letter.id },
        h('div', { class: 'spread' }, h('div', { class: 'row' }, h('h2', { id: 'dl-h', tabindex: '-1', text: `Dead letter ${letter.id}` }), badge(letter.status, STATUS_BADGE[letter.status])),
          h('button', { type: 'button', class: 'quiet small', onclick: () => { detail.replaceChildren(); tbody.querySelector(`tr[data-id="${letter.id}"] button`)?.focus(); } }, 'Close')),
        h('div', { class: 'grid2' }, h('div', {},
        h('dl', { class: 'facts' },
          h('dt', { text: 'Letter' }), h('dd', { class: 'mono', text: letter.letter_id }),
          h('dt', { text: 'Pigeon' }), h('dd', {}, letter.pigeon ? h('a', { href: `#/pigeons/${encodeURIComponent(letter.pigeon)}`, text: `${letter.pigeon} v${letter.pigeon_version}` }) : '—'),
          h('dt', { text: 'Source' }), h('dd', { class: 'mono', text: letter.source_partition < 0 ? `${letter.source_topic} (flown through the API)` : `${letter.source_topic} [${letter.source_partition}] @ ${letter.source_offset}` }),
          h('dt', { text: 'Destination' }), h('dd', { class: 'mono', text: letter.dest_topic ? `${letter.dest_topic} · ${letter.dest_tag || ''}` : 'every destination of the pigeon' }),
          h('dt', { text: 'Error' }), h('dd', {}, badge(letter.error_kind, 'bad'), ' ', letter.error_message),
          h('dt', { text: 'Attempts' }), h('dd', { text: `${letter.attempts}${letter.next_attempt_at ? `, next ${fmtTime(letter.next_attempt_at)}` : ''}` }),
          h('dt', { text: 'Stored' }), h('dd', { text: fmtTime(letter.created_at) })),
        h('h3', { text: 'Headers' }),
        h('pre', { text: headerLines(letter.headers) })),
        h('div', {}, field('Payload', payload, editable ? 'edit it to fix the letter, then save and redrive' : 'only pending and parked letters can be edited'),
        h('div', { class: 'actions' },
          editable ? h('button', { type: 'button', class: 'secondary', id: 'dl-save', onclick: async () => {
            try {
              await api('PUT', `/dead-letters/${letter.id}/payload`, readJson(payload, 'The payload'));
              payload.dataset.loaded = payload.value;
              result.replaceChildren(h('div', { class: 'success', text: 'Payload saved.' }));
            } catch (e) { setError(result, e); }
          } }, 'Save payload') : null,
          h('button', { type: 'button', id: 'dl-retry-one', onclick: () => act('retry', { ids: [letter.id] }) }, 'Redrive'),
          h('button', { type: 'button', class: 'danger', onclick: () => act('discard', { ids: [letter.id] }) }, 'Discard')),
        result)),
        h('h3', { text: 'History' }),
        table(['#', 'When', 'By', 'Outcome', 'Message'], attempts.map((a) => h('tr', {},
          h('td', { text: a.attempt }), h('td', { text: fmtTime(a.at) }), h('td', { text: a.actor }), h('td', { text: a.outcome }), h('td', { text: a.message }))))));
      if (focus) detail.querySelector('#dl-h').focus();
    } catch (e) { detail.replaceChildren(errorBox(e)); }
  }
  async function load(fresh) {
    if (fresh) { cursor = null; tbody.replaceChildren(); selected.clear(); allBox.checked = false; }
    const q = query();
    q.set('limit', '50');
    if (cursor) q.set('cursor', cursor);
    const page = await api('GET', `/dead-letters?${q}`);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    for (const d of page.items) {
      const box = h('input', { type: 'checkbox', 'aria-label': `Select dead letter ${d.id}`, onchange: (e) => {
        if (e.target.checked) selected.add(d.id); else selected.delete(d.id);
        e.target.closest('tr').classList.toggle('selected', e.target.checked);
        refreshButtons();
      } });
      tbody.append(h('tr', { 'data-id': d.id },
        h('td', {}, box),
        h('td', {}, h('button', { type: 'button', class: 'quiet small', 'aria-label': `Inspect dead letter ${d.id}`, onclick: () => inspect(d.id) }, `#${d.id}`)),
        h('td', {}, d.pigeon ? h('a', { href: `#/pigeons/${encodeURIComponent(d.pigeon)}`, text: d.pigeon }) : '—'),
        h('td', {}, badge(d.error_kind, 'bad')),
        h('td', {}, badge(d.status, STATUS_BADGE[d.status])),
        h('td', { class: 'num', text: d.attempts }),
        h('td', { class: 'clip', title: d.error_message, text: d.error_message }),
        h('td', { class: 'nowrap', text: fmtTime(d.created_at) })));
    }
    if (!tbody.children.length) tbody.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'No dead letter matches.' })));
    countLabel.textContent = `${tbody.querySelectorAll('tr[data-id]').length} shown`;
    refreshButtons();
  }
  const applyFilter = (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (pigeon.value.trim()) q.set('pigeon', pigeon.value.trim());
    if (status.value) q.set('status', status.value);
    if (kind.value) q.set('kind', kind.value);
    const next = `#/dead-letters${q.toString() ? `?${q}` : ''}`;
    route.moveFocus = true;
    if (location.hash === next) route(); else location.hash = next;
  };
  const filterBody = () => { const f = {}; if (filter.pigeon) f.pigeon = filter.pigeon; if (filter.status) f.status = filter.status; if (filter.kind) f.kind = filter.kind; return f; };
  await showBacklog();
  root.replaceChildren(h('h1', { text: 'Dead letters' }),
    backlogLine,
    h('form', { class: 'panel inline', onsubmit: applyFilter, 'aria-label': 'Filter dead letters' },
      h('div', {}, field('Pigeon', pigeon)), h('div', {}, field('Status', status)), h('div', {}, field('Error kind', kind)),
      h('button', { type: 'submit', class: 'secondary', text: 'Filter' })),
    h('div', { class: 'actions', style: 'margin:0 0 10px' }, retryButton, discardButton,
      h('button', { type: 'button', class: 'quiet', onclick: () => act('retry', { filter: filterBody() }) }, 'Redrive all matching'),
      h('button', { type: 'button', class: 'quiet', onclick: () => act('discard', { filter: filterBody() }) }, 'Discard all matching'),
      countLabel),
    slot,
    detail,
    h('div', { class: 'table-wrap' }, h('table', { id: 'dl-table' },
      h('thead', {}, h('tr', {}, h('th', {}, allBox), ...['Id', 'Pigeon', 'Kind', 'Status', 'Attempts', 'Error', 'Stored'].map((x) => h('th', { scope: 'col', class: x === 'Attempts' ? 'num' : null, text: x })))),
      tbody)),
    more);
  await load(true);
}

// --- Archive ------------------------------------------------------------------------------------

async function pageArchive(root) {
  const now = Date.now();
  const since = h('input', { type: 'datetime-local', id: 'a-since', value: localInput(now - 3600_000) });
  const until = h('input', { type: 'datetime-local', id: 'a-until', value: localInput(now + 60_000) });
  const topic = h('input', { type: 'text', id: 'a-topic' });
  const tag = h('input', { type: 'text', id: 'a-tag' });
  const pigeon = h('input', { type: 'text', id: 'a-pigeon' });
  const keys = { userId: h('input', { type: 'text', id: 'a-user' }), anchorId: h('input', { type: 'text', id: 'a-anchor' }), roomId: h('input', { type: 'text', id: 'a-room' }) };
  const slot = h('div', { 'aria-live': 'assertive' });
  const results = h('div', { id: 'archive-results' });
  const detail = h('div');
  let cursor = null;
  let rows = [];
  const archiveQuery = () => {
    const q = { since: new Date(since.value).getTime(), until: new Date(until.value).getTime() };
    if (Number.isNaN(q.since) || Number.isNaN(q.until)) throw new ApiError(0, { message: 'Give both times: from and until.' });
    if (topic.value.trim()) q.topic = topic.value.trim();
    if (tag.value.trim()) q.tag = tag.value.trim();
    if (pigeon.value.trim()) q.pigeon = pigeon.value.trim();
    const k = {};
    for (const [name, el] of Object.entries(keys)) if (el.value.trim()) k[name] = el.value.trim();
    if (Object.keys(k).length) q.keys = k;
    return q;
  };
  const renderRows = () => results.replaceChildren(table(['Time', 'Topic · tag', 'Pigeon', 'Keys', 'Letter'], rows.map((l) => h('tr', {},
    h('td', { class: 'nowrap', text: fmtTime(l.time) }), h('td', { class: 'mono nowrap', text: `${l.topic} · ${l.tag}` }), h('td', { class: 'nowrap', text: l.pigeon }),
    h('td', { class: 'mono', text: Object.entries(l.keys).map(([k, v]) => `${k}=${v}`).join(' ') || '—' }),
    h('td', {}, h('button', { type: 'button', class: 'quiet small mono', onclick: () => {
      detail.replaceChildren(h('section', { class: 'panel' }, h('div', { class: 'spread' }, h('h2', { tabindex: '-1', text: `Letter ${l.letter_id}` }),
        h('button', { type: 'button', class: 'quiet small', onclick: () => detail.replaceChildren() }, 'Close')),
        h('dl', { class: 'facts' }, h('dt', { text: 'Where' }), h('dd', { class: 'mono', text: `${l.topic} [${l.partition}] @ ${l.offset}` }), h('dt', { text: 'Key' }), h('dd', { class: 'mono', text: l.key || '—' })),
        h('p', {}, h('a', { href: `#/trace/${encodeURIComponent(l.letter_id)}`, text: 'Trace this letter' })),
        h('h3', { text: 'Payload' }), h('pre', { text: l.payload !== null && l.payload !== undefined ? pretty(l.payload) : (l.payload_text || '') }),
        h('h3', { text: 'Headers' }), h('pre', { text: headerLines(l.headers) })));
      detail.querySelector('h2').focus();
    } }, l.letter_id))))),
    ...(cursor ? [h('button', { type: 'button', class: 'secondary more', onclick: () => search(false) }, 'Load more')] : []));
  async function search(fresh) {
    setError(slot, null);
    try {
      if (fresh) { cursor = null; rows = []; }
      const page = await api('POST', '/archive/search', { query: archiveQuery(), limit: 50, cursor: cursor || undefined });
      rows = rows.concat(page.items);
      cursor = page.next_cursor;
      renderRows();
      if (!rows.length) results.replaceChildren(h('p', { class: 'muted', text: 'No archived letter matches.' }));
    } catch (e) { setError(slot, e); }
  }
  // Replay.
  const mode = select([['topic', 'to one topic, as they were'], ['pigeons', 'through today’s pigeons']], 'topic', { id: 'r-mode' });
  const toTopic = h('input', { type: 'text', id: 'r-topic', placeholder: 'replay.gifts' });
  const rate = h('input', { type: 'number', id: 'r-rate', min: 1, value: 500 });
  const replaySlot = h('div', { id: 'replay-result', 'aria-live': 'polite' });
  const jobs = h('div', { id: 'replay-jobs' });
  const replaySpec = () => {
    const spec = { query: archiveQuery() };
    if (mode.value === 'topic') spec.to_topic = toTopic.value.trim(); else spec.through_pigeons = true;
    if (rate.value) spec.rate = Number(rate.value);
    return spec;
  };
  async function loadJobs() {
    const list = await api('GET', '/replays?limit=20');
    jobs.replaceChildren(table(['Job', 'Status', 'Progress', 'Target', 'By', ''], list.map((j) => h('tr', {},
      h('td', { text: `#${j.id}` }), h('td', {}, badge(j.status, j.status === 'done' ? 'ok' : j.status === 'failed' ? 'bad' : j.status === 'running' ? 'info' : '')),
      h('td', { class: 'num', text: `${fmtNum(j.sent)} / ${fmtNum(j.total)}` }, j.message ? h('div', { class: 'hint', text: j.message }) : null),
      h('td', { class: 'mono', text: j.spec.to_topic || 'through pigeons' }), h('td', { text: j.created_by }),
      h('td', {}, j.status === 'pending' || j.status === 'running' ? h('button', { type: 'button', class: 'danger small', onclick: async () => {
        try { await api('POST', `/replays/${j.id}/cancel`); toast(`Replay #${j.id} cancelled.`); await loadJobs(); } catch (e) { setError(replaySlot, e); }
      } }, 'Cancel') : '')))));
  }
  root.replaceChildren(h('h1', { text: 'Archive' }),
    h('p', { class: 'lede', text: 'Letters kept by archive pigeons: search them, and replay a selection to a topic or through the pigeons.' }),
    h('form', { class: 'panel', 'aria-label': 'Search the archive', onsubmit: (e) => { e.preventDefault(); search(true); } },
      h('div', { class: 'inline' }, h('div', {}, field('From', since)), h('div', {}, field('Until', until)), h('div', {}, field('Topic', topic)), h('div', {}, field('Tag', tag)), h('div', {}, field('Pigeon', pigeon))),
      h('div', { class: 'inline' }, h('div', {}, field('userId', keys.userId)), h('div', {}, field('anchorId', keys.anchorId)), h('div', {}, field('roomId', keys.roomId)),
        h('button', { type: 'submit', text: 'Search' })),
      slot),
    detail,
    results,
    h('section', { class: 'panel', style: 'margin-top:16px', 'aria-labelledby': 'replay-h' },
      h('h2', { id: 'replay-h', text: 'Replay the letters the search selects' }),
      h('div', { class: 'inline' }, h('div', {}, field('Send', mode)), h('div', {}, field('Topic', toTopic, 'for “to one topic”')), h('div', {}, field('Letters per second', rate))),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', id: 'r-dry', onclick: async () => {
          try {
            const dry = await api('POST', '/replays/dry-run', replaySpec());
            replaySlot.replaceChildren(h('div', { class: 'success', text: `${fmtNum(dry.count)} letter(s) would be replayed${dry.sample.length ? `; the first: ${dry.sample.map((l) => `${l.tag} at ${fmtTime(l.time)}`).join(', ')}` : ''}.` }));
          } catch (e) { setError(replaySlot, e); }
        } }, 'Dry run: count'),
        h('button', { type: 'button', id: 'r-start', onclick: async () => {
          try {
            const spec = replaySpec();
            if (!confirm('Start the replay? Letters will be sent again.')) return;
            const job = await api('POST', '/replays', spec);
            replaySlot.replaceChildren(h('div', { class: 'success', text: `Replay #${job.id} started: ${fmtNum(job.total)} letter(s).` }));
            await loadJobs();
          } catch (e) { setError(replaySlot, e); }
        } }, 'Start replay')),
      replaySlot,
      h('h3', { text: 'Replay jobs' }), jobs));
  await Promise.all([search(true), loadJobs()]);
  keepFresh(jobs, loadJobs, h('span'));
}

// --- Letter trace -------------------------------------------------------------------------------

const FOUND_BY = { archive: 'in the archive', kafka: 'on Kafka, by its id’s time', dead_letter: 'by its dead letter' };

async function pageTrace(root, letterId) {
  const input = h('input', { type: 'text', id: 't-id', class: 'mono', size: 44, value: letterId || '', placeholder: 'letter id (ce_id)' });
  const slot = h('div', { 'aria-live': 'assertive' });
  const out = h('div', { id: 'trace-result' });
  const hop = (title, ...body) => h('li', { class: 'hop' }, h('div', { class: 'hop-title', text: title }), ...body);
  const tries = (n) => `${n} ${n === 1 ? 'try' : 'tries'}`;
  root.replaceChildren(h('h1', { text: 'Letter trace' }),
    h('p', { class: 'lede', text: 'Follow one letter: where the router read it, the pigeons that took it and their outputs, dead letters, the archive, replays and each module’s receipt.' }),
    h('form', { class: 'panel', 'aria-label': 'Trace a letter', onsubmit: (e) => { e.preventDefault(); location.hash = `#/trace/${encodeURIComponent(input.value.trim())}`; } },
      h('div', { class: 'inline' }, h('div', {}, field('Letter id', input)), h('button', { type: 'submit', text: 'Trace' })), slot),
    out);
  if (!letterId) return;
  try {
    const t = await api('GET', `/letters/${encodeURIComponent(letterId)}/trace`);
    const s = t.source;
    const hops = [hop('Read', s
      ? h('div', {}, h('span', { class: 'mono', text: `${s.topic} [${s.partition}] @ ${s.offset}` }), h('div', { class: 'hint', text: `${fmtTime(s.time_ms)} · tag ${s.tag || '?'} · found ${FOUND_BY[s.found_by] || s.found_by}` }))
      : h('div', { class: 'muted', text: 'not found' }))];
    hops.push(hop('Router', t.acknowledged === true ? badge('acknowledged', 'ok') : t.acknowledged === false ? badge('not yet committed', 'warn') : badge('unknown', ''),
      h('div', { class: 'hint', text: t.acknowledged === true ? 'its consumer group committed past the letter' : 'whether its group committed past the letter' })));
    for (const p of t.pigeons) {
      hops.push(hop(`Pigeon ${p.id} · v${p.version} · ${p.action}`, h('ul', { class: 'outputs' }, p.outputs.map((o) => h('li', {},
        h('span', { class: 'mono', text: `→ ${o.topic} · ${o.tag || '?'}` }), ' ',
        badge(o.status.replace('_', ' '), o.status === 'acknowledged' ? 'ok' : o.status === 'dead_letter' ? 'bad' : 'warn'),
        o.dead_letter ? h('span', { class: 'hint', text: ` dead letter #${o.dead_letter}` }) : null)))));
    }
    for (const d of t.dead_letters) {
      hops.push(hop(`Dead letter #${d.id}`, badge(d.status, d.status === 'delivered' ? 'ok' : 'bad'),
        h('div', { class: 'hint', text: `${d.kind} · to ${d.dest_topic || '(no destination)'} · ${d.attempts} attempt(s) · ${fmtTime(d.created_at)}` }),
        h('div', { class: 'mono small', text: d.error })));
    }
    if (t.archive) {
      hops.push(hop('Archived', h('div', { class: 'hint', text: `by ${t.archive.pigeon_id} at ${fmtTime(t.archive.archived_at)}` }),
        h('div', { class: 'mono', text: Object.entries(t.archive.keys).map(([k, v]) => `${k}=${v}`).join(' ') || '—' })));
    }
    for (const r of t.replays) {
      hops.push(hop(`Replay #${r.job}`, badge(r.status, r.status === 'done' ? 'ok' : ''), h('div', { class: 'mono small', text: `as ${r.replay_id} · ${r.receipts.length} receipt(s)` })));
    }
    for (const r of t.receipts) {
      hops.push(hop(`Handled by ${r.module}`, badge(r.outcome, r.outcome === 'handled' ? 'ok' : 'bad'),
        h('span', { class: 'mono', text: ` ${r.capability} on ${r.instance}` }),
        h('div', { class: 'hint', text: `${(r.duration_us / 1000).toFixed(2)} ms · ${tries(r.attempts)} · ${fmtTime(r.at_ms)}` }),
        r.error ? h('div', { class: 'mono small', text: r.error }) : null));
    }
    out.replaceChildren(h('section', { class: 'panel', 'aria-labelledby': 'trace-h' },
      h('h2', { id: 'trace-h', class: 'mono', text: t.letter_id }),
      t.id_time_ms ? h('p', { class: 'hint', text: `made ${fmtTime(t.id_time_ms)}` }) : null,
      h('ol', { class: 'trace', 'aria-label': 'The letter’s path' }, hops),
      t.notes.length ? h('ul', { class: 'notes' }, t.notes.map((n) => h('li', { class: 'muted', text: n }))) : null));
  } catch (e) { setError(slot, e); }
}

// --- Audit --------------------------------------------------------------------------------------

async function pageAudit(root) {
  const tbody = h('tbody');
  let cursor = null;
  const slot = h('div', { 'aria-live': 'assertive' });
  const more = h('button', { type: 'button', class: 'secondary more', hidden: true, onclick: () => load().catch((e) => setError(slot, e)) }, 'Load more');
  async function load() {
    const page = await api('GET', `/audit?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    for (const a of page.items) {
      const change = h('tr', { hidden: true }, h('td', { colspan: 5 }));
      const toggle = h('button', { type: 'button', class: 'quiet small', 'aria-expanded': 'false', 'aria-label': `Show change ${a.id}`, onclick: () => {
        if (!change.firstChild.firstChild) change.firstChild.append(diffView(a.before, a.after, `Change ${a.id}`));
        change.hidden = !change.hidden;
        toggle.setAttribute('aria-expanded', String(!change.hidden));
        toggle.textContent = change.hidden ? 'Show' : 'Hide';
      } }, 'Show');
      tbody.append(h('tr', { 'data-action': a.action }, h('td', { text: fmtTime(a.at) }), h('td', { text: a.actor }), h('td', {}, h('code', { text: a.action })), h('td', { class: 'mono', text: a.target }), h('td', {}, toggle)), change);
    }
  }
  root.replaceChildren(h('h1', { text: 'Audit log' }), h('p', { class: 'lede', text: 'Every change, newest first: who, what, and the before and after.' }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'audit-table' }, h('thead', {}, h('tr', {}, ['When', 'Actor', 'Action', 'Target', 'Change'].map((x) => h('th', { scope: 'col', text: x })))), tbody)),
    more, slot);
  await load();
}

// ---------------------------------------------------------------------------------------------
// Navigation.

const PAGES = [
  [/^#\/overview$/, pageOverview],
  [/^#\/pigeons$/, pagePigeons],
  [/^#\/pigeons\/new$/, (root) => pagePigeonEditor(root, undefined)],
  [/^#\/pigeons\/([^/?]+)$/, (root, m) => pagePigeonEditor(root, decodeURIComponent(m[1]))],
  [/^#\/providers$/, pageProviders],
  [/^#\/dictionary$/, pageDictionary],
  [/^#\/dead-letters(?:\?(.*))?$/, (root, m) => pageDeadLetters(root, new URLSearchParams(m[1] || ''))],
  [/^#\/archive$/, pageArchive],
  [/^#\/trace(?:\/([^/?]+))?$/, (root, m) => pageTrace(root, m[1] ? decodeURIComponent(m[1]) : '')],
  [/^#\/audit$/, pageAudit],
];

let navigation = 0;

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const nav = ++navigation;
  if (!session) return pageSignIn(main());
  const hash = location.hash.startsWith('#/') ? location.hash : '#/overview';
  for (const link of document.querySelectorAll('#nav a')) {
    const section = link.getAttribute('href');
    link.toggleAttribute('aria-current', hash === section || hash.startsWith(`${section}/`) || hash.startsWith(`${section}?`));
    if (link.hasAttribute('aria-current')) link.setAttribute('aria-current', 'page');
  }
  const found = PAGES.map(([re, page]) => [hash.match(re), page]).find(([m]) => m);
  // The page is built apart and shown only if no later navigation started meanwhile.
  const view = h('div');
  main().setAttribute('aria-busy', 'true');
  try {
    if (!found) {
      view.replaceChildren(h('h1', { text: 'Not found' }), h('p', {}, 'No page here. ', h('a', { href: '#/overview', text: 'Go to the overview.' })));
    } else {
      await found[1](view, found[0]);
    }
  } catch (e) {
    if (e.status === 401) return;
    view.replaceChildren(h('h1', { text: 'Something went wrong' }), errorBox(e));
  }
  if (nav !== navigation) return;
  main().replaceChildren(view);
  main().removeAttribute('aria-busy');
  document.title = `${view.querySelector('h1')?.textContent || 'Pigeon'} · Pigeon`;
  if (route.moveFocus) main().focus({ preventScroll: false });
  route.moveFocus = false;
}

function startSession() {
  document.body.classList.remove('signed-out');
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  document.getElementById('whoami').textContent = `${session.name} · ${session.role}`;
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  navigation++; // a page still loading is not shown
  timers.forEach(clearInterval);
  timers = [];
  document.body.classList.add('signed-out');
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('whoami').textContent = '';
  pageSignIn(main(), reason);
}

// `g` then a letter jumps to a section (shown beside each link), unless typing in a field.
let pendingG = 0;
document.addEventListener('keydown', (e) => {
  const typing = e.target.closest('input, textarea, select, [contenteditable]');
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !session) return;
  if (e.key === 'g') { pendingG = Date.now(); return; }
  if (Date.now() - pendingG < 1500) {
    const link = [...document.querySelectorAll('#nav a[data-key]')].find((a) => a.dataset.key === e.key);
    pendingG = 0;
    if (link) { e.preventDefault(); route.moveFocus = true; location.hash = link.getAttribute('href'); }
  }
});

window.addEventListener('hashchange', () => {
  if (location.hash && !location.hash.startsWith('#/')) return; // an in-page anchor, not a page
  route.moveFocus = true;
  route();
});
document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
  document.querySelector('.skip').addEventListener('click', (e) => { e.preventDefault(); main().focus(); });
  document.body.classList.add('signed-out');
  if (!location.hash) history.replaceState(null, '', '#/overview'); // Back returns to a page
  if (sessionStorage.getItem(TOKEN_KEY)) {
    try {
      session = await api('GET', '/me');
      startSession();
    } catch (e) {
      if (e.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      else return pageSignIn(main(), `Cannot check the token: ${e.message} Reload to try again.`);
    }
  }
  route();
});
