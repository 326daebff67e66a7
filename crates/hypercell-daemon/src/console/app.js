// Hypercell's web console. It uses only the public /v1 API, authorised by the cookie
// the sign-in form set; every request that changes something carries the console's
// header, without which the daemon refuses a cookie. Text from the daemon (names,
// output, errors) only ever enters the page as text nodes, never as HTML.
'use strict';

const ROW_HEIGHT = 34;
const STATS_EVERY_MS = 2000;
const SAMPLE_EVERY_MS = 1000;
const CHART_SAMPLES = 300;
const CHART_MIN_SPAN = 60;
const LOG_LINES_KEPT = 5000;
const EVENTS_KEPT = 1000;

// ---- Small helpers -----------------------------------------------------------------

/** An element with properties, listeners (`onclick`...) and children (text or nodes). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else if (key === 'checked') el.checked = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function duration(ms) {
  if (ms === undefined || ms === null) return '';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '';
}

/** Parses 64M, 1G, 512K or a plain number of bytes. */
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$/i.exec(text);
  if (!m) return NaN;
  const power = { '': 0, k: 1, m: 2, g: 3, t: 4 }[m[2].toLowerCase()];
  return Math.round(parseFloat(m[1]) * 1024 ** power);
}

/** Parses 500ms, 10s, 2m, 1h or a plain number of milliseconds. */
function parseDuration(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) return NaN;
  return Math.round(parseFloat(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || 'ms']);
}

function stateBadge(state) {
  return h('span', { class: `state state-${state}` }, state);
}

const isLive = (state) => state === 'running' || state === 'paused';

// ---- The API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API: JSON in and out; an error carries the daemon's one sentence. */
async function api(method, path, body, options = {}) {
  const headers = { 'X-Hypercell-Console': '1' };
  let payload;
  if (options.raw) {
    headers['Content-Type'] = 'application/octet-stream';
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, {
    method, headers, body: payload, credentials: 'same-origin', signal: options.signal,
  });
  if (response.status === 401) {
    location.reload();
    throw new ApiError(401, 'signed out');
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const answer = await response.json();
      if (answer && answer.error) message = answer.error;
    } catch (_) { /* not JSON: the status says it */ }
    throw new ApiError(response.status, message);
  }
  if (response.status === 204) return null;
  return response.json();
}

/** Opens a streamed response; an error carries the daemon's sentence. */
async function open(path, signal) {
  const response = await fetch(path, { credentials: 'same-origin', signal });
  if (response.status === 401) {
    location.reload();
    throw new ApiError(401, 'signed out');
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error || message; } catch (_) { /* status only */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

/** Reads an opened stream chunk by chunk until it ends or is aborted. */
async function consume(response, onChunk) {
  const reader = response.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk(value);
  }
}

/** Reads an opened stream of newline-separated JSON, one object a line. */
async function consumeJsonLines(response, onObject) {
  const decoder = new TextDecoder();
  let pending = '';
  await consume(response, (chunk) => {
    pending += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      if (line.trim()) onObject(JSON.parse(line));
    }
  });
}

/** Follows newline-separated JSON at `path`. */
async function streamJsonLines(path, signal, onObject) {
  await consumeJsonLines(await open(path, signal), onObject);
}

/** Runs `action`, showing its error (the daemon's sentence) in `where`. */
async function attempt(where, action) {
  where.textContent = '';
  try {
    return await action();
  } catch (error) {
    if (error.name !== 'AbortError') where.textContent = error.message;
    return undefined;
  }
}

// ---- The confirmation dialog --------------------------------------------------------

/** Asks to confirm `text` (and, with `field`, for a value); resolves to the value, or null. */
function ask(text, field) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  const label = document.getElementById('confirm-field');
  const input = document.getElementById('confirm-input');
  label.hidden = !field;
  if (field) {
    document.getElementById('confirm-label').textContent = field.label;
    input.value = field.value || '';
  }
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok' ? (field ? input.value : true) : null);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    (field ? input : document.getElementById('confirm-ok')).focus();
  });
}

// ---- Views --------------------------------------------------------------------------

const main = () => document.getElementById('main');
let leaving = null;

function route() {
  if (leaving) leaving();
  leaving = null;
  const controller = new AbortController();
  const hash = location.hash || '#/cells';
  const [path, query] = hash.slice(1).split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  const section = parts[0] || 'cells';
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const root = main();
  root.replaceChildren();
  let cleanup;
  if (parts[0] === 'cells' && parts[1]) cleanup = cellView(root, decodeURIComponent(parts[1]), controller.signal);
  else if (parts[0] === 'create') cleanup = createView(root, params);
  else if (parts[0] === 'templates') cleanup = templatesView(root, controller.signal);
  else if (parts[0] === 'events') cleanup = eventsView(root, controller.signal);
  else cleanup = listView(root, controller.signal);
  leaving = () => {
    controller.abort();
    if (typeof cleanup === 'function') cleanup();
  };
}

// The cell list: every cell's record, kept current by the event stream, and the live
// cells' figures from one stats request every few seconds. Only the rows in view are
// in the page, so ten thousand cells cost what thirty do.
function listView(root, signal) {
  const cells = new Map();
  const figures = new Map();
  let order = [];
  let shown = [];
  let selected = 0;
  const error = h('p', { class: 'error', role: 'alert' });
  const filter = h('input', {
    type: 'search', placeholder: 'Filter by name, id, state or module', 'aria-label': 'Filter cells',
    oninput: () => { selected = 0; refresh(); },
  });
  const count = h('span', { class: 'muted', id: 'cell-count' });
  const spacer = h('div');
  const windowEl = h('div', { class: 'window' });
  const rows = h('div', {
    class: 'rows', tabindex: '0', role: 'grid', 'aria-label': 'Cells', id: 'cell-rows',
    onscroll: () => requestAnimationFrame(draw), onkeydown: keys,
  }, spacer, windowEl);
  root.append(
    h('div', { class: 'toolbar' }, h('h1', {}, 'Cells'), count, h('a', { href: '#/create' }, 'Create a cell')),
    h('div', { class: 'toolbar' }, filter),
    error,
    h('div', { class: 'grid' },
      h('div', { class: 'head', role: 'row' },
        ['Name', 'ID', 'State', 'Module or template', 'Uptime', 'Memory', 'CPU time', 'Exits/s']
          .map((title, i) => h('span', { role: 'columnheader', class: i >= 4 ? 'num' : undefined }, title))),
      rows));

  function moduleName(record) {
    const module = record.spec.module || '';
    return module.split('/').pop();
  }

  function refresh() {
    const needle = filter.value.trim().toLowerCase();
    shown = needle
      ? order.filter((id) => {
        const r = cells.get(id);
        return `${r.name} ${r.id} ${r.state} ${r.spec.module}`.toLowerCase().includes(needle);
      })
      : order;
    selected = Math.min(selected, Math.max(shown.length - 1, 0));
    count.textContent = `${shown.length} of ${order.length}`;
    spacer.style.height = `${shown.length * ROW_HEIGHT}px`;
    draw();
  }

  function row(id, index) {
    const r = cells.get(id);
    const live = figures.get(id);
    const usage = (live && live.usage) || r.usage || {};
    const uptime = live ? live.uptime_ms : (r.started_ms && r.finished_ms ? r.finished_ms - r.started_ms : null);
    const rate = live && live.rate !== undefined ? live.rate.toFixed(1) : '';
    return h('a', {
      class: 'row', role: 'row', href: `#/cells/${encodeURIComponent(r.id)}`, tabindex: '-1',
      'aria-selected': String(index === selected), 'data-id': r.id,
    },
    h('span', { role: 'gridcell', title: r.name }, r.name),
    h('span', { role: 'gridcell', class: 'muted' }, r.id),
    h('span', { role: 'gridcell' }, stateBadge(r.parked_ms ? 'parked' : r.state)),
    h('span', { role: 'gridcell', title: r.spec.module }, moduleName(r)),
    h('span', { role: 'gridcell', class: 'num' }, duration(uptime)),
    h('span', { role: 'gridcell', class: 'num' }, bytes(usage.memory_touched)),
    h('span', { role: 'gridcell', class: 'num' }, usage.cpu_time_ms !== undefined && usage.cpu_time_ms !== null ? `${(usage.cpu_time_ms / 1000).toFixed(2)}s` : ''),
    h('span', { role: 'gridcell', class: 'num' }, rate));
  }

  function draw() {
    if (!shown.length) {
      windowEl.replaceChildren(h('div', { class: 'empty' }, order.length ? 'No cell matches the filter.' : 'No cells yet.'));
      return;
    }
    const first = Math.max(0, Math.floor(rows.scrollTop / ROW_HEIGHT) - 5);
    const last = Math.min(shown.length, first + Math.ceil(rows.clientHeight / ROW_HEIGHT) + 10);
    windowEl.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const children = [];
    for (let i = first; i < last; i++) children.push(row(shown[i], i));
    windowEl.replaceChildren(...children);
  }

  function keys(event) {
    const page = Math.max(1, Math.floor(rows.clientHeight / ROW_HEIGHT) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, Home: -Infinity, End: Infinity };
    if (event.key in moves) {
      event.preventDefault();
      selected = Math.max(0, Math.min(shown.length - 1, selected + moves[event.key]));
      const top = selected * ROW_HEIGHT;
      if (top < rows.scrollTop) rows.scrollTop = top;
      else if (top + ROW_HEIGHT > rows.scrollTop + rows.clientHeight) rows.scrollTop = top + ROW_HEIGHT - rows.clientHeight;
      draw();
    } else if (event.key === 'Enter' && shown[selected]) {
      location.hash = `#/cells/${encodeURIComponent(shown[selected])}`;
    }
  }

  function put(record) {
    if (!cells.has(record.id)) order.push(record.id);
    cells.set(record.id, record);
  }

  // Records that events changed, fetched together once the burst is over.
  const stale = new Set();
  let fetching = null;
  function update(id) {
    stale.add(id);
    if (fetching) return;
    fetching = setTimeout(async () => {
      const ids = [...stale];
      stale.clear();
      fetching = null;
      await Promise.all(ids.map(async (cell) => {
        try {
          put(await api('GET', `/v1/cells/${encodeURIComponent(cell)}`, undefined, { signal }));
        } catch (e) {
          if (e.status === 404 && cells.delete(cell)) order = order.filter((other) => other !== cell);
        }
      }));
      refresh();
    }, 100);
  }

  let previous = new Map();
  let polling = false;
  async function poll() {
    // One request at a time: a slow answer is not joined by the next.
    if (polling || document.visibilityState !== 'visible') return;
    polling = true;
    try {
      const now = performance.now();
      const stats = await api('GET', '/v1/stats', undefined, { signal });
      figures.clear();
      for (const s of stats) {
        const before = previous.get(s.id);
        if (before) s.rate = ((s.usage.exits - before.exits) * 1000) / Math.max(1, now - before.at);
        figures.set(s.id, s);
      }
      previous = new Map(stats.map((s) => [s.id, { exits: s.usage.exits, at: now }]));
      draw();
    } catch (e) {
      if (e.name !== 'AbortError') error.textContent = e.message;
    } finally {
      polling = false;
    }
  }

  (async () => {
    // Subscribed before the records are read, so that no change falls between them.
    const events = await attempt(error, () => open('/v1/events', signal));
    if (!events) return;
    const records = await attempt(error, () => api('GET', '/v1/cells', undefined, { signal }));
    if (!records) return;
    records.forEach(put);
    refresh();
    rows.focus({ preventScroll: true });
    poll();
    consumeJsonLines(events, (event) => {
      if (event.action === 'remove') {
        if (cells.delete(event.cell)) order = order.filter((id) => id !== event.cell);
        refresh();
      } else {
        const known = cells.get(event.cell);
        if (known) { known.state = event.state; draw(); }
        update(event.cell);
      }
    }).catch((e) => { if (e.name !== 'AbortError') error.textContent = e.message; });
  })();
  const timer = setInterval(poll, STATS_EVERY_MS);
  return () => clearInterval(timer);
}

/** A line chart of the last samples, drawn on a canvas. */
function chart(title, format) {
  const canvas = h('canvas', { width: '300', height: '90', role: 'img', 'aria-label': title });
  const value = h('span', { class: 'value' });
  const samples = [];
  const el = h('div', { class: 'chart panel' }, h('h3', {}, title, ' ', value), canvas);
  function draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 90;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.documentElement);
    ctx.strokeStyle = style.getPropertyValue('--line');
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    if (samples.length < 2) return;
    const top = (Math.max(...samples) || 1) * 1.25;
    ctx.strokeStyle = style.getPropertyValue('--accent');
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    // The newest sample at the right edge; at least a minute across.
    const span = Math.max(CHART_MIN_SPAN, samples.length) - 1;
    samples.forEach((sample, i) => {
      const x = width - ((samples.length - 1 - i) / span) * width;
      const y = height - 4 - (sample / top) * (height - 8);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  return {
    el,
    add(sample) {
      samples.push(sample);
      if (samples.length > CHART_SAMPLES) samples.shift();
      canvas.dataset.samples = String(samples.length);
      value.textContent = format(sample);
      draw();
    },
  };
}

/** One of a cell's output streams, followed, with a search that marks what it finds. */
function logPane(cellId, which, signal) {
  const pre = h('pre', { class: 'log', id: `log-${which}`, tabindex: '0', 'aria-label': `${which} of the cell` });
  let lines = [''];
  let offset = 0;
  let needle = '';
  let follow = true;
  let running = false;
  const decoder = new TextDecoder();

  function render() {
    const wanted = needle ? lines.filter((line) => line.includes(needle)) : lines;
    const nodes = [];
    for (const line of wanted) {
      if (needle) {
        let at = 0;
        let found;
        while ((found = line.indexOf(needle, at)) >= 0) {
          nodes.push(line.slice(at, found), h('mark', {}, needle));
          at = found + needle.length;
        }
        nodes.push(line.slice(at));
      } else {
        nodes.push(line);
      }
      nodes.push('\n');
    }
    nodes.pop();
    pre.replaceChildren(...nodes);
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  let scheduled = false;
  function changed() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; render(); });
  }

  async function read() {
    if (running) return;
    running = true;
    try {
      const response = await open(`/v1/cells/${encodeURIComponent(cellId)}/logs?stream=${which}&follow=true&from=${offset}`, signal);
      await consume(response, (chunk) => {
        offset += chunk.length;
        const text = decoder.decode(chunk, { stream: true });
        const parts = text.split('\n');
        lines[lines.length - 1] += parts[0];
        for (const part of parts.slice(1)) lines.push(part);
        if (lines.length > LOG_LINES_KEPT) lines = lines.slice(-LOG_LINES_KEPT);
        changed();
      });
    } catch (_) {
      // The pane shows what arrived; the cell page reports the cell's own errors.
    } finally {
      running = false;
    }
  }

  return {
    el: pre,
    /** Follows the stream again from where it stopped, as a cell starts again. */
    read,
    search(text) { needle = text; render(); },
    follow(on) { follow = on; if (on) pre.scrollTop = pre.scrollHeight; },
  };
}

// A cell: its configuration, what it is doing (graphs), its output and the actions
// its state allows.
function cellView(root, reference, signal) {
  let record = null;
  const error = h('p', { class: 'error', role: 'alert', id: 'action-error' });
  const note = h('p', { class: 'note', role: 'status', id: 'action-note' });
  const title = h('h1', {});
  const state = h('span', { id: 'cell-state' });
  const ident = h('span', { class: 'muted' });
  const actions = h('div', { class: 'actions' });
  const config = h('dl', { class: 'config' });
  const cpu = chart('CPU (ms/s)', (v) => v.toFixed(0));
  const memory = chart('Memory touched', (v) => bytes(v));
  const exits = chart('Exits/s', (v) => v.toFixed(1));
  const panes = {};
  let pane = 'stdout';
  const paneHolder = h('div');
  const tabs = h('div', { class: 'tabs', role: 'tablist' });
  const search = h('input', {
    type: 'search', placeholder: 'Search the output', 'aria-label': 'Search the output',
    oninput: () => Object.values(panes).forEach((p) => p.search(search.value)),
  });
  const follow = h('input', {
    type: 'checkbox', checked: true, id: 'follow',
    onchange: () => Object.values(panes).forEach((p) => p.follow(follow.checked)),
  });
  const stdinBox = h('textarea', { id: 'stdin-text', 'aria-label': 'Text for the cell\'s stdin', placeholder: 'Text for stdin' });
  const stdinError = h('span', { class: 'error', role: 'alert' });
  const stdin = h('div', { class: 'stdin', hidden: true },
    stdinBox,
    h('button', { id: 'stdin-send', onclick: () => send(false) }, 'Send'),
    h('button', { id: 'stdin-close', onclick: () => send(true) }, 'Send and close'),
    stdinError);

  root.append(
    h('p', {}, h('a', { href: '#/cells' }, '← Cells')),
    h('div', { class: 'cell-head' }, title, state, ident),
    actions, error, note,
    h('div', { class: 'charts' }, cpu.el, memory.el, exits.el),
    h('h2', {}, 'Output'),
    h('div', { class: 'toolbar' }, tabs, search, h('label', {}, follow, ' Follow')),
    paneHolder, stdin,
    h('h2', {}, 'Configuration'),
    h('div', { class: 'panel' }, config));

  for (const which of ['stdout', 'stderr']) {
    panes[which] = logPane(reference, which, signal);
    tabs.append(h('button', {
      role: 'tab', id: `tab-${which}`, 'aria-selected': String(which === pane),
      onclick: () => {
        pane = which;
        for (const tab of tabs.children) tab.setAttribute('aria-selected', String(tab.id === `tab-${which}`));
        paneHolder.replaceChildren(panes[which].el);
      },
    }, which));
  }
  paneHolder.replaceChildren(panes[pane].el);

  async function send(close) {
    const text = stdinBox.value;
    const done = await attempt(stdinError, () => api('POST',
      `/v1/cells/${encodeURIComponent(record.id)}/stdin${close ? '?close=true' : ''}`,
      new TextEncoder().encode(text.endsWith('\n') || !text ? text : `${text}\n`), { raw: true }));
    if (done !== undefined) stdinBox.value = '';
  }

  function act(label, run, options = {}) {
    return h('button', {
      class: options.danger ? 'danger' : undefined, id: `action-${label.toLowerCase()}`, disabled: !options.enabled,
      onclick: async () => {
        let answer = true;
        if (options.confirm) {
          answer = await ask(options.confirm, options.field);
          if (answer === null) return;
        }
        note.textContent = '';
        const result = await attempt(error, () => run(answer));
        if (result !== undefined) {
          if (options.done) note.textContent = options.done(answer, result);
          await load();
        }
      },
    }, label);
  }

  const path = (action) => `/v1/cells/${encodeURIComponent(record.id)}/${action}`;
  const snapshots = JSON.parse(sessionStorage.getItem('hypercell-snapshots') || '{}');

  function renderActions() {
    const s = record.state;
    const live = isLive(s);
    const lastSnapshot = snapshots[record.id];
    actions.replaceChildren(
      act('Start', () => api('PUT', path('start')), { enabled: !live && s !== 'migrated' }),
      act('Pause', () => api('PUT', path('pause')), { enabled: s === 'running' }),
      act('Resume', () => api('PUT', path('resume')), { enabled: s === 'paused' }),
      act('Snapshot', (file) => api('PUT', path('snapshot'), { path: file }).then((r) => {
        snapshots[record.id] = file;
        sessionStorage.setItem('hypercell-snapshots', JSON.stringify(snapshots));
        return r;
      }), {
        enabled: live,
        confirm: 'Write a checkpoint of this cell to a file on the daemon\'s host. The cell goes on.',
        field: { label: 'Path', value: `/tmp/${record.name}-${Date.now()}.snap` },
        done: (file) => `Snapshot written to ${file}.`,
      }),
      act('Restore', (name) => api('POST', '/v1/cells?start=true', { module: lastSnapshot, name }).then((cell) => {
        location.hash = `#/cells/${encodeURIComponent(cell.id)}`;
        return cell;
      }), {
        enabled: Boolean(lastSnapshot),
        confirm: `Start a new cell from the snapshot ${lastSnapshot || ''}.`,
        field: { label: 'Name of the new cell', value: `${record.name}-restored` },
      }),
      act('Migrate', (to) => api('PUT', path('migrate'), { to }), {
        enabled: live, danger: true,
        confirm: 'Move this cell, running, to another daemon that shares this one\'s migration secret.',
        field: { label: 'Migration address (host:port)', value: '' },
        done: (to) => `The cell moved to ${to}.`,
      }),
      act('Stop', (seconds) => {
        const grace = Number(seconds);
        if (!(grace >= 0)) throw new Error(`“${seconds}” is not a number of seconds.`);
        return api('PUT', `${path('stop')}?grace_ms=${Math.round(grace * 1000)}`);
      }, {
        enabled: live, danger: true,
        confirm: `Stop ${record.name}? Its stdin is closed, and it is killed if it has not ended within the grace period.`,
        field: { label: 'Grace period (seconds)', value: '10' },
      }),
      act('Kill', () => api('PUT', path('kill')), {
        enabled: live, danger: true, confirm: `Kill ${record.name} now?`,
      }),
      act('Delete', () => api('DELETE', `/v1/cells/${encodeURIComponent(record.id)}`).then(() => {
        location.hash = '#/cells';
        return true;
      }), {
        enabled: !live, danger: true, confirm: `Delete ${record.name} and its logs? This cannot be undone.`,
      }));
  }

  function renderConfig() {
    const spec = record.spec;
    const entries = [
      ['ID', record.id],
      ['Module', spec.module],
      ['Arguments', (spec.args || []).join(' ')],
      ['Environment', (spec.env || []).join('\n')],
      ['Directories', (spec.dirs || []).map((d) => `${d.host} as ${d.guest || d.host}${d.read_only ? ' (read-only)' : ''}`).join('\n')],
      ['Memory limit', spec.memory ? bytes(spec.memory) : 'default (4 GiB)'],
      ['Time limit', spec.timeout_ms ? duration(spec.timeout_ms) : 'none'],
      ['Output limit', spec.max_output ? bytes(spec.max_output) : 'none'],
      ['Components', spec.components ? spec.components.join(', ') : 'all'],
      ['Stdin', record.stdin_from ? joinedTo(record.stdin_from, 'stdout')
        : spec.stdin ? 'open, written through the API' : 'empty'],
      ['Stdout', record.stdout_to ? joinedTo(record.stdout_to, 'stdin') : ''],
      ['Channels', (record.named_channels || []).length === 0 ? ''
        : h('span', {}, ...record.named_channels.map((link) => h('div', {},
          `/channels/${link.name}, ${link.writes ? 'written here, read by ' : 'read here, written by '}`,
          h('a', { href: `#/cells/${encodeURIComponent(link.peer)}`, class: 'mono' }, link.peer))))],
      ['Restart', spec.restart || 'no'],
      ['Labels', Object.entries(spec.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')],
      ['Created', when(record.created_ms)],
      ['Started', when(record.started_ms)],
      ['Ended', when(record.finished_ms)],
      ['Exit status', record.exit_code ?? ''],
      ['Error', record.error || ''],
      ['Moved to', record.migrated_to || ''],
      ['Came from', record.migrated_from || ''],
    ];
    config.replaceChildren(...entries.filter(([, v]) => v !== '' && v !== undefined)
      .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v instanceof Node ? v : String(v))]));
  }

  // A channel's other end: a link to the cell at it.
  function joinedTo(id, stream) {
    return h('span', {}, 'joined by a channel to ',
      h('a', { href: `#/cells/${encodeURIComponent(id)}`, class: 'mono' }, id), `:${stream}`);
  }

  let wasLive = false;
  async function load() {
    const fresh = await attempt(error, () => api('GET', `/v1/cells/${encodeURIComponent(reference)}`, undefined, { signal }));
    if (!fresh) return;
    record = fresh;
    title.textContent = record.name;
    state.replaceChildren(stateBadge(record.parked_ms ? 'parked' : record.state));
    ident.textContent = record.id;
    stdin.hidden = !(record.spec.stdin && isLive(record.state));
    renderActions();
    renderConfig();
    const live = isLive(record.state);
    if (live && !wasLive) Object.values(panes).forEach((p) => p.read());
    wasLive = live;
  }

  let previous = null;
  async function sample() {
    if (!record || !isLive(record.state) || document.visibilityState !== 'visible') return;
    try {
      const s = await api('GET', `/v1/cells/${encodeURIComponent(record.id)}/stats`, undefined, { signal });
      const now = performance.now();
      if (previous) {
        const seconds = Math.max(0.001, (now - previous.at) / 1000);
        cpu.add(((s.usage.cpu_time_ms || 0) - (previous.cpu || 0)) / seconds);
        exits.add((s.usage.exits - previous.exits) / seconds);
      }
      memory.add(s.usage.memory_touched || 0);
      previous = { at: now, cpu: s.usage.cpu_time_ms, exits: s.usage.exits };
    } catch (_) {
      // The next sample tries again; the state line says when the cell ended.
    }
  }

  (async () => {
    // Subscribed before the record is read, so that no change falls between them.
    const events = await attempt(error, () => open('/v1/events', signal));
    await load();
    if (record) Object.values(panes).forEach((p) => p.read());
    if (!events) return;
    consumeJsonLines(events, (event) => {
      if (record && event.cell === record.id) {
        if (event.action === 'remove') location.hash = '#/cells';
        else load();
      }
    }).catch(() => {});
  })();
  const timer = setInterval(sample, SAMPLE_EVERY_MS);
  return () => clearInterval(timer);
}

// Creating a cell from a template, an uploaded module or a path on the daemon's host.
function createView(root, params) {
  const error = h('p', { class: 'error', role: 'alert', id: 'create-error' });
  const fieldErrors = {};
  const errorFor = (name) => (fieldErrors[name] = h('p', { class: 'error wide', role: 'alert', id: `error-${name}` }));
  const source = h('select', { id: 'source', name: 'source', onchange: sourceChanged },
    h('option', { value: 'template' }, 'A template'),
    h('option', { value: 'upload' }, 'An uploaded module'),
    h('option', { value: 'path' }, 'A module on the daemon\'s host'));
  const template = h('select', { id: 'template', name: 'template' });
  const upload = h('input', { type: 'file', id: 'upload', accept: '.wasm,.wat' });
  const modulePath = h('input', { type: 'text', id: 'module-path', placeholder: '/absolute/path/to/program.wasm' });
  const text = (id, placeholder) => h('input', { type: 'text', id, name: id, placeholder });
  const lines = (id, placeholder) => h('textarea', { id, name: id, placeholder });
  const name = text('name', 'made up when empty');
  const args = lines('args', 'one argument a line');
  const env = lines('env', 'NAME=VALUE, one a line');
  const dirs = lines('dirs', '/host/dir[:guest-name][:ro], one a line; only under the daemon\'s --allow-dir roots');
  const memory = text('memory', '64M, 1G (default 4G)');
  const timeout = text('timeout', '500ms, 10s, 2m (none by default)');
  const maxOutput = text('max-output', '10M (none by default)');
  const componentNames = ['stdio', 'args', 'env', 'clocks', 'random', 'fs'];
  const components = componentNames.map((c) => h('input', { type: 'checkbox', checked: true, id: `component-${c}`, value: c }));
  const stdinOpen = h('input', { type: 'checkbox', id: 'stdin-open' });
  const start = h('input', { type: 'checkbox', id: 'start', checked: true });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'create-submit' }, 'Create');
  const rows = {
    template: [h('label', { class: 'field', for: 'template' }, 'Template'), template],
    upload: [h('label', { class: 'field', for: 'upload' }, 'Module file'), upload],
    path: [h('label', { class: 'field', for: 'module-path' }, 'Module path'), modulePath],
  };
  const sourceRow = h('div', { class: 'contents' });
  function sourceChanged() { sourceRow.replaceChildren(...rows[source.value], errorFor('module')); }

  const form = h('form', { class: 'create', onsubmit: create },
    h('label', { class: 'field', for: 'source' }, 'Start from'), source,
    sourceRow,
    h('label', { class: 'field', for: 'name' }, 'Name'), name, errorFor('name'),
    h('label', { class: 'field', for: 'args' }, 'Arguments'), args, errorFor('args'),
    h('label', { class: 'field', for: 'env' }, 'Environment'), env, errorFor('env'),
    h('label', { class: 'field', for: 'dirs' }, 'Directories'), dirs, errorFor('dirs'),
    h('label', { class: 'field', for: 'memory' }, 'Memory limit'), memory, errorFor('memory'),
    h('label', { class: 'field', for: 'timeout' }, 'Time limit'), timeout, errorFor('timeout_ms'),
    h('label', { class: 'field', for: 'max-output' }, 'Output limit'), maxOutput, errorFor('max_output'),
    h('span', { class: 'field' }, 'Components'),
    h('fieldset', {}, componentNames.map((c, i) => h('label', {}, components[i], ` ${c}`))), errorFor('components'),
    h('span', { class: 'field' }, 'Options'),
    h('fieldset', {}, h('label', {}, stdinOpen, ' Keep stdin open for writing'), h('label', {}, start, ' Start it now')),
    h('span'), h('div', {}, submit, error));
  root.append(h('h1', {}, 'Create a cell'), form);
  sourceChanged();

  (async () => {
    const templates = await attempt(error, () => api('GET', '/v1/templates'));
    if (!templates) return;
    template.replaceChildren(...templates.map((t) => h('option', { value: t.name }, t.name)));
    if (!templates.length) {
      template.append(h('option', { value: '', disabled: true }, 'no templates yet'));
      source.value = 'upload';
      sourceChanged();
    }
    if (params.get('template')) {
      source.value = 'template';
      sourceChanged();
      template.value = params.get('template');
    }
  })();

  function show(field, message) {
    (fieldErrors[field] || error).textContent = message;
  }

  async function create(event) {
    event.preventDefault();
    for (const el of Object.values(fieldErrors)) el.textContent = '';
    error.textContent = '';
    const spec = {
      args: args.value.split('\n').filter((l) => l.length),
      env: env.value.split('\n').map((l) => l.trim()).filter(Boolean),
      dirs: dirs.value.split('\n').map((l) => l.trim()).filter(Boolean).map((line) => {
        const parts = line.split(':');
        const readOnly = parts.length > 1 && parts[parts.length - 1] === 'ro';
        if (readOnly) parts.pop();
        return { host: parts[0], guest: parts[1] || undefined, read_only: readOnly };
      }),
      stdin: stdinOpen.checked,
    };
    if (name.value.trim()) spec.name = name.value.trim();
    for (const [input, field, parse, key] of [
      [memory, 'memory', parseSize, 'memory'], [timeout, 'timeout_ms', parseDuration, 'timeout_ms'],
      [maxOutput, 'max_output', parseSize, 'max_output']]) {
      if (!input.value.trim()) continue;
      const value = parse(input.value);
      if (Number.isNaN(value)) {
        show(field, `“${input.value}” is not a ${field === 'timeout_ms' ? 'duration, such as 500ms or 10s' : 'size, such as 64M or 1G'}.`);
        input.focus();
        return;
      }
      spec[key] = value;
    }
    const given = components.filter((c) => c.checked).map((c) => c.value);
    if (given.length !== componentNames.length) spec.components = given;
    submit.disabled = true;
    try {
      if (source.value === 'template') {
        if (!template.value) { show('module', 'Choose a template, or start from a module.'); return; }
        spec.module = template.value;
      } else if (source.value === 'path') {
        spec.module = modulePath.value.trim();
      } else {
        const file = upload.files[0];
        if (!file) { show('module', 'Choose a module file to upload.'); return; }
        const stored = await api('POST', '/v1/modules', await file.arrayBuffer(), { raw: true });
        spec.module = stored.path;
      }
      const cell = await api('POST', `/v1/cells${start.checked ? '?start=true' : ''}`, spec);
      location.hash = `#/cells/${encodeURIComponent(cell.id)}`;
    } catch (e) {
      // The daemon's sentences name the field they are about, as `field`: ...
      const match = /^`([a-z_]+)`:/.exec(e.message);
      let field = match && fieldErrors[match[1]] ? match[1] : null;
      if (e.message.startsWith('a cell named')) field = 'name';
      if (e.message.startsWith('no template is named') || e.message.startsWith('the upload')) field = 'module';
      show(field || 'create', e.message);
    } finally {
      submit.disabled = false;
    }
  }
}

// Templates: the cells start from them.
function templatesView(root, signal) {
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody');
  root.append(
    h('div', { class: 'toolbar' }, h('h1', {}, 'Templates')),
    h('p', { class: 'muted' }, 'A template is a cell stopped at a chosen point; cells start from it in a fraction of a boot. Make them with ',
      h('code', {}, 'hypercell template create --name NAME MODULE'), ' or POST /v1/templates.'),
    error,
    h('table', { class: 'plain' },
      h('thead', {}, h('tr', {}, ['Name', 'Module', 'Stopped at', 'Size', 'Made', ''].map((t) => h('th', {}, t)))),
      body));
  async function load() {
    const templates = await attempt(error, () => api('GET', '/v1/templates', undefined, { signal }));
    if (!templates) return;
    body.replaceChildren(...templates.map((t) => h('tr', {},
      h('td', {}, t.name),
      h('td', { class: 'mono' }, t.spec.module),
      h('td', {}, t.spec.at || 'start'),
      h('td', {}, bytes(t.bytes)),
      h('td', {}, when(t.created_ms)),
      h('td', {},
        h('a', { href: `#/create?template=${encodeURIComponent(t.name)}` }, 'New cell'), ' ',
        h('button', {
          class: 'danger',
          onclick: async () => {
            if (!(await ask(`Delete the template ${t.name}? Cells running from it go on.`))) return;
            if (await attempt(error, () => api('DELETE', `/v1/templates/${encodeURIComponent(t.name)}`)) !== undefined) load();
          },
        }, 'Delete')))));
    if (!templates.length) body.append(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No templates yet.')));
  }
  load();
}

// Events: what happened to every cell, newest first, as it happens.
function eventsView(root, signal) {
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody', { id: 'events' });
  const filter = h('input', { type: 'search', placeholder: 'Filter by cell, action or state', 'aria-label': 'Filter events', oninput: () => draw() });
  let events = [];
  root.append(
    h('div', { class: 'toolbar' }, h('h1', {}, 'Events'), filter),
    error,
    h('table', { class: 'plain' },
      h('thead', {}, h('tr', {}, ['#', 'When', 'Cell', 'Action', 'State'].map((t) => h('th', {}, t)))),
      body));
  let scheduled = false;
  function draw() {
    const needle = filter.value.trim().toLowerCase();
    const shown = events.filter((e) => !needle || `${e.name} ${e.cell} ${e.action} ${e.state}`.toLowerCase().includes(needle));
    body.replaceChildren(...shown.slice(-200).reverse().map((e) => h('tr', {},
      h('td', { class: 'muted' }, e.seq),
      h('td', {}, when(e.time_ms)),
      h('td', {}, h('a', { href: `#/cells/${encodeURIComponent(e.cell)}` }, e.name)),
      h('td', {}, e.action),
      h('td', {}, stateBadge(e.state)))));
  }
  streamJsonLines('/v1/events?since=0', signal, (event) => {
    events.push(event);
    if (events.length > EVENTS_KEPT) events = events.slice(-EVENTS_KEPT);
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(() => { scheduled = false; draw(); });
    }
  }).catch((e) => { if (e.name !== 'AbortError') error.textContent = e.message; });
}

// ---- Start ---------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  route();
  api('GET', '/v1/ping').then((v) => {
    document.getElementById('daemon').textContent = `hypercelld ${v.version} at ${location.host}`;
  }).catch(() => {});
});
