// Herald's operators' dashboard: plain JavaScript over the JSON API (/v1/stats,
// /v1/notifications, retry and cancel). The API key lives in this tab's sessionStorage and is
// sent only as an Authorization header; it never goes into a URL.
'use strict';

const KEY = 'herald.key';
const REFRESH_MS = 5000;
const STATUSES = ['queued', 'scheduled', 'sending', 'retrying', 'sent', 'delivered', 'failed', 'bounced',
  'complained', 'expired', 'cancelled', 'suppressed'];
const SERIES = ['accepted', 'sent', 'delivered', 'failed'];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const $ = (sel) => document.querySelector(sel);
let windowName = sessionStorage.getItem('herald.window') || '1h';
let isAdmin = false;
let timer = null;

function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
const num = (n) => (n ?? 0).toLocaleString('en');
function secs(s) {
  if (s === null || s === undefined) return '–';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
// Times in the browser's zone, saying which.
const when = (t) => (t ? new Date(t).toLocaleString(undefined, { timeZoneName: 'short' }) : '–');
const clock = (t) => new Date(t).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });

class Unauthorized extends Error {}

async function api(method, path) {
  const r = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, Accept: 'application/json' },
  });
  const body = (r.headers.get('content-type') || '').includes('json') ? await r.json() : null;
  if (r.status === 401) throw new Unauthorized(body?.detail || 'unauthorized');
  if (!r.ok) throw new Error(body?.detail || `HTTP ${r.status}`);
  return body;
}

function show(signedIn) {
  $('#sign-in-view').hidden = signedIn;
  $('#app-view').hidden = !signedIn;
  $('#sign-out').hidden = !signedIn;
  if (!signedIn) $('#key').focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $('#who').textContent = '';
  $('#sign-in-error').textContent = message || '';
  show(false);
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const s = await api('GET', '/v1/stats?window=5m');
    isAdmin = s.tenant === null;
    $('#who').textContent = isAdmin ? 'admin · every tenant' : `tenant ${s.tenant}`;
    $('#sign-in-error').textContent = '';
    show(true);
    $('#search').focus();
    route();
  } catch (e) {
    signOut(e instanceof Unauthorized ? 'That key is unknown or revoked.' : `Sign-in failed: ${e.message}`);
  }
}

// A sign-in link (`herald ops-link`) carries its token in the fragment, which the browser sends
// to no server; it is taken out of the address at once and traded, once, for a session key.
async function redeem(token) {
  try {
    const r = await fetch('/ops/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ link: token }),
    });
    const body = (r.headers.get('content-type') || '').includes('json') ? await r.json() : null;
    if (!r.ok) return signOut(body?.detail || `Sign-in link refused (HTTP ${r.status})`);
    await signIn(body.key);
  } catch (e) {
    signOut(`Sign-in failed: ${e.message}`);
  }
}

function failed(e) {
  if (e instanceof Unauthorized) return signOut('Your key was refused; sign in again.');
  $('#content').innerHTML = `<p class="error">${esc(e.message)}</p>`;
}

// Routes: #/ overview, #/n/ID one notification, #/search/TEXT matches.
function route() {
  clearInterval(timer);
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith('/n/')) return message(hash.slice(3)).catch(failed);
  if (hash.startsWith('/search/')) return search(hash.slice(8)).catch(failed);
  overview().catch(failed);
  timer = setInterval(() => overview().catch(failed), REFRESH_MS);
}

function counts(by, prefix) {
  const cells = STATUSES.filter((s) => by[s]).map((s) =>
    `<div class="count ${s}" data-testid="${prefix}-${s}"><b>${num(by[s])}</b><span>${s}</span></div>`);
  return cells.length ? `<div class="counts">${cells.join('')}</div>` : '<p class="muted">nothing yet</p>';
}

// One line per series over the window's buckets; `accepted` dashed and drawn last, so it
// shows where it runs along `sent`. Five time labels, and the window's totals beside the
// legend, so a burst in one bucket reads as what it is.
function chart(t) {
  const b = t.buckets;
  const w = 1100, h = 220, pad = 34;
  const max = Math.max(1, ...b.flatMap((x) => SERIES.map((k) => x[k])));
  const x = (i) => pad + (i * (w - pad - 6)) / Math.max(1, b.length - 1);
  const y = (v) => h - 18 - (v * (h - 30)) / max;
  const order = ['sent', 'delivered', 'failed', 'accepted'];
  const lines = order.map((k) => {
    const pts = b.map((p, i) => `${x(i).toFixed(1)},${y(p[k]).toFixed(1)}`).join(' ');
    return `<polyline class="series ${k}" data-series="${k}" points="${pts}"/>`;
  });
  const ticks = b.length < 2 ? [] : [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * (b.length - 1)));
  const labels = ticks.map((i, n) => {
    const anchor = n === 0 ? 'start' : n === ticks.length - 1 ? 'end' : 'middle';
    return `<text x="${x(i).toFixed(1)}" y="${h - 4}" text-anchor="${anchor}">${esc(clock(b[i].at))}</text>`;
  }).join('');
  const half = Math.round(max / 2);
  const totals = Object.fromEntries(SERIES.map((k) => [k, b.reduce((sum, p) => sum + p[k], 0)]));
  const legend = SERIES.map((k) => `<span><i class="${k}"></i>${k} <b data-testid="window-${k}">${num(totals[k])}</b></span>`).join('');
  return `<svg class="chart" id="throughput" viewBox="0 0 ${w} ${h}" role="img" aria-label="throughput per ${t.bucket_seconds} s">
      <line class="axis" x1="${pad}" y1="${h - 18}" x2="${w}" y2="${h - 18}"/>
      <line class="axis" x1="${pad}" y1="8" x2="${pad}" y2="${h - 18}"/>
      <line class="grid" x1="${pad}" y1="${y(half).toFixed(1)}" x2="${w}" y2="${y(half).toFixed(1)}"/>
      <text x="2" y="14">${num(max)}</text><text x="2" y="${(y(half) + 4).toFixed(1)}">${num(half)}</text>
      <text x="2" y="${h - 20}">0</text>
      ${labels}${lines.join('')}</svg>
    <div class="legend">${legend}<span>in the window, per ${num(t.bucket_seconds)} s bucket</span></div>`;
}

function latency(name, l) {
  return `<tr><th scope="row">${name}</th><td class="num">${num(l.count)}</td><td class="num">${secs(l.p50)}</td>
    <td class="num">${secs(l.p90)}</td><td class="num">${secs(l.p99)}</td></tr>`;
}

async function overview() {
  const [day, sel] = await Promise.all([
    api('GET', '/v1/stats?window=24h'), api('GET', `/v1/stats?window=${windowName}`),
  ]);
  if (location.hash && location.hash !== '#/') return; // navigated away meanwhile
  const windows = ['5m', '1h', '24h', '7d'].map((w) =>
    `<button data-window="${w}" class="${w === windowName ? 'on' : ''}">${w}</button>`).join('');
  const attempts = Object.fromEntries(sel.attempts.map((a) => [a.provider, a]));
  const providers = sel.providers.map((p) => {
    const a = attempts[p.name] || { attempts: 0, failed: 0, failure_rate: 0 };
    return `<tr data-provider="${esc(p.name)}"><td>${esc(p.name)} <span class="muted">(${esc(p.kind)})</span></td>
      <td class="num">${num(a.attempts)}</td><td class="num">${num(a.failed)}</td>
      <td class="num">${(a.failure_rate * 100).toFixed(1)}%</td><td><span class="pill ${esc(p.breaker)}">${esc(p.breaker)}</span></td></tr>`;
  }).join('');
  const queue = sel.queue.map((q) => `<tr><td>${esc(q.channel)}</td><td>${esc(q.priority)}</td>
      <td class="num" data-testid="queue-${esc(q.channel)}-${esc(q.priority)}">${num(q.waiting)}</td>
      <td class="num">${num(q.due)}</td><td class="num">${num(q.running)}</td>
      <td class="num">${secs(q.oldest_due_age_seconds)}</td></tr>`).join('')
    || '<tr><td colspan="6" class="muted">the queue is empty</td></tr>';
  const failures = sel.recent_failures.map((f) => `<tr><td><a href="#/n/${esc(f.id)}">${esc(f.id.slice(0, 13))}…</a></td>
      <td>${esc(f.channel)}</td><td>${esc(f.to)}</td><td>${esc(f.provider || '')}</td><td>${esc(f.error || '')}</td>
      <td>${when(f.at)}</td></tr>`).join('') || '<tr><td colspan="6" class="muted">no failures</td></tr>';
  $('#content').innerHTML = `
    <div class="toolbar"><span class="muted">Window</span>${windows}<span class="muted">every card below but “last 24 hours”
      follows it · refreshes every ${REFRESH_MS / 1000} s · times in ${esc(Intl.DateTimeFormat().resolvedOptions().timeZone)}</span></div>
    <div class="grid">
      <div class="card"><h2>Last ${esc(windowName)} · <span data-testid="total-${esc(windowName)}">${num(sel.notifications.total)}</span> notifications</h2>
        ${counts(sel.notifications.by_status, `count-${windowName}`)}</div>
      <div class="card"><h2>Last 24 hours · <span data-testid="total-24h">${num(day.notifications.total)}</span> notifications</h2>
        ${counts(day.notifications.by_status, 'count-24h')}</div>
      <div class="card"><h2>Stuck leases</h2><div class="count ${sel.stuck ? 'failed' : ''}"><b data-testid="stuck">${num(sel.stuck)}</b>
        <span>sends whose worker stopped answering</span></div></div>
    </div>
    <div class="grid">
      <div class="card wide"><h2>Throughput · last ${esc(windowName)}</h2>${chart(sel.throughput)}</div>
      <div class="card span2"><h2>Latency from acceptance · last ${esc(windowName)}</h2><table><tr><th scope="col">from acceptance</th>
        <th scope="col" class="num">n</th><th scope="col" class="num">p50</th>
        <th scope="col" class="num">p90</th><th scope="col" class="num">p99</th></tr>${latency('to sent', sel.latency_seconds.accepted_to_sent)}
        ${latency('to delivered', sel.latency_seconds.accepted_to_delivered)}</table></div>
      <div class="card span2"><h2>Providers · last ${esc(windowName)}</h2><table><tr><th>provider</th><th class="num">attempts</th>
        <th class="num">failed attempts</th><th class="num">attempts failed</th><th>circuit</th></tr>${providers}</table>
        <p class="muted">Counts provider calls: a notification that failed over to another provider counts one failed attempt here and is sent.</p></div>
      <div class="card wide"><h2>Queue</h2><table><tr><th>channel</th><th>priority</th><th class="num">waiting</th>
        <th class="num">due</th><th class="num">sending</th><th class="num">oldest due</th></tr>${queue}</table></div>
      <div class="card wide"><h2>Recent failures</h2><table id="failures"><tr><th>id</th><th>channel</th><th>to</th>
        <th>provider</th><th>error</th><th>at</th></tr>${failures}</table></div>
    </div>`;
}

async function search(input) {
  // `category:newsletter` searches by category; else a recipient, else a tag.
  const byCategory = input.match(/^category:\s*(.+)$/);
  const q = byCategory ? byCategory[1].trim() : input;
  const looksLikeRecipient = q.includes('@') || /^\+?[0-9 ()-]{6,}$/.test(q);
  const param = byCategory ? 'category' : looksLikeRecipient ? 'to' : 'tag';
  const page = await api('GET', `/v1/notifications?${param}=${encodeURIComponent(q)}&limit=50`);
  const rows = page.items.map((n) => `<tr><td><a href="#/n/${esc(n.id)}">${esc(n.id)}</a></td>
      <td><span class="pill ${esc(n.status)}">${esc(n.status)}</span></td><td>${esc(n.channel)}</td>
      <td>${esc(typeof n.to === 'string' ? n.to : JSON.stringify(n.to))}</td><td>${esc((n.tags || []).join(', '))}</td>
      <td>${when(n.created_at)}</td></tr>`).join('');
  $('#content').innerHTML = `<div class="card"><h2>${page.items.length} notification(s) with ${param} “${esc(q)}”</h2>
    <table id="results"><tr><th>id</th><th>status</th><th>channel</th><th>to</th><th>tags</th><th>created</th></tr>
    ${rows || '<tr><td colspan="6" class="muted">no matches</td></tr>'}</table></div>`;
}

function event(e) {
  const classes = [e.type, e.status === 'failed' ? 'failed' : ''].join(' ');
  const status = e.status ? ` → <span class="pill ${esc(e.status)}">${esc(e.status)}</span>` : '';
  const provider = e.provider ? ` <span class="muted">via ${esc(e.provider)}</span>` : '';
  const detail = e.detail && Object.keys(e.detail).length ? `<pre>${esc(JSON.stringify(e.detail, null, 2))}</pre>` : '';
  return `<li class="${classes}" data-type="${esc(e.type)}"><span class="type">${esc(e.type)}</span>${status}${provider}
    <span class="muted"> · ${when(e.at)}</span>${detail}</li>`;
}

// The message itself: its content by channel, the template and variant it was rendered from,
// its SMS encoding and segments, and its metadata.
function sentMessage(n) {
  const c = n.content || {};
  const rows = [];
  const add = (k, v, testid) => rows.push(`<dt>${k}</dt><dd data-testid="${testid}">${v}</dd>`);
  if (n.template) add('template', esc(`${n.template.name} v${n.template.version}${n.template.locale ? ` (${n.template.locale})` : ''}`), 'template');
  if (c.subject !== undefined) add('subject', esc(c.subject), 'subject');
  if (c.from) add('from', esc(c.from), 'from');
  if (c.title) add('title', esc(c.title), 'title');
  if (c.text) add('text', `<pre>${esc(c.text)}</pre>`, 'text');
  if (c.body) add('body', `<pre>${esc(c.body)}</pre>`, 'body');
  if (c.html) add('html', `<details><summary>${num(c.html.length)} characters</summary><pre>${esc(c.html)}</pre></details>`, 'html');
  if (c.data && Object.keys(c.data).length) add('data', `<pre>${esc(JSON.stringify(c.data, null, 2))}</pre>`, 'data');
  if (n.sms) add('sms', esc(`${n.sms.encoding}, ${n.sms.segments} segment${n.sms.segments === 1 ? '' : 's'}`), 'sms');
  if (n.metadata && Object.keys(n.metadata).length) add('metadata', `<pre>${esc(JSON.stringify(n.metadata, null, 2))}</pre>`, 'metadata');
  return `<dl class="facts">${rows.join('')}</dl>`;
}

async function message(id) {
  const n = await api('GET', `/v1/notifications/${encodeURIComponent(id)}`);
  const retryable = ['failed', 'expired', 'bounced'].includes(n.status);
  const cancellable = ['scheduled', 'queued', 'retrying'].includes(n.status);
  const actions = isAdmin ? `<div class="actions">
      <button id="retry" ${retryable ? '' : 'disabled'}>Retry</button>
      <button id="cancel" ${cancellable ? '' : 'disabled'}>Cancel</button><span id="action-result" class="muted"></span></div>` : '';
  const facts = [['status', `<span class="pill ${esc(n.status)}" data-testid="status">${esc(n.status)}</span>`],
    ['channel', esc(n.channel)], ['to', esc(typeof n.to === 'string' ? n.to : JSON.stringify(n.to))],
    ['tenant', esc(n.tenant || '')], ['provider', esc(n.provider || '–')], ['attempts', num(n.attempts)],
    ['created', when(n.created_at)], ['tags', esc((n.tags || []).join(', ') || '–')],
    ['category', esc(n.category || 'transactional')]]
    .map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('');
  $('#content').innerHTML = `<div class="grid">
    <div class="card"><h2>Notification <code>${esc(n.id)}</code></h2><dl class="facts">${facts}</dl>${actions}</div>
    <div class="card" id="sent-message"><h2>What was sent</h2>${sentMessage(n)}</div>
    <div class="card"><h2>Timeline</h2><ol class="timeline" id="timeline">${(n.events || []).map(event).join('')}</ol></div></div>`;
  for (const [button, verb] of [['#retry', 'retry'], ['#cancel', 'cancel']]) {
    $(button)?.addEventListener('click', async () => {
      try {
        await api('POST', `/v1/notifications/${encodeURIComponent(n.id)}/${verb}`);
        await message(n.id);
        $('#action-result').textContent = `${verb} done`;
      } catch (e) {
        if (e instanceof Unauthorized) return failed(e);
        $('#action-result').textContent = e.message;
      }
    });
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('#sign-in').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('#key').value.trim();
    $('#key').value = '';
    if (key) signIn(key);
  });
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = $('#search').value.trim();
    if (!q) { location.hash = '#/'; return; }
    location.hash = UUID.test(q) ? `#/n/${q.toLowerCase()}` : `#/search/${encodeURIComponent(q)}`;
  });
  $('#sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('#content').addEventListener('click', (e) => {
    const w = e.target.closest('button[data-window]');
    if (!w) return;
    windowName = w.dataset.window;
    sessionStorage.setItem('herald.window', windowName);
    route();
  });
  window.addEventListener('hashchange', () => { if (sessionStorage.getItem(KEY)) route(); });
  if (location.hash.startsWith('#link=')) {
    const token = decodeURIComponent(location.hash.slice('#link='.length));
    history.replaceState(null, '', location.pathname);
    redeem(token);
  } else if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY)); else show(false);
});
