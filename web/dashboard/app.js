// kvfabric's dashboard script: plain browser JavaScript, no build step. It reads the frontend's feed
// (GET dashboard/events: a snapshot every second and an event per finished request), renders it, and runs a chat
// through the OpenAI endpoint (POST v1/chat/completions with stream: true). Both streams are read with fetch and
// a ReadableStream rather than EventSource, so that the optional API key can go along as a header. Whatever the
// server sends enters the page as textContent only, never as markup.
'use strict';

/** Snapshots come every second: this long without an event means the feed is gone, and it is opened again. */
const FEED_STALL_MS = 5000;
const RECONNECT_MS = 2000;
/** The longest a chat answer may take before the page gives up on it. */
const CHAT_TIMEOUT_MS = 120_000;
const KEEP_RECENT = 20;

const $ = (id) => document.getElementById(id);
const state = { model: null, recent: [], recentKey: '', history: [], chat: null };

// ---- formatting ----

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}
const ms = (v) => (v === null || v === undefined ? '–' : v < 10 ? `${v.toFixed(2)} ms` : `${Math.round(v)} ms`);
const pcts = (p) => (p.samples === 0 ? '–' : `${ms(p.p50)} · ${ms(p.p90)} · ${ms(p.p99)}`);

/** An element with text content and attributes (data-* included). */
function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  return e;
}
function row(cells, attrs) {
  const tr = el('tr', null, attrs);
  for (const c of cells) tr.append(c instanceof Node ? c : el('td', c));
  return tr;
}

// ---- server-sent events over fetch ----

/** Reads an SSE response, calling onEvent(name, data) per event; resolves when the stream ends. */
async function readSse(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length > 0) onEvent(name, data.join('\n'));
      }
    }
  } catch (err) {
    // Closes the connection too: the reader stops here, whatever stopped it (an error event, an abort).
    await reader.cancel(err).catch(() => {});
    throw err;
  }
}

function authHeaders(extra) {
  const key = $('chat-key').value.trim();
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

// ---- the feed ----

function setFeed(status, why) {
  const f = $('feed-status');
  f.dataset.state = status;
  f.textContent = status === 'live' ? 'live' : status === 'down' ? `feed down (${why}); retrying` : 'connecting…';
}

/** Keeps the feed open for as long as the page is: reconnects after an error, an end or a stall. */
async function followFeed() {
  for (;;) {
    const abort = new AbortController();
    let watchdog;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => abort.abort(new Error(`no event for ${FEED_STALL_MS / 1000} s`)), FEED_STALL_MS);
    };
    try {
      setFeed('connecting');
      arm();
      const res = await fetch('dashboard/events', { headers: authHeaders({ accept: 'text/event-stream' }), signal: abort.signal, cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setFeed('live');
      await readSse(res, (name, data) => {
        arm();
        if (name === 'snapshot') render(JSON.parse(data));
        else if (name === 'request') addRequest(JSON.parse(data));
      });
      throw new Error('the server ended it');
    } catch (err) {
      setFeed('down', abort.signal.aborted ? abort.signal.reason.message : err.message);
    } finally {
      clearTimeout(watchdog);
      abort.abort();
    }
    await new Promise((r) => setTimeout(r, RECONNECT_MS));
  }
}

// ---- rendering ----

function render(s) {
  state.model = s.model;
  if (!state.chat) $('chat-send').disabled = false;
  $('model').textContent = s.model;
  $('mode').textContent = `mode: ${s.mode}`;
  $('model-warning').hidden = !s.model_warning;
  $('model-warning').textContent = s.model_warning ?? '';
  const st = s.stats;
  $('window').textContent = `last ${Math.round(st.window_s)} s`;
  $('stat-rps').textContent = st.requests_per_s.toFixed(2);
  $('stat-tps').textContent = st.output_tokens_per_s.toFixed(1);
  $('stat-inflight').textContent = `${s.inflight} / ${s.max_inflight}`;
  $('stat-ttft').textContent = pcts(st.ttft_ms);
  $('stat-itl').textContent = pcts(st.itl_ms);
  $('stat-totals').textContent = `${st.totals.requests} · ${st.totals.errors}`;
  renderKv(st.kv_bytes);
  renderWorkers(s.workers);
  state.recent = s.recent;
  renderRecent();
}

function renderKv(kv) {
  $('kv-total').textContent = bytes(kv.total);
  $('kv-total').dataset.bytes = kv.total;
  $('kv-transfers').textContent = kv.transfers;
  const body = $('kv-paths').tBodies[0];
  body.replaceChildren(
    ...Object.entries(kv.by_path)
      .sort((a, b) => b[1] - a[1])
      .map(([path, n]) => {
        const share = el('td');
        share.append(el('progress', null, { max: kv.total, value: n }));
        return row([path, bytes(n), share], { 'data-path': path, 'data-bytes': n });
      }),
  );
  if (body.rows.length === 0) body.append(row([el('td', 'nothing moved yet', { colspan: 3 })]));
}

function renderWorkers(workers) {
  const body = $('workers').tBodies[0];
  const order = { prefill: 0, decode: 1 };
  body.replaceChildren(
    ...[...workers]
      .sort((a, b) => order[a.role] - order[b.role] || String(a.id).localeCompare(String(b.id)))
      .map((w) => {
        const pool = el('td');
        if (w.total_blocks !== null) {
          const used = w.total_blocks - w.free_blocks;
          pool.append(el('progress', null, { max: w.total_blocks, value: used }), ` ${used} / ${w.total_blocks}`);
        } else pool.textContent = '–';
        return row(
          [
            w.id ?? '(not reached yet)',
            w.role,
            w.provider ?? '–',
            el('td', w.healthy ? 'healthy' : 'unhealthy', { class: w.healthy ? 'healthy' : 'unhealthy' }),
            pool,
            w.inflight ?? '–',
            w.streams ?? '–',
            w.queued_tokens ?? '–',
            el('td', w.last_error ?? '', { class: 'error' }),
          ],
          { 'data-id': w.id, 'data-role': w.role, 'data-healthy': w.healthy },
        );
      }),
  );
  if (body.rows.length === 0) body.append(row([el('td', 'no worker known yet', { colspan: 9 })]));
}

/** A request that just finished, ahead of the next snapshot. */
function addRequest(r) {
  state.recent = [r, ...state.recent.filter((x) => x.id !== r.id)].slice(0, KEEP_RECENT);
  renderRecent();
}

function renderRecent() {
  // Rebuilt only when the list changed, so that an open report stays open across snapshots.
  const key = state.recent.map((r) => r.id).join();
  if (key === state.recentKey) return;
  state.recentKey = key;
  const body = $('recent').tBodies[0];
  body.replaceChildren(
    ...state.recent.map((r) => {
      const p = r.kvfabric;
      const report = el('td');
      const details = el('details');
      details.append(el('summary', 'json'), el('pre', JSON.stringify(p ?? { error: r.error }, null, 2)));
      report.append(details);
      return row(
        [
          new Date(r.finished_at).toLocaleTimeString(),
          el('td', `${r.kind}${r.stream ? ' (stream)' : ''}`, { title: r.id }),
          `${r.prompt_tokens} · ${r.completion_tokens}`,
          ms(r.ttft_ms),
          ms(r.duration_ms),
          r.error ? el('td', r.error, { class: 'error' }) : (p?.mode ?? '–'),
          p?.path ?? '–',
          p ? `${p.provider} · ${p.op ?? '–'}` : '–',
          p ? bytes(p.bytes) : '–',
          p?.op ? ms(p.transfer_ms) : '–',
          p ? `${p.prefill_worker ?? '(local)'} → ${p.decode_worker}` : '–',
          report,
        ],
        { 'data-id': r.id, 'data-path': p?.path, 'data-bytes': p?.bytes, 'data-error': r.error },
      );
    }),
  );
  if (body.rows.length === 0) body.append(row([el('td', 'no request yet', { colspan: 12 })]));
}

// ---- chat ----

function appendMessage(role, text) {
  const m = el('div', null, { class: `message ${role}`, 'data-state': role === 'assistant' ? 'streaming' : 'done' });
  const t = el('span', text, { class: 'text' });
  m.append(t);
  $('chat-log').append(m);
  $('chat-log').scrollTop = $('chat-log').scrollHeight;
  return { m, t };
}

async function sendChat(text) {
  const user = { role: 'user', content: text };
  appendMessage('user', text);
  const { m, t } = appendMessage('assistant', '');
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`no complete answer within ${CHAT_TIMEOUT_MS / 1000} s`)), CHAT_TIMEOUT_MS);
  state.chat = abort;
  $('chat-send').disabled = true;
  $('chat-stop').disabled = false;
  let answer = '';
  let chunks = 0;
  try {
    const res = await fetch('v1/chat/completions', {
      method: 'POST',
      headers: authHeaders({ 'content-type': 'application/json' }),
      body: JSON.stringify({
        model: state.model,
        messages: [...state.history, user],
        stream: true,
        max_tokens: Number($('chat-max-tokens').value) || 64,
        temperature: Number($('chat-temperature').value) || 0,
      }),
      signal: abort.signal,
    });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
    }
    await readSse(res, (_name, data) => {
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`${chunk.error.code}: ${chunk.error.message}`);
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) {
        answer += piece;
        t.textContent = answer;
        m.dataset.chunks = ++chunks;
      }
      if (chunk.kvfabric) showProof(m, chunk.kvfabric);
    });
    m.dataset.state = 'done';
    if (answer === '') t.textContent = '(empty answer)';
    state.history.push(user, { role: 'assistant', content: answer });
  } catch (err) {
    m.dataset.state = 'error';
    const why = abort.signal.aborted ? (abort.signal.reason?.message ?? 'stopped') : err.message;
    t.textContent = answer ? `${answer}\n[${why}]` : `[${why}]`;
  } finally {
    clearTimeout(timer);
    state.chat = null;
    $('chat-send').disabled = false;
    $('chat-stop').disabled = true;
  }
}

/** The answer's kvfabric report in one line under it: what carried how many KV bytes, between which workers. */
function showProof(m, p) {
  const line =
    p.bytes > 0
      ? `KV ${bytes(p.bytes)} over ${p.path} (${p.provider}, ${p.op}) in ${ms(p.transfer_ms)}, ${p.prefill_worker} → ${p.decode_worker}`
      : `no KV moved (mode ${p.mode}${p.fallback_reason ? `: ${p.fallback_reason}` : ''}), decode on ${p.decode_worker}`;
  const proof = el('small', line, { class: 'proof', 'data-path': p.path, 'data-bytes': p.bytes });
  m.append(proof);
}

function setUpChat() {
  const input = $('chat-input');
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || state.chat) return;
    input.value = '';
    void sendChat(text);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      $('chat-form').requestSubmit();
    }
  });
  $('chat-stop').addEventListener('click', () => state.chat?.abort(new Error('stopped')));
  $('chat-clear').addEventListener('click', () => {
    state.history = [];
    $('chat-log').replaceChildren();
  });
}

setUpChat();
void followFeed();
