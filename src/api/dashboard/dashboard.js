// Tandem's operator dashboard. Plain script, no dependencies: it is served as is by the daemon.
//
// Every value from the API reaches the page through textContent or an attribute, never as
// markup: record fields and vendor messages are written by other people.
'use strict';

(() => {
  const TOKEN_KEY = 'tandem.admin-token';
  const REFRESH_MS = 5000;
  const DL_PAGE = 25;
  const RECORD_PAGE = 20;

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    refreshing: false,
    // A refresh asked for while one runs (after a replay, say) runs once that one ends.
    again: false,
    // The last answer drawn per section: an unchanged answer is not drawn again, so a refresh
    // does not take the focus or a text selection away from the operator.
    drawn: {},
    deadLetters: { items: [], next: null, shown: DL_PAGE },
    expanded: new Map(),
    record: null,
  };

  const $ = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'onclick') node.addEventListener('click', value);
      else if (name === 'class') node.className = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node, ...children) {
    node.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // Relative to the page, so a dashboard behind a path prefix still reaches its own daemon.
  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch('api/v1' + path, {
        method: options.method || 'GET',
        headers: state.token
          ? { Authorization: 'Bearer ' + state.token, Accept: 'application/json' }
          : { Accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (error) {
      throw new ApiError(0, 'unreachable', 'cannot reach the daemon (' + error.message + ')');
    }
    if (response.status === 204) return null;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.code || 'http_' + response.status,
        error.message || 'the daemon answered HTTP ' + response.status);
    }
    return body;
  }

  // An error a section cannot handle itself: the token, or the admin API as a whole.
  function sessionError(error) {
    if (error.status === 401) {
      forgetToken(state.token ? 'The daemon refused that token. Enter the admin token again.' : '');
      return true;
    }
    if (error.status === 503 && error.code === 'admin_disabled') {
      showOnly('disabled');
      $('disabled-detail').textContent = error.message;
      return true;
    }
    return false;
  }

  function showOnly(which) {
    $('login').hidden = which !== 'login';
    $('disabled').hidden = which !== 'disabled';
    $('main').hidden = which !== 'main';
    $('session-actions').hidden = which !== 'main';
  }

  function notice(text, kind) {
    const node = $('notice');
    node.textContent = text;
    node.className = 'notice ' + (kind || 'info');
    node.hidden = !text;
  }

  function forgetToken(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    state.drawn = {};
    state.expanded.clear();
    state.record = null;
    for (const id of ['flows', 'connectors', 'dead-letters', 'record']) clear($(id));
    $('record-more').hidden = true;
    $('dl-more').hidden = true;
    $('updated').textContent = '';
    notice('');
    $('login-error').textContent = message || '';
    showOnly('login');
    $('token').value = '';
    $('token').focus();
  }

  // ---- formatting ----

  const pad = (n) => String(n).padStart(2, '0');

  function time(value) {
    if (value === null || value === undefined || value === '') return '—';
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function timeCell(value) {
    if (value === null || value === undefined || value === '') return '—';
    const date = new Date(value);
    const iso = Number.isNaN(date.getTime()) ? null : date.toISOString();
    return el('time', { datetime: iso, title: iso }, time(value));
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    if (seconds < 10) return seconds.toFixed(1) + ' s';
    if (seconds < 120) return Math.round(seconds) + ' s';
    if (seconds < 7200) return Math.floor(seconds / 60) + ' min ' + Math.round(seconds % 60) + ' s';
    return Math.floor(seconds / 3600) + ' h ' + Math.round((seconds % 3600) / 60) + ' min';
  }

  // The API's words (`half_open`, `in_flight`) become the badge's class, and read as words.
  function badge(text, kind) {
    const word = String(text);
    return el('span', { class: 'badge ' + (kind || word.replace(/[^a-z_]/gi, '')) },
      word.replace(/_/g, ' '));
  }

  function mode(value) {
    if (typeof value === 'string') return value;
    const scheduled = value && value.scheduled;
    if (scheduled && scheduled.every) return 'scheduled, every ' + scheduled.every;
    if (scheduled && scheduled.cron) return 'scheduled, cron ' + scheduled.cron;
    return JSON.stringify(value);
  }

  function counts(object) {
    const parts = Object.entries(object || {}).filter(([, n]) => n);
    if (!parts.length) return el('span', { class: 'muted' }, 'none yet');
    return el('span', {}, parts.map(([name, n]) => `${name} ${n}`).join(' · '));
  }

  function table(caption, headers, rows) {
    return el('table', {},
      el('caption', { class: 'visually-hidden' }, caption),
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows));
  }

  function empty(text) {
    return el('p', { class: 'muted empty' }, text);
  }

  // Draw a section only when its answer changed since it was last drawn.
  function changed(section, data) {
    const text = JSON.stringify(data);
    if (state.drawn[section] === text) return false;
    state.drawn[section] = text;
    return true;
  }

  // ---- flows ----

  function side(s) {
    if (!s) return '—';
    return el('div', { class: 'side' },
      el('div', {}, el('strong', {}, s.connector), ' ', s.object),
      el('div', { class: 'small' },
        `pending ${s.pending} · in flight ${s.in_flight} · lag ${duration(s.oldest_pending_age_seconds)}`),
      s.breaker ? el('div', { class: 'small' }, 'breaker ', badge(s.breaker)) : null);
  }

  function lastRun(run) {
    if (!run || typeof run !== 'object') return el('span', { class: 'muted' }, '—');
    const took = run.started_at && run.ended_at
      ? ' · took ' + duration((run.ended_at - run.started_at) / 1000) : '';
    return el('div', { class: 'small' },
      el('div', {}, badge(run.status || 'unknown'), run.id === undefined ? '' : ` run #${run.id}`),
      el('div', {}, timeCell(run.started_at), took),
      el('div', {}, ['seen', 'written', 'skipped', 'failed', 'api_calls']
        .map((k) => `${k.replace('_', ' ')} ${run[k] ?? 0}`).join(' · ')),
      run.error ? el('div', { class: 'error' }, json(run.error)) : null);
  }

  function drawFlows(flows) {
    // Rebuilt only when the names change, so an open select stays open through a refresh.
    if (changed('flow-names', flows.map((f) => f.name))) {
      const select = $('dl-flow');
      const chosen = select.value;
      clear(select, el('option', { value: '' }, 'all flows'),
        ...flows.map((f) => el('option', { value: f.name }, f.name)));
      select.value = flows.some((f) => f.name === chosen) ? chosen : '';
    }
    if (!changed('flows', flows)) return;
    if (!flows.length) {
      clear($('flows'), empty('No flows are configured.'));
      return;
    }
    const rows = flows.map((f) => el('tr', { 'data-flow': f.name },
      el('th', { scope: 'row' }, f.name),
      el('td', {}, mode(f.mode), el('div', { class: 'small muted' }, f.direction)),
      el('td', {}, side(f.sides && f.sides.left)),
      el('td', {}, side(f.sides && f.sides.right)),
      el('td', { class: 'num' }, f.open_dead_letters
        ? badge(String(f.open_dead_letters), 'open') : '0'),
      el('td', { class: 'small' }, counts(f.outcomes_since_start)),
      el('td', {}, lastRun(f.last_run),
        f.mode && f.mode.scheduled
          ? el('button', {
            type: 'button', class: 'small', 'data-action': 'run',
            title: 'Start a run of this scheduled flow now',
            onclick: () => runNow(f.name),
          }, 'Run now')
          : null)));
    clear($('flows'), table('Flows',
      ['Flow', 'Mode', 'Left', 'Right', 'Open dead letters', 'Outcomes since start', 'Last run'],
      rows));
  }

  // ---- connectors ----

  function drawConnectors(connectors) {
    if (changed('connector-names', connectors.map((c) => c.name))) {
      clear($('connector-names'), ...connectors.map((c) => el('option', { value: c.name })));
    }
    if (!changed('connectors', connectors)) return;
    if (!connectors.length) {
      clear($('connectors'), empty('No connectors are configured.'));
      return;
    }
    const rows = connectors.map((c) => {
      const q = c.quota || {};
      const vendor = [];
      if (q.vendor_max !== null && q.vendor_max !== undefined) {
        vendor.push(`daily ${q.vendor_used ?? '?'} / ${q.vendor_max}`);
      }
      if (q.vendor_window_limit !== null && q.vendor_window_limit !== undefined) {
        vendor.push(`window ${q.vendor_window_remaining ?? '?'} left of ${q.vendor_window_limit}`);
      }
      const paused = c.paused_for_seconds;
      return el('tr', { 'data-connector': c.name },
        el('th', { scope: 'row' }, c.name),
        el('td', {}, c.kind),
        el('td', { class: 'small' }, [
          `${c.requests_per_second}/s`,
          // No burst configured means the rate itself, rounded up.
          c.burst === null || c.burst === undefined ? null : `burst ${c.burst}`,
          `${c.max_concurrency} at once`,
        ].filter(Boolean).join(', ')),
        el('td', { class: 'num' }, String(q.used ?? '—')),
        el('td', { class: 'num' }, q.budget === null || q.budget === undefined
          ? 'no budget' : `${q.remaining} of ${q.budget}`),
        el('td', { class: 'small' }, vendor.length ? vendor.join(' · ') : '—'),
        el('td', {}, badge(c.breaker)),
        el('td', {}, paused ? badge('paused ' + duration(paused), 'open') : 'no'));
    });
    clear($('connectors'), table('Connectors',
      ['Connector', 'Kind', 'Rate', 'Used today', 'Left today', 'Vendor figures', 'Breaker', 'Paused'],
      rows));
  }

  // ---- dead letters ----

  function dlQuery(limit, cursor) {
    const params = new URLSearchParams({ status: $('dl-status').value, limit: String(limit) });
    if ($('dl-flow').value) params.set('flow', $('dl-flow').value);
    if (cursor) params.set('cursor', cursor);
    return '/dead-letters?' + params.toString();
  }

  async function loadDeadLetters() {
    // As many as are shown, so that a refresh keeps the older pages the operator opened.
    const page = await api(dlQuery(Math.min(state.deadLetters.shown, 500)));
    state.deadLetters.items = page.items;
    state.deadLetters.next = page.next_cursor;
    drawDeadLetters();
  }

  async function moreDeadLetters() {
    try {
      const page = await api(dlQuery(DL_PAGE, state.deadLetters.next));
      state.deadLetters.items = state.deadLetters.items.concat(page.items);
      state.deadLetters.next = page.next_cursor;
      state.deadLetters.shown = state.deadLetters.items.length;
      drawDeadLetters();
    } catch (error) {
      if (!sessionError(error)) $('dl-error').textContent = error.message;
    }
  }

  function drawDeadLetters() {
    const { items, next } = state.deadLetters;
    $('dl-more').hidden = !next;
    $('dl-paused').hidden = state.expanded.size === 0;
    if (!changed('dead-letters', [items, [...state.expanded]])) return;
    if (!items.length) {
      const status = $('dl-status').value;
      clear($('dead-letters'), empty(status === 'any' ? 'No dead letters.' : `No ${status} dead letters.`));
      return;
    }
    const rows = [];
    for (const d of items) {
      const open = d.status === 'open';
      const expanded = state.expanded.has(d.id);
      rows.push(el('tr', { id: 'dl-' + d.id, 'data-dead-letter': d.id, 'data-status': d.status },
        el('th', { scope: 'row', class: 'num' }, '#' + d.id),
        el('td', {}, d.flow),
        el('td', { class: 'record' },
          el('button', {
            type: 'button', class: 'link', title: 'Look up this record',
            onclick: () => lookup(d.source_connector, d.object, d.record_id),
          }, `${d.source_connector} ${d.object} ${d.record_id}`)),
        el('td', { class: 'operation' }, d.operation,
          el('div', { class: 'small muted' }, 'on ' + d.connector)),
        el('td', { class: 'num' }, d.http_status ?? '—'),
        el('td', { class: 'vendor' },
          d.vendor_code ? el('code', {}, d.vendor_code) : null,
          d.vendor_code && d.vendor_message ? ' ' : null,
          d.vendor_message || (d.vendor_code ? null : '—')),
        el('td', {}, timeCell(d.first_failed_at)),
        el('td', { class: 'num' }, d.attempts),
        el('td', {}, badge(d.status)),
        el('td', { class: 'actions' },
          el('button', {
            type: 'button', 'aria-expanded': expanded ? 'true' : 'false',
            'aria-controls': 'dl-payload-' + d.id, 'data-action': 'payload',
            onclick: () => togglePayload(d.id),
          }, expanded ? 'Hide payload' : 'Payload'),
          open ? el('button', {
            type: 'button', class: 'primary', 'data-action': 'replay',
            'aria-label': `Replay dead letter ${d.id}`, onclick: () => replay(d.id),
          }, 'Replay') : null,
          open ? el('button', {
            type: 'button', class: 'danger', 'data-action': 'discard',
            'aria-label': `Discard dead letter ${d.id}`, onclick: () => discard(d.id),
          }, 'Discard') : null)));
      if (expanded) {
        rows.push(el('tr', { class: 'payload-row', id: 'dl-payload-' + d.id },
          el('td', { colspan: 10 }, payload(state.expanded.get(d.id)))));
      }
    }
    clear($('dead-letters'), table('Dead letters',
      ['Id', 'Flow', 'Record', 'Operation', 'HTTP', 'Vendor error', 'First failed', 'Attempts',
        'Status', 'Actions'], rows));
  }

  function payload(detail) {
    if (!detail) return el('p', { class: 'muted' }, 'Loading…');
    if (detail.error) return el('p', { class: 'error' }, detail.error);
    return el('div', { class: 'payload' },
      el('div', {},
        el('h3', {}, `Payload refused by ${detail.connector} (${detail.operation})`),
        el('pre', {}, JSON.stringify(detail.payload, null, 2))),
      el('div', {},
        el('h3', {}, `Change #${detail.change_id}: ${detail.op} from ${detail.origin}`),
        el('pre', {}, JSON.stringify(detail.snapshot, null, 2)),
        detail.last_failed_at ? el('p', { class: 'small muted' },
          'last failed ', timeCell(detail.last_failed_at)) : null));
  }

  async function togglePayload(id) {
    if (state.expanded.has(id)) {
      state.expanded.delete(id);
      drawDeadLetters();
      return;
    }
    state.expanded.set(id, null);
    drawDeadLetters();
    let detail;
    try {
      detail = await api('/dead-letters/' + id);
    } catch (error) {
      if (sessionError(error)) return;
      detail = { error: error.message };
    }
    if (state.expanded.has(id)) {
      state.expanded.set(id, detail);
      drawDeadLetters();
    }
  }

  async function replay(id) {
    try {
      const result = await api(`/dead-letters/${id}/replay`, { method: 'POST' });
      notice(`Dead letter #${id} replayed: the record goes through the flow again as change ` +
        `#${result.change_id}.`, 'ok');
    } catch (error) {
      if (sessionError(error)) return;
      notice(`Dead letter #${id} was not replayed: ${error.message}`, 'bad');
    }
    state.expanded.delete(id);
    await refresh();
  }

  async function runNow(flow) {
    try {
      const result = await api(`/flows/${encodeURIComponent(flow)}/run`, { method: 'POST' });
      notice(`Run #${result.run ? result.run.id : '?'} of ${flow} started.`, 'ok');
    } catch (error) {
      if (sessionError(error)) return;
      notice(`No run of ${flow} started: ${error.message}`, 'bad');
    }
    await refresh();
  }

  async function discard(id) {
    if (!window.confirm(`Discard dead letter #${id}? Its change will not be written.`)) return;
    try {
      await api('/dead-letters/' + id, { method: 'DELETE' });
      notice(`Dead letter #${id} discarded.`, 'ok');
    } catch (error) {
      if (sessionError(error)) return;
      notice(`Dead letter #${id} was not discarded: ${error.message}`, 'bad');
    }
    state.expanded.delete(id);
    await refresh();
  }

  function resetDeadLetters() {
    state.deadLetters = { items: [], next: null, shown: DL_PAGE };
    state.expanded.clear();
    // Only the list changed its filter: reload it alone.
    section(loadDeadLetters, 'dl-error');
  }

  // ---- record lookup ----

  function lookup(connector, object, id) {
    $('record-connector').value = connector;
    $('record-object').value = object;
    $('record-id').value = id;
    loadRecord(false);
    $('record-title').scrollIntoView({ block: 'start' });
  }

  async function loadRecord(older) {
    const form = older ? state.record.form : {
      connector: $('record-connector').value.trim(),
      object: $('record-object').value.trim(),
      id: $('record-id').value.trim(),
    };
    const params = new URLSearchParams({ limit: String(RECORD_PAGE) });
    if (older) params.set('cursor', state.record.next);
    const path = '/records/' + [form.connector, form.object, form.id]
      .map(encodeURIComponent).join('/');
    $('record-error').textContent = '';
    try {
      const answer = await api(path + '?' + params.toString());
      const history = older ? state.record.history.concat(answer.history) : answer.history;
      state.record = { form, answer, history, next: answer.next_cursor };
      drawRecord();
    } catch (error) {
      if (sessionError(error)) return;
      $('record-error').textContent = error.message;
      if (!older) {
        state.record = null;
        clear($('record'));
        $('record-more').hidden = true;
      }
    }
  }

  function drawRecord() {
    const { answer, history, next } = state.record;
    $('record-more').hidden = !next;
    const heading = el('h3', {}, `${answer.connector} ${answer.object} ${answer.id}`);
    const links = answer.links.length
      ? el('ul', { class: 'links' }, answer.links.map((l) => el('li', {},
        el('strong', {}, l.flow), ` (${l.side} side) ↔ `,
        el('button', {
          type: 'button', class: 'link', title: 'Look up the counterpart',
          onclick: () => lookup(l.counterpart.connector, l.counterpart.object, l.counterpart.id),
        }, `${l.counterpart.connector} ${l.counterpart.object} ${l.counterpart.id}`),
        l.synced.length ? el('details', {},
          el('summary', {}, `values last synced (${l.synced.length} fields)`),
          table(`Values last synced in flow ${l.flow}`,
            ['Left field', 'Left value', 'Right field', 'Right value'],
            l.synced.map((s) => el('tr', {},
              el('td', {}, s.left_field ?? '—'), el('td', {}, json(s.left)),
              el('td', {}, s.right_field ?? '—'), el('td', {}, json(s.right)))))) : null)))
      : empty('Not linked in any flow.');
    const rows = history.map((h) => el('tr', { 'data-change': h.change_id },
      el('th', { scope: 'row', class: 'num' }, '#' + h.change_id),
      el('td', {}, timeCell(h.received_at)),
      el('td', {}, h.op, el('div', { class: 'small muted' }, h.origin)),
      el('td', {}, badge(h.status)),
      el('td', {}, h.outcome ? badge(h.outcome) : '—'),
      el('td', { class: 'detail' }, h.detail === null || h.detail === undefined
        ? '—' : el('code', {}, JSON.stringify(h.detail))),
      el('td', { class: 'num' }, h.attempts),
      el('td', {}, h.last_error || '—'),
      el('td', {}, h.dead_letter
        ? el('span', {}, '#' + h.dead_letter.id + ' ', badge(h.dead_letter.status)) : '—')));
    clear($('record'), heading, el('h4', {}, 'Links'), links, el('h4', {}, 'History, newest first'),
      rows.length ? el('div', { class: 'scroll' }, table('History',
        ['Change', 'Received', 'Op, origin', 'Status', 'Outcome', 'Detail', 'Attempts', 'Last error',
          'Dead letter'], rows)) : empty('No changes recorded.'));
  }

  function json(value) {
    if (value === null || value === undefined) return '—';
    return typeof value === 'string' ? value : JSON.stringify(value);
  }

  // ---- refresh ----

  // Load one section, showing its error beside it; false when the session ended (the page
  // has gone back to the token form).
  async function section(load, errorId) {
    try {
      await load();
      $(errorId).textContent = '';
      return true;
    } catch (error) {
      if (sessionError(error)) return false;
      $(errorId).textContent = error.message;
      return true;
    }
  }

  // Redraw the page: flows, connectors and, unless `deadLetters` is false (a payload the
  // operator is reading stays open), the dead-letter list. A refresh asked for while one runs
  // is done right after it, the fuller of the two asks winning.
  async function refresh(deadLetters = true) {
    if (!state.token) return;
    if (state.refreshing) {
      state.again = state.again === 'all' || deadLetters ? 'all' : 'summaries';
      return;
    }
    state.refreshing = true;
    try {
      // Flows first: it proves the token before the other calls repeat the same refusal.
      if (!(await section(async () => drawFlows((await api('/flows')).flows), 'flows-error'))) return;
      showOnly('main');
      if (!(await section(async () => drawConnectors((await api('/connectors')).connectors),
        'connectors-error'))) return;
      if (deadLetters && !(await section(loadDeadLetters, 'dl-error'))) return;
      $('updated').textContent = 'Updated ' + time(Date.now()) + ', every 5 s';
    } finally {
      state.refreshing = false;
    }
    if (state.again) {
      const all = state.again === 'all';
      state.again = false;
      await refresh(all);
    }
  }

  function tick() {
    if (document.hidden || !state.token) return;
    // Redrawing the list would close an open payload the operator is reading.
    refresh(state.expanded.size === 0);
  }

  // Without a token the admin API still tells a disabled API (503) from a missing token (401),
  // so an operator is not asked for a token the daemon does not have.
  async function probe() {
    try {
      await api('/flows');
      forgetToken('');
    } catch (error) {
      if (!sessionError(error)) forgetToken(error.message);
    }
  }

  function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      $('login-error').textContent = '';
      refresh();
    });
    $('forget').addEventListener('click', () => forgetToken(''));
    $('refresh').addEventListener('click', () => refresh());
    $('dl-status').addEventListener('change', resetDeadLetters);
    $('dl-flow').addEventListener('change', resetDeadLetters);
    $('dl-filter').addEventListener('submit', (event) => event.preventDefault());
    $('dl-more').addEventListener('click', moreDeadLetters);
    $('record-form').addEventListener('submit', (event) => {
      event.preventDefault();
      loadRecord(false);
    });
    $('record-more').addEventListener('click', () => loadRecord(true));
    if (state.token) refresh();
    else probe();
    setInterval(tick, REFRESH_MS);
  }

  start();
})();
