// layermesh dashboard: plain JavaScript, no framework, nothing fetched from outside
// the node. The admin token lives in sessionStorage (this tab only) and travels as an
// Authorization header, never in a URL; the event stream is read with fetch()
// streaming for that reason (EventSource cannot set headers).
'use strict';

const TOKEN_KEY = 'layermesh.token';
const POLL_STATE_MS = 3000;
const POLL_METRICS_MS = 5000;
const POLL_LINKS_MS = 10000;
const FEED_MAX = 200;

const $ = (sel) => document.querySelector(sel);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  cluster: null, models: [], links: [], stageStats: new Map(),
  lastEventId: '', timers: [], abort: null, refreshTimer: 0, prevHist: null,
};

// el builds an element; text goes through textContent so nothing from the cluster is
// ever parsed as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: 'Bearer ' + state.token }, opts.headers || {});
  const resp = await fetch(path, Object.assign({}, opts, { headers, cache: 'no-store' }));
  if (resp.status === 401 || resp.status === 403) throw new Unauthorized('the token was refused');
  if (!resp.ok) {
    let msg = resp.status + ' ' + resp.statusText;
    try { const b = await resp.json(); if (b.error) msg = b.error; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

// ---- login -----------------------------------------------------------------------

function showLogin(message) {
  stop();
  state.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  $('#dashboard').hidden = true;
  $('#login').hidden = false;
  $('#logout').hidden = true;
  $('#stream-state').hidden = true;
  $('#summary').textContent = '';
  $('#login-error').textContent = message || '';
  $('#token').focus();
}

async function login(token) {
  state.token = token;
  try {
    const resp = await api('/v1/cluster');
    state.cluster = await resp.json();
  } catch (err) {
    showLogin(err instanceof Unauthorized ? 'That token was refused.' : 'Cannot reach the node: ' + err.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#login').hidden = true;
  $('#dashboard').hidden = false;
  $('#logout').hidden = false;
  start();
}

function start() {
  refresh();
  pollMetrics();
  pollLinks();
  state.timers.push(setInterval(refresh, POLL_STATE_MS));
  state.timers.push(setInterval(pollMetrics, POLL_METRICS_MS));
  state.timers.push(setInterval(pollLinks, POLL_LINKS_MS));
  streamEvents();
}

function stop() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  if (state.abort) state.abort.abort();
  state.abort = null;
}

function handleError(err) {
  if (err instanceof Unauthorized) showLogin('The token was refused; sign in again.');
}

// ---- cluster state ---------------------------------------------------------------

async function refresh() {
  if (!state.token) return;
  try {
    const [c, m] = await Promise.all([api('/v1/cluster'), api('/v1/models')]);
    state.cluster = await c.json();
    // By name: the map and the table keep their places from one refresh to the next.
    (state.cluster.nodes || []).sort((a, b) => a.name.localeCompare(b.name));
    state.models = (await m.json()).models || [];
    render();
  } catch (err) { handleError(err); }
}

// refreshSoon coalesces the refreshes that a burst of events asks for.
function refreshSoon() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 250);
}

async function pollLinks() {
  try {
    state.links = (await (await api('/v1/links')).json()).links || [];
    renderMap();
  } catch (err) { handleError(err); }
}

// health folds Raft's member state and memberlist's view into the one word shown. A
// member memberlist no longer lists ("unknown") has been declared dead by it.
function health(n) {
  const s = n.state, h = n.health || s;
  if (h === 'dead' || s === 'dead') return 'dead';
  if (h === 'unknown' && s !== 'left' && s !== 'removed') return 'dead';
  if (s === 'removed' || s === 'left') return s;
  if (h === 'suspect' || s === 'suspect') return 'suspect';
  if (s === 'draining') return 'draining';
  if (h === 'left') return 'left';
  return h === 'unknown' ? s : h;
}

// servedBy maps "model@version/stageK" to {node: 'ready'|'loading'} from the nodes'
// own reports (NodeStatus.models).
function servedBy(nodes) {
  const out = new Map();
  for (const n of nodes) {
    for (const m of n.models || []) {
      const match = /^(.*)\/stage(\d+) \((\w+)\)$/.exec(m);
      if (!match) continue;
      const key = match[1] + '/' + match[2];
      if (!out.has(key)) out.set(key, {});
      out.get(key)[n.name] = match[3];
    }
  }
  return out;
}

function fmtBytes(b) {
  if (!b || b < 0) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (b >= 100 || i === 0 ? b.toFixed(0) : b.toFixed(1)) + ' ' + u[i];
}

function fmtRate(bps) {
  if (!bps) return '';
  const mb = bps / 1e6;
  return mb >= 1000 ? (mb / 1000).toFixed(1) + ' GB/s' : mb.toFixed(mb >= 10 ? 0 : 1) + ' MB/s';
}

function fmtMs(s) {
  if (s === undefined || s === null || !isFinite(s)) return '–';
  const ms = s * 1000;
  return ms >= 100 ? ms.toFixed(0) + ' ms' : ms.toFixed(ms >= 10 ? 1 : 2) + ' ms';
}

function render() {
  const c = state.cluster;
  if (!c) return;
  const nodes = c.nodes || [];
  const up = nodes.filter((n) => health(n) === 'alive' || health(n) === 'draining').length;
  $('#summary').textContent = `${nodes.length} nodes, ${up} up · leader ${c.leader || 'none'}` +
    (c.term ? ` · term ${c.term}` : '') + ` · served by ${c.self} · ${c.version || ''}`;
  renderNodes(nodes);
  renderMap();
  renderModels(nodes);
}

function renderNodes(nodes) {
  const body = $('#nodes tbody');
  body.replaceChildren();
  for (const n of nodes) {
    const h = health(n);
    const cap = n.capacity || {};
    const budget = cap.mem_budget || n.mem_total || 0;
    const used = Math.max(budget - (cap.mem_free ?? budget), 0);
    const pct = budget ? Math.round((100 * used) / budget) : 0;
    const stages = (n.models || []).map((m) => m.replace(/ \((\w+)\)$/, (_, s) => (s === 'ready' ? '' : ' (' + s + ')')));
    let action = null;
    if (n.state === 'draining') {
      action = el('button', { type: 'button', class: 'small ghost', 'data-action': 'undrain', 'aria-label': 'Undrain ' + n.name,
        onclick: () => confirmAction('undrain', n.name) }, 'Undrain');
    } else if (h === 'alive' || h === 'suspect') {
      action = el('button', { type: 'button', class: 'small ghost', 'data-action': 'drain', 'aria-label': 'Drain ' + n.name,
        onclick: () => confirmAction('drain', n.name) }, 'Drain');
    }
    body.append(el('tr', { 'data-node': n.name, 'data-health': h, 'data-state': n.state },
      el('th', { scope: 'row' }, n.name, n.leader ? el('span', { class: 'badge ok', title: 'Raft leader' }, ' leader') : null),
      el('td', {}, el('span', { class: 'health ' + h }, el('span', { class: 'dot ' + h, 'aria-hidden': 'true' }), h)),
      el('td', { class: 'opt' }, (n.accel || '?') + (n.cores ? ` · ${n.cores} cores` : '')),
      el('td', {}, el('div', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct,
        'aria-label': `memory ${pct}% of budget` }, el('span', { style: `width:${pct}%` })),
      el('span', { class: 'bar-label' }, `${fmtBytes(used)} / ${fmtBytes(budget)}`)),
      el('td', { class: 'num' }, String(n.load ?? 0)),
      el('td', { class: 'opt' }, stages.length ? stages.join(', ') : '–'),
      el('td', {}, action)));
  }
}

function renderMap() {
  const map = $('#map');
  const c = state.cluster;
  if (!c) return;
  const nodes = c.nodes || [];
  const W = 640, H = 360, cx = W / 2, cy = H / 2 + 6, R = Math.min(W, H) / 2 - 70;
  const pos = new Map();
  nodes.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(nodes.length, 1);
    pos.set(n.name, nodes.length === 1 ? [cx, cy] : [cx + R * 1.35 * Math.cos(a), cy + R * Math.sin(a)]);
  });
  const measured = new Map();
  for (const l of state.links) measured.set([l.from, l.to].sort().join('|'), l);
  const title = map.querySelector('title');
  map.replaceChildren(title);
  const linkLayer = svg('g', {}), nodeLayer = svg('g', {});
  map.append(linkLayer, nodeLayer);
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const a = nodes[i], b = nodes[j];
      if (health(a) === 'dead' || health(b) === 'dead') continue;
      const [x1, y1] = pos.get(a.name), [x2, y2] = pos.get(b.name);
      const l = measured.get([a.name, b.name].sort().join('|'));
      linkLayer.append(svg('line', { x1, y1, x2, y2, class: 'link' + (l ? ' measured' : '') }));
      if (l) {
        // Away from the higher node, whose own labels hang below it.
        const f = Math.abs(y1 - y2) < 20 ? 0.5 : y1 < y2 ? 0.62 : 0.38;
        const mx = x1 + (x2 - x1) * f, my = y1 + (y2 - y1) * f - 6;
        linkLayer.append(svg('text', { x: mx, y: my, 'text-anchor': 'middle', class: 'link-label' },
          `${l.rtt_ms.toFixed(2)} ms · ${fmtRate(l.bandwidth_bytes_per_second)}`));
      }
    }
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.name);
    const h = health(n);
    const g = svg('g', { 'data-node': n.name, 'data-health': h });
    g.append(svg('circle', { cx: x, cy: y, r: 34, class: 'node-circle h-' + h }));
    g.append(svg('text', { x, y: y - 2, 'text-anchor': 'middle', class: 'node-name' }, n.name));
    g.append(svg('text', { x, y: y + 14, 'text-anchor': 'middle', class: 'node-sub' }, h));
    const cap = n.capacity || {};
    const budget = cap.mem_budget || n.mem_total || 0;
    const used = Math.max(budget - (cap.mem_free ?? budget), 0);
    g.append(svg('text', { x, y: y + 52, 'text-anchor': 'middle', class: 'node-sub' },
      `${n.accel || '?'} · load ${n.load ?? 0} · ${fmtBytes(used)}/${fmtBytes(budget)}`));
    const stages = (n.models || []).length;
    g.append(svg('text', { x, y: y + 66, 'text-anchor': 'middle', class: 'node-sub' },
      stages ? `${stages} stage${stages > 1 ? 's' : ''}` : 'no stages'));
    if (n.leader) g.append(svg('text', { x, y: y - 42, 'text-anchor': 'middle', class: 'leader-mark' }, '★ leader'));
    nodeLayer.append(g);
  }
}

function renderModels(nodes) {
  const box = $('#models');
  box.replaceChildren();
  if (!state.models.length) {
    box.append(el('p', { class: 'reason' }, 'No model deployed (meshctl deploy).'));
    return;
  }
  const served = servedBy(nodes);
  const healthOf = new Map(nodes.map((n) => [n.name, health(n)]));
  for (const m of state.models) {
    const id = `${m.name}@${m.version}`;
    const rows = (m.stages || []).map((s) => {
      const reports = served.get(`${id}/${s.index}`) || {};
      const chips = (s.replicas || []).map((r) => {
        const dead = healthOf.get(r) === 'dead';
        const st = dead ? 'dead' : reports[r] === 'ready' ? 'ready' : 'loading';
        return el('span', { class: 'chip ' + st, 'data-model': m.name, 'data-stage': s.index, 'data-replica': r, 'data-ready': String(st === 'ready') },
          r, el('span', { class: 'sr-only' }, ' ' + st), st === 'loading' ? ' …' : '');
      });
      const stats = state.stageStats.get(`${m.name}/${s.index}`) || {};
      return el('tr', { 'data-stage-row': s.index },
        el('th', { scope: 'row' }, String(s.index)),
        el('td', {}, ...(chips.length ? chips : ['unplaced'])),
        el('td', { class: 'num' }, stats.rate !== undefined ? stats.rate.toFixed(2) + '/s' : '–'),
        el('td', { class: 'num' }, fmtMs(stats.p50)),
        el('td', { class: 'num' }, fmtMs(stats.p99)));
    });
    box.append(el('article', { class: 'model', 'data-model': m.name },
      el('h3', {}, id, el('span', { class: 'badge ' + (m.ready ? 'ok' : 'wait') }, m.ready ? 'ready' : 'not ready'),
        m.reason ? el('span', { class: 'reason' }, m.reason) : null),
      el('div', { class: 'table-wrap' }, el('table', {},
        el('caption', { class: 'sr-only' }, `Stages of ${id}`),
        el('thead', {}, el('tr', {}, ...['Stage', 'Replicas', 'Calls', 'p50', 'p99'].map((t) => el('th', { scope: 'col' }, t)))),
        el('tbody', {}, ...rows)))));
  }
}

// ---- metrics: stage rates and latency quantiles from the nodes' histograms ------

// readHistograms turns GET /v1/stage-stats into {"model/stage": Map(le -> cumulative
// count)}, the +Inf bucket being the count.
function readHistograms(stats) {
  const out = new Map();
  for (const h of stats.stages || []) {
    const b = new Map(h.buckets.map((x) => [x.le, x.count]));
    b.set(Infinity, h.count);
    out.set(`${h.model}/${h.stage}`, b);
  }
  return out;
}

// quantile interpolates within the bucket holding the q-th observation, as
// Prometheus's histogram_quantile does.
function quantile(q, buckets) {
  const les = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) || 0;
  if (!total) return undefined;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const le of les) {
    const c = buckets.get(le);
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(c - prevCount, 1e-9);
    }
    prevLe = le; prevCount = c;
  }
  return prevLe;
}

async function pollMetrics() {
  try {
    const answer = await (await api('/v1/stage-stats')).json();
    const now = performance.now();
    const hist = readHistograms(answer);
    const prev = state.prevHist;
    const stats = new Map();
    for (const [key, b] of hist) {
      const before = prev && prev.hist.get(key);
      const delta = new Map();
      for (const [le, c] of b) delta.set(le, c - ((before && before.get(le)) || 0));
      const window = before && (delta.get(Infinity) || 0) > 0 ? delta : b;
      const s = { p50: quantile(0.5, window), p99: quantile(0.99, window) };
      if (prev) s.rate = (delta.get(Infinity) || 0) / ((now - prev.at) / 1000);
      stats.set(key, s);
    }
    state.prevHist = { hist, at: now };
    state.stageStats = stats;
    if (state.cluster) renderModels(state.cluster.nodes || []);
  } catch (err) { handleError(err); }
}

// ---- events ----------------------------------------------------------------------

function describe(e) {
  const stage = e.stage !== undefined ? `stage ${e.stage}` : '';
  switch (e.type) {
    case 'member': return [`${e.node} ${e.state}`, e.detail];
    case 'leader': return [`leader: ${e.node || 'none'}`, e.detail];
    case 'placement': return [`placement ${e.subject} epoch ${e.epoch}`,
      (e.moved || []).map((m) => `stage ${m.stage}: ` + [...(m.added || []).map((n) => '+' + n), ...(m.removed || []).map((n) => '−' + n)].join(' ')).join('; ')];
    case 'stage_ready': return [`${e.subject} ${stage} ready on ${e.node}`, ''];
    case 'stage_unloaded': return [`${e.subject} ${stage} unloaded from ${e.node}`, ''];
    case 'failover': return [`failover ${e.subject} ${stage}`, `${e.from} → ${e.to}`];
    case 'session_replay': return [`session replay ${e.subject} ${stage}`, `${e.from} → ${e.to}`];
    case 'drain': return [`${e.node} draining`, e.detail];
    case 'undrain': return [`${e.node} undrained`, e.detail];
    case 'deploy': return [`deploy ${e.subject}: ${e.state}`, e.detail];
    default: return [`${e.type} ${e.subject}`, e.detail];
  }
}

function addEvent(e) {
  const [head, tail] = describe(e);
  const t = new Date(e.time);
  const cls = e.type === 'member' ? 'member-' + e.state : e.type;
  const item = el('li', { 'data-type': e.type, 'data-id': e.id },
    el('time', { datetime: e.time }, t.toLocaleTimeString([], { hour12: false })),
    el('span', { class: 'etype ' + cls }, head),
    tail ? el('span', { class: 'etail' }, tail) : null);
  const feed = $('#events');
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
}

function setStream(live, text) {
  const s = $('#stream-state');
  s.hidden = false;
  s.className = 'pill ' + (live ? 'live' : 'down');
  s.textContent = text;
}

// parseSSE splits a buffer into complete records; it returns the records and the
// unfinished rest.
function parseSSE(buf) {
  const records = [];
  let idx;
  while ((idx = buf.indexOf('\n\n')) >= 0) {
    const raw = buf.slice(0, idx);
    buf = buf.slice(idx + 2);
    const rec = { event: 'message', data: '', id: null };
    for (const line of raw.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') rec.data += (rec.data ? '\n' : '') + value;
      else if (field === 'event') rec.event = value;
      else if (field === 'id') rec.id = value;
    }
    if (rec.data || rec.event !== 'message') records.push(rec);
  }
  return [records, buf];
}

async function streamEvents() {
  const ctl = new AbortController();
  state.abort = ctl;
  while (!ctl.signal.aborted) {
    try {
      // The first connection asks for the recent window; a reconnection resumes.
      const headers = state.lastEventId ? { 'Last-Event-ID': state.lastEventId } : {};
      const resp = await api(state.lastEventId ? '/v1/events' : '/v1/events?recent=50', { headers, signal: ctl.signal });
      setStream(true, 'live');
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let records;
        [records, buf] = parseSSE(buf + value.replace(/\r\n/g, '\n'));
        for (const r of records) {
          if (r.id) state.lastEventId = r.id;
          if (r.event === 'gap') { refresh(); continue; }
          if (r.event !== 'message') continue;
          try { addEvent(JSON.parse(r.data)); } catch (_) { continue; }
          refreshSoon();
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
      if (err instanceof Unauthorized) { handleError(err); return; }
    }
    setStream(false, 'reconnecting');
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- actions ---------------------------------------------------------------------

function confirmAction(action, name) {
  const dlg = $('#confirm');
  $('#confirm-title').textContent = action === 'drain' ? `Drain ${name}?` : `Undrain ${name}?`;
  $('#confirm-text').textContent = action === 'drain'
    ? `${name} stops taking stages; its stages move to other nodes.`
    : `${name} may take stages again.`;
  $('#confirm-ok').textContent = action === 'drain' ? 'Drain' : 'Undrain';
  dlg.returnValue = '';
  dlg.onclose = async () => {
    if (dlg.returnValue !== 'ok') return;
    try {
      await api(`/v1/nodes/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
      refresh();
    } catch (err) {
      handleError(err);
      addEvent({ type: 'error', subject: `${action} ${name} failed`, detail: err.message, time: new Date().toISOString() });
    }
  };
  dlg.showModal();
  $('#confirm-ok').focus();
}

// ---- start -----------------------------------------------------------------------

$('#login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const token = $('#token').value.trim();
  $('#token').value = '';
  if (token) login(token);
});
$('#logout').addEventListener('click', () => showLogin(''));
if (state.token) login(state.token); else showLogin('');
