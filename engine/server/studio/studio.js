// Vitrine studio: the page of `vitrine serve` at /studio. Plain ES2020, no
// framework, no build step, nothing loaded from another origin (the server's
// Content-Security-Policy allows only 'self'; so no inline script, style or
// event-handler attribute either: every listener is attached here).
//
// It talks to the JSON API under /studio/api (docs/studio.md), which runs the
// same code as the gRPC services: what is valid, who may write and every
// error code are the server's. The page only shows them.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  /** Pixel height of one editor line; the same as --lh in studio.css. */
  const LINE_HEIGHT = 20;
  /** Validation runs this long after the last keystroke. */
  const CHECK_DEBOUNCE_MS = 300;
  /** The diff gives up beyond this many changed lines (Myers is O((n+m)·D)). */
  const DIFF_MAX_EDITS = 2000;
  /** Lines of unchanged context around each change in a diff. */
  const DIFF_CONTEXT = 3;
  /** At most this many extra attributes in "try a visitor". */
  const MAX_ATTRIBUTES = 64;
  const TOKEN_KEY = 'vitrine.studio.token';
  const ASKED_KEY = 'vitrine.studio.token-asked';

  const state = {
    info: null,
    shops: [],
    shop: '',
    openedRevision: null, // the revision the editor was opened at (publish's expected_revision)
    openedContent: '',
    servingRevision: null,
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    lineCount: 0,
    checkTimer: 0,
    checkSeq: 0,
    checkAbort: null,
    escArmed: false,
    revisions: [],
    contentCache: new Map(), // "shop@revision" -> content (revisions never change)
    trySeq: 0,
    publishing: false,
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      const code = (body && typeof body.code === 'string') ? body.code : `HTTP_${status}`;
      const message = (body && typeof body.message === 'string') ? body.message : 'no message';
      super(`${code}: ${message}`);
      this.status = status;
      this.code = code;
      this.detail = message;
      this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
      /** Errors past the server's bound (--max-rule-errors), only counted. */
      this.omitted = (body && Number.isInteger(body.omitted)) ? body.omitted : 0;
    }
    /** "UNAUTHENTICATED (HTTP 401): missing admin token". */
    describe() {
      const status = this.status ? ` (HTTP ${this.status})` : '';
      return `${this.code}${status}: ${this.detail}`;
    }
  }

  async function api(method, path, body, signal) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(0, { code: 'UNAVAILABLE', message: `the server did not answer (${e.message})` });
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!res.ok) {
      throw new ApiError(res.status, data && typeof data === 'object'
        ? data : { code: `HTTP_${res.status}`, message: text.slice(0, 200) || res.statusText });
    }
    return data;
  }

  const q = (params) => Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'title'
        || k === 'scope' || k === 'colspan' || k === 'type' || k === 'value') node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /**
   * A rule file's text as the editor holds it: a textarea turns CRLF and a
   * lone CR into LF, so the server's text is compared and diffed in that
   * form (a CRLF file would otherwise look edited the moment it is opened).
   */
  const editorText = (s) => String(s || '').replace(/\r\n?/g, '\n');

  const fmtInt = (n) => (Number.isFinite(Number(n)) ? Number(n).toLocaleString() : '—');
  const fmtPct = (x) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '—');
  const fmtPts = (x) => (Number.isFinite(x) ? `${x >= 0 ? '+' : '−'}${Math.abs(x * 100).toFixed(1)} pts` : '—');
  const fmtNum = (x) => (Number.isFinite(Number(x)) ? String(Math.round(Number(x) * 100) / 100) : '—');
  const fmtMoney = (x) => (Number.isFinite(x) ? x.toFixed(2) : '—');
  const fmtTime = (ms) => {
    const n = Number(ms);
    if (!Number.isFinite(n) || n <= 0) return '—';
    return new Date(n).toLocaleString();
  };
  const fmtParams = (p) => {
    if (!p || typeof p !== 'object') return '';
    const keys = Object.keys(p).sort();
    return keys.map((k) => `${k}=${p[k]}`).join(', ');
  };

  function setStatus(message, kind) {
    const s = $('status');
    s.textContent = kind === 'error' ? `Error: ${message}` : message;
    s.className = `status ${kind || ''}`;
  }

  function report(e, what) {
    if (e && e.name === 'AbortError') return;
    const text = e instanceof ApiError ? e.describe() : String(e && e.message ? e.message : e);
    const hint = e instanceof ApiError && e.status === 401 ? ' — set the admin token (button at the top).' : '';
    setStatus(`${what}: ${text}${hint}`, 'error');
  }

  // ---------------------------------------------------------------- token

  function showTokenState() {
    const required = !!(state.info && state.info.token_required);
    $('token-button').hidden = !required;
    const ts = $('token-state');
    ts.hidden = !required;
    ts.textContent = state.token ? 'token set for this tab' : 'no token: read only';
  }

  function askToken() {
    const d = $('token-dialog');
    $('token-input').value = '';
    if (typeof d.showModal === 'function') d.showModal();
    $('token-input').focus();
  }

  $('token-button').addEventListener('click', askToken);
  $('token-dialog').addEventListener('close', () => {
    const how = $('token-dialog').returnValue;
    sessionStorage.setItem(ASKED_KEY, '1');
    if (how === 'save') {
      const t = $('token-input').value.trim();
      if (t && !/^[\x20-\x7e]+$/.test(t)) {
        // fetch cannot send it (or sends other bytes): the server's token is printable ASCII.
        setStatus('Not saved: an admin token is printable ASCII only (no accented letter, no emoji).', 'error');
      } else if (t) {
        state.token = t;
        sessionStorage.setItem(TOKEN_KEY, t);
        setStatus('Admin token saved for this tab.');
      }
    } else if (how === 'forget') {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      setStatus('Admin token forgotten.');
    }
    $('token-input').value = '';
    showTokenState();
    if (how === 'save' || how === 'forget') scheduleCheck(0);
    $('token-button').focus();
  });

  // ---------------------------------------------------------------- shops

  async function loadShops(keepSelection) {
    const sel = $('shop');
    try {
      const data = await api('GET', '/studio/api/shops');
      state.shops = Array.isArray(data && data.shops) ? data.shops : [];
    } catch (e) {
      report(e, 'Could not list the shops');
      return;
    }
    const current = keepSelection ? state.shop : '';
    sel.replaceChildren(el('option', { value: '', text: state.shops.length ? 'Choose a shop…' : 'No shop is served' }));
    for (const s of state.shops) {
      sel.append(el('option', { value: s.shop, text: `${s.shop} (revision ${s.revision})` }));
    }
    sel.disabled = state.shops.length === 0;
    sel.value = current && state.shops.some((s) => s.shop === current) ? current : '';
  }

  $('shop').addEventListener('change', async () => {
    const sel = $('shop');
    const next = sel.value;
    if (isDirty() && !window.confirm(`Discard your edits to ${state.shop}?`)) {
      sel.value = state.shop;
      return;
    }
    if (next) await openShop(next);
  });
  $('reload-shops').addEventListener('click', () => loadShops(true));

  async function openShop(shop, revision) {
    try {
      const data = await api('GET', `/studio/api/rules?${q({ shop, revision })}`);
      state.shop = shop;
      state.openedRevision = Number(data.revision);
      state.servingRevision = Number(data.revision);
      state.openedContent = editorText(data.content);
      $('shop').value = shop;
      setEditor(state.openedContent);
      $('conflict').hidden = true;
      $('edit-title').textContent = `Rule file of ${shop}`;
      $('edit-meta').textContent = `Opened at revision ${state.openedRevision}; publishing replaces it only if it is still the serving one.`;
      $('try-serving-title').textContent = 'Serving';
      // A decision of the shop left behind (shown, or still on its way) is not this shop's.
      state.trySeq++;
      $('try-result').hidden = true;
      $('try-summary').textContent = '';
      $('try-summary').className = 'check';
      $('publish').disabled = false;
      // The address names the shop, so a reload or a shared link opens it again.
      history.replaceState(null, '', `#shop=${encodeURIComponent(shop)}`);
      setStatus(`Opened ${shop}, revision ${state.openedRevision}.`);
      scheduleCheck(0);
      loadHistory();
      loadLift();
    } catch (e) {
      report(e, `Could not open ${shop}`);
    }
  }

  // ---------------------------------------------------------------- editor

  const editor = $('editor');

  function isDirty() {
    return state.shop !== '' && editor.value !== state.openedContent;
  }

  function updateDirty() {
    const dirty = isDirty();
    $('revert').disabled = !dirty;
    $('dirty').textContent = dirty ? 'Edited: not published yet.' : (state.shop ? 'No edits.' : '');
  }

  function setEditor(text) {
    editor.value = text;
    editor.scrollTop = 0;
    editor.scrollLeft = 0;
    renderLineNumbers();
    clearMarks();
    syncScroll();
    updateDirty();
  }

  function renderLineNumbers() {
    const n = editor.value.split('\n').length;
    if (n === state.lineCount) return;
    state.lineCount = n;
    const numbers = new Array(n);
    for (let i = 0; i < n; i++) numbers[i] = String(i + 1);
    $('gutter-inner').textContent = numbers.join('\n');
    const h = `${n * LINE_HEIGHT}px`;
    $('gutter-inner').style.height = h;
    $('side-inner').style.height = h;
  }

  function syncScroll() {
    const y = editor.scrollTop;
    const x = editor.scrollLeft;
    $('gutter-inner').style.transform = `translateY(${-y}px)`;
    $('side-inner').style.transform = `translateY(${-y}px)`;
    $('bands-inner').style.transform = `translate(${-x}px, ${-y}px)`;
  }

  editor.addEventListener('scroll', syncScroll);
  editor.addEventListener('input', () => {
    renderLineNumbers();
    updateDirty();
    scheduleCheck(CHECK_DEBOUNCE_MS);
  });

  editor.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      // Escape then Tab leaves the editor (keyboard users are never trapped).
      state.escArmed = true;
      return;
    }
    if (ev.key === 'Tab' && !state.escArmed && !ev.ctrlKey && !ev.altKey && !ev.metaKey) {
      ev.preventDefault();
      const multiline = editor.value.slice(editor.selectionStart, editor.selectionEnd).includes('\n');
      if (multiline) shiftLines(ev.shiftKey ? -1 : 1);
      else if (ev.shiftKey) outdentLine();
      else insertText('  ');
      return;
    }
    if (ev.key !== 'Shift') state.escArmed = false;
  });
  editor.addEventListener('blur', () => { state.escArmed = false; });

  function insertText(text) {
    // execCommand keeps the browser's undo history; setRangeText is the fallback.
    let done = false;
    try { done = document.execCommand('insertText', false, text); } catch (_) { done = false; }
    if (!done) {
      editor.setRangeText(text, editor.selectionStart, editor.selectionEnd, 'end');
      editor.dispatchEvent(new Event('input'));
    }
  }

  function outdentLine() {
    const v = editor.value;
    const start = v.lastIndexOf('\n', editor.selectionStart - 1) + 1;
    let n = 0;
    while (n < 2 && v[start + n] === ' ') n++;
    if (n === 0) return;
    const caret = editor.selectionStart;
    editor.setSelectionRange(start, start + n);
    insertText('');
    const back = Math.max(start, caret - n);
    editor.setSelectionRange(back, back);
  }

  /** Indents (dir 1) or outdents (dir -1) by two spaces every line the selection touches. */
  function shiftLines(dir) {
    const v = editor.value;
    const start = v.lastIndexOf('\n', editor.selectionStart - 1) + 1;
    let end = editor.selectionEnd;
    if (end > start && v[end - 1] === '\n') end--; // a selection ending at a line start leaves that line alone
    const nl = v.indexOf('\n', end);
    const stop = nl < 0 ? v.length : nl;
    const lines = v.slice(start, stop).split('\n');
    const shifted = lines.map((l) => (dir > 0 ? `  ${l}` : l.replace(/^ {1,2}/, ''))).join('\n');
    editor.setSelectionRange(start, stop);
    insertText(shifted);
    editor.setSelectionRange(start, start + shifted.length);
  }

  /** The text of 1-based line `line` of the editor ('' past the end) and its offset. */
  function lineAt(line) {
    const v = editor.value;
    let off = 0;
    for (let l = 1; l < line; l++) {
      const nl = v.indexOf('\n', off);
      if (nl < 0) return { off: v.length, text: '' };
      off = nl + 1;
    }
    const end = v.indexOf('\n', off);
    return { off, text: v.slice(off, end < 0 ? v.length : end) };
  }

  /**
   * The editor offset (UTF-16 units) of a 1-based line:column, the column
   * counted in characters as the compiler counts it: a character outside
   * the BMP (an emoji) is one column but two units. Past the line's end:
   * its end.
   */
  function offsetOf(line, column) {
    const { off, text } = lineAt(line);
    let units = 0;
    let chars = Math.max(0, (column || 1) - 1);
    for (const ch of text) {
      if (chars === 0) break;
      units += ch.length;
      chars--;
    }
    return off + units;
  }

  /** The on-screen column (0-based, in ch) of a 1-based line:column: tabs stop every 2 (tab-size in studio.css). */
  function screenColumn(line, column) {
    const { text } = lineAt(line);
    let x = 0;
    let chars = Math.max(0, (column || 1) - 1);
    for (const ch of text) {
      if (chars === 0) break;
      x = ch === '\t' ? x + 2 - (x % 2) : x + 1;
      chars--;
    }
    return x + chars;
  }

  function gotoLine(line, column) {
    const off = offsetOf(line, column);
    editor.focus();
    editor.setSelectionRange(off, off);
    const top = (line - 1) * LINE_HEIGHT;
    if (top < editor.scrollTop || top > editor.scrollTop + editor.clientHeight - 2 * LINE_HEIGHT) {
      editor.scrollTop = Math.max(0, top - Math.floor(editor.clientHeight / 3));
    }
    syncScroll();
  }

  $('revert').addEventListener('click', () => {
    if (!isDirty() || window.confirm('Discard your edits and go back to the file as opened?')) {
      setEditor(state.openedContent);
      scheduleCheck(0);
    }
  });

  window.addEventListener('beforeunload', (ev) => {
    if (isDirty()) { ev.preventDefault(); ev.returnValue = ''; }
  });

  // ---------------------------------------------------------------- validation

  function scheduleCheck(delay) {
    clearTimeout(state.checkTimer);
    if (!state.shop) return;
    state.checkTimer = setTimeout(check, delay);
  }

  async function check() {
    const seq = ++state.checkSeq;
    if (state.checkAbort) state.checkAbort.abort();
    const abort = new AbortController();
    state.checkAbort = abort;
    const content = editor.value;
    $('check-summary').textContent = 'Checking…';
    $('check-summary').className = 'check busy';
    try {
      // `shop`: a file naming another shop is refused at its `shop:` line.
      const data = await api('POST', '/studio/api/validate', { content, shop: state.shop }, abort.signal);
      if (seq !== state.checkSeq) return; // a newer check is running: this answer is stale
      const audiences = Array.isArray(data && data.audiences) ? data.audiences : [];
      showMarks([], audiences);
      const other = data && data.shop && data.shop !== state.shop
        ? ` Note: the file names shop ${data.shop}, not ${state.shop}.` : '';
      $('check-summary').textContent = `No errors. Publishing would make revision ${data.revision}; `
        + `${audiences.length} audience${audiences.length === 1 ? '' : 's'} sized.${other}`;
      $('check-summary').className = 'check ok';
    } catch (e) {
      if (e && e.name === 'AbortError') return;
      if (seq !== state.checkSeq) return;
      if (e instanceof ApiError && e.errors.length > 0) {
        showMarks(e.errors, [], e.omitted);
        const n = e.errors.length + e.omitted;
        $('check-summary').textContent = `${n} error${n === 1 ? '' : 's'} in the file (${e.code}). `
          + 'Each is marked at its line; the list beside the editor jumps to it.';
        $('check-summary').className = 'check bad';
      } else {
        showMarks(e instanceof ApiError && e.code === 'INVALID_ARGUMENT'
          ? [{ line: null, column: null, message: e.detail }] : [], []);
        const text = e instanceof ApiError ? e.describe() : String(e);
        const hint = e instanceof ApiError && e.status === 401 ? ' Set the admin token to check drafts.' : '';
        $('check-summary').textContent = `Could not check the file: ${text}.${hint}`;
        $('check-summary').className = 'check bad';
      }
    } finally {
      if (state.checkAbort === abort) state.checkAbort = null;
    }
  }

  function clearMarks() {
    $('gutter-inner').querySelectorAll('.g-mark').forEach((n) => n.remove());
    $('bands-inner').replaceChildren();
    $('side-inner').replaceChildren();
    $('errors').replaceChildren();
    $('sizes').tBodies[0].replaceChildren();
  }

  function showMarks(errors, audiences, omitted) {
    clearMarks();
    const gutter = $('gutter-inner');
    const bands = $('bands-inner');
    const side = $('side-inner');
    const list = $('errors');
    const marked = new Set();
    for (const err of errors) {
      const line = Number.isInteger(err.line) && err.line > 0 ? err.line : null;
      const col = Number.isInteger(err.column) && err.column > 0 ? err.column : null;
      const msg = String(err.message || 'error');
      const where = line ? `${line}:${col || 1}` : 'file';
      if (line) {
        if (!marked.has(line)) {
          marked.add(line);
          const m = el('div', { class: 'g-mark', 'data-line': line, title: `${where} ${msg}`, text: `✖ ${line}` });
          m.style.top = `${(line - 1) * LINE_HEIGHT}px`;
          gutter.append(m);
          const band = el('div', { class: 'band', 'data-line': line });
          band.style.top = `${(line - 1) * LINE_HEIGHT}px`;
          bands.append(band);
        }
        if (col) {
          const caret = el('div', { class: 'caret-mark' });
          caret.style.top = `${(line - 1) * LINE_HEIGHT}px`;
          caret.style.left = `calc(var(--pad) + ${screenColumn(line, col)}ch)`;
          bands.append(caret);
        }
      }
      const item = line
        ? el('button', { type: 'button', class: 'linkish', 'data-line': line, 'data-column': col || 1 },
          el('span', { class: 'pos', text: where }), ' ', msg)
        : el('span', {}, el('span', { class: 'pos', text: where }), ' ', msg);
      if (line) item.addEventListener('click', () => gotoLine(line, col || 1));
      list.append(el('li', { class: 'error' }, item));
    }
    if (omitted > 0) list.append(el('li', { class: 'muted', text: `… and ${omitted} more (fix these first).` }));
    if (errors.length === 0) list.append(el('li', { class: 'muted', text: audiences.length || state.shop ? 'None.' : '' }));

    const tbody = $('sizes').tBodies[0];
    if (errors.length > 0) {
      tbody.append(el('tr', {}, el('td', { colspan: 3, class: 'muted', text: 'Sizes come back once the file has no error.' })));
    }
    for (const a of audiences) {
      const line = Number.isInteger(a.line) && a.line > 0 ? a.line : null;
      const size = a.sizable === false ? 'per request' : fmtInt(a.size);
      const title = a.sizable === false
        ? `${a.name}: depends on the request context (ctx), not sized`
        : `${a.name}: ${fmtInt(a.size)} visitors now`;
      if (line) {
        const s = el('div', { class: a.sizable === false ? 's-size ctx' : 's-size', 'data-line': line, 'data-audience': a.name, title, text: size });
        s.style.top = `${(line - 1) * LINE_HEIGHT}px`;
        side.append(s);
      }
      const nameCell = line
        ? el('td', {}, el('button', { type: 'button', class: 'linkish', text: a.name }))
        : el('td', { text: a.name });
      if (line) nameCell.firstChild.addEventListener('click', () => gotoLine(line, 1));
      tbody.append(el('tr', { 'data-audience': a.name },
        nameCell, el('td', { text: line ? String(line) : '—' }), el('td', { class: 'num', text: size })));
    }
  }

  // ---------------------------------------------------------------- publish

  $('publish').addEventListener('click', publish);

  async function publish() {
    if (!state.shop) return;
    if (state.publishing) return;
    const content = editor.value;
    // Not `disabled` while in flight: a disabled button drops keyboard focus.
    state.publishing = true;
    $('publish').setAttribute('aria-busy', 'true');
    setStatus(`Publishing ${state.shop}…`);
    try {
      // `shop`: the opened revision is this shop's; a file naming another is refused.
      const data = await api('POST', '/studio/api/publish', { content, expected_revision: state.openedRevision, shop: state.shop });
      state.openedRevision = Number(data.revision);
      state.servingRevision = Number(data.revision);
      state.openedContent = content;
      $('conflict').hidden = true;
      updateDirty();
      $('edit-meta').textContent = `Opened at revision ${state.openedRevision}; publishing replaces it only if it is still the serving one.`;
      setStatus(`Published: ${data.shop} now serves revision ${data.revision}.`, 'ok');
      await loadShops(true);
      loadHistory();
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        await showConflict();
      } else {
        if (e instanceof ApiError && e.errors.length) showMarks(e.errors, []);
        report(e, 'Not published');
      }
    } finally {
      state.publishing = false;
      $('publish').removeAttribute('aria-busy');
    }
  }

  async function showConflict() {
    let serving = null;
    try {
      serving = await api('GET', `/studio/api/rules?${q({ shop: state.shop })}`);
    } catch (_) { serving = null; }
    const n = serving ? serving.revision : '?';
    state.conflictServing = serving;
    $('conflict-text').textContent = `Not published: another author published revision ${n} of ${state.shop} `
      + `since you opened revision ${state.openedRevision}. Your edits are kept in the editor.`;
    $('conflict').hidden = false;
    setStatus(`Conflict (HTTP 409): ${state.shop} is now at revision ${n}.`, 'error');
  }

  $('conflict-diff').addEventListener('click', () => {
    const s = state.conflictServing;
    if (!s) return;
    showDiff(`revision ${s.revision} (serving)`, editorText(s.content), 'your draft', editor.value);
  });
  $('conflict-reload').addEventListener('click', async () => {
    if (window.confirm('Drop your edits and load the serving file?')) {
      await openShop(state.shop);
      await loadShops(true);
    }
  });

  // ---------------------------------------------------------------- history, diff, rollback

  async function loadHistory() {
    const shop = state.shop;
    if (!shop) return;
    let data;
    try {
      data = await api('GET', `/studio/api/revisions?${q({ shop })}`);
    } catch (e) {
      report(e, 'Could not list the revisions');
      return;
    }
    if (shop !== state.shop) return;
    state.revisions = Array.isArray(data && data.revisions) ? data.revisions : [];
    const tbody = $('history').tBodies[0];
    tbody.replaceChildren();
    for (const r of state.revisions) {
      if (r.serving) state.servingRevision = Number(r.revision);
      tbody.append(el('tr', { class: r.serving ? 'serving' : '', 'data-revision': r.revision },
        el('td', { text: String(r.revision) }),
        el('td', { text: String(r.origin || '') }),
        el('td', { text: fmtTime(r.created_ms), title: Number(r.created_ms) > 0 ? new Date(Number(r.created_ms)).toISOString() : '' }),
        el('td', { text: r.serving ? '● serving' : '' })));
    }
    const opts = (withDraft) => {
      const list = state.revisions.map((r) => el('option', { value: String(r.revision), text: `revision ${r.revision}${r.serving ? ' (serving)' : ''}` }));
      if (withDraft) list.push(el('option', { value: 'draft', text: 'the editor (draft)' }));
      return list;
    };
    $('diff-from').replaceChildren(...opts(false));
    $('diff-to').replaceChildren(...opts(true));
    const older = state.revisions.filter((r) => !r.serving);
    $('rollback-to').replaceChildren(...(older.length
      ? older.map((r) => el('option', { value: String(r.revision), text: `revision ${r.revision} (${r.origin || '?'})` }))
      : [el('option', { value: '', text: 'no other revision' })]));
    $('rollback-to').disabled = older.length === 0;
    if (state.revisions.length > 1) $('diff-from').value = String(state.revisions[1].revision);
    $('diff-to').value = state.revisions.length ? String(state.revisions[0].revision) : 'draft';
    $('rollback').disabled = older.length === 0;
  }

  async function revisionContent(shop, revision) {
    const key = `${shop}@${revision}`;
    if (state.contentCache.has(key)) return state.contentCache.get(key);
    const data = await api('GET', `/studio/api/rules?${q({ shop, revision })}`);
    const content = editorText(data.content);
    state.contentCache.set(key, content);
    return content;
  }

  $('diff-show').addEventListener('click', async () => {
    const from = $('diff-from').value;
    const to = $('diff-to').value;
    if (!from || !to) return;
    try {
      const a = from === 'draft' ? editor.value : await revisionContent(state.shop, from);
      const b = to === 'draft' ? editor.value : await revisionContent(state.shop, to);
      showDiff(from === 'draft' ? 'draft' : `revision ${from}`, a, to === 'draft' ? 'draft' : `revision ${to}`, b);
    } catch (e) {
      report(e, 'Could not load the revisions to compare');
    }
  });

  $('rollback').addEventListener('click', async () => {
    const target = Number($('rollback-to').value);
    if (!state.shop || !Number.isInteger(target) || target <= 0) return;
    const edits = isDirty() ? ' Your unpublished edits in the editor will be dropped.' : '';
    if (!window.confirm(`Roll ${state.shop} back to revision ${target}? Its file becomes a new serving revision.${edits}`)) return;
    try {
      const data = await api('POST', '/studio/api/rollback', {
        shop: state.shop, revision: target, expected_revision: state.servingRevision,
      });
      await openShop(state.shop);
      await loadShops(true);
      setStatus(`Rolled back: ${data.shop} now serves revision ${data.revision} (the file of revision ${data.restored_from}).`, 'ok');
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) loadHistory();
      report(e, 'Not rolled back');
    }
  });

  /**
   * Line diff (Myers' O((n+m)·D) algorithm after trimming the common prefix
   * and suffix). Returns [[op, line]] with op ' ', '-' or '+', or null when
   * more than maxEdits lines differ.
   */
  function diffLines(a, b, maxEdits) {
    let pre = 0;
    while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
    let suf = 0;
    while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
    const A = a.slice(pre, a.length - suf);
    const B = b.slice(pre, b.length - suf);
    const mid = myers(A, B, maxEdits);
    if (mid === null) return null;
    const out = [];
    for (let i = 0; i < pre; i++) out.push([' ', a[i]]);
    out.push(...mid);
    for (let i = a.length - suf; i < a.length; i++) out.push([' ', a[i]]);
    return out;
  }

  function myers(A, B, maxEdits) {
    const n = A.length;
    const m = B.length;
    if (n === 0) return B.map((x) => ['+', x]);
    if (m === 0) return A.map((x) => ['-', x]);
    const max = Math.min(n + m, maxEdits);
    const off = max + 1;
    const v = new Int32Array(2 * max + 3);
    const trace = [];
    let found = -1;
    for (let d = 0; d <= max && found < 0; d++) {
      for (let k = -d; k <= d; k += 2) {
        let x = (k === -d || (k !== d && v[off + k - 1] < v[off + k + 1])) ? v[off + k + 1] : v[off + k - 1] + 1;
        let y = x - k;
        while (x < n && y < m && A[x] === B[y]) { x++; y++; }
        v[off + k] = x;
        if (x >= n && y >= m) { found = d; break; }
      }
      trace.push(v.slice(off - d, off + d + 1));
    }
    if (found < 0) return null;
    const ops = [];
    let x = n;
    let y = m;
    for (let d = found; d > 0; d--) {
      const prev = trace[d - 1];
      const at = (k) => prev[k + d - 1];
      const k = x - y;
      const down = k === -d || (k !== d && at(k - 1) < at(k + 1));
      const pk = down ? k + 1 : k - 1;
      const px = at(pk);
      const py = px - pk;
      while (x > px && y > py) { ops.push([' ', A[x - 1]]); x--; y--; }
      if (down) { ops.push(['+', B[y - 1]]); y--; } else { ops.push(['-', A[x - 1]]); x--; }
    }
    while (x > 0 && y > 0) { ops.push([' ', A[x - 1]]); x--; y--; }
    return ops.reverse();
  }

  function showDiff(nameA, a, nameB, b) {
    const wrap = $('diff');
    const body = $('diff-body');
    wrap.hidden = false;
    $('diff-title').textContent = `Diff: ${nameA} → ${nameB}`;
    const ops = diffLines(a.split('\n'), b.split('\n'), DIFF_MAX_EDITS);
    body.replaceChildren();
    if (ops === null) {
      $('diff-summary').textContent = `More than ${DIFF_MAX_EDITS} lines differ: too many to show line by line.`;
      return;
    }
    const added = ops.filter((o) => o[0] === '+').length;
    const removed = ops.filter((o) => o[0] === '-').length;
    $('diff-summary').textContent = added + removed === 0
      ? 'The two files are identical.'
      : `${removed} line${removed === 1 ? '' : 's'} removed, ${added} added (- ${nameA}, + ${nameB}).`;
    // Unchanged lines further than DIFF_CONTEXT from a change are folded.
    const keep = new Uint8Array(ops.length);
    ops.forEach((o, i) => {
      if (o[0] === ' ') return;
      for (let j = Math.max(0, i - DIFF_CONTEXT); j <= Math.min(ops.length - 1, i + DIFF_CONTEXT); j++) keep[j] = 1;
    });
    let la = 0;
    let lb = 0;
    let folded = false;
    const frag = document.createDocumentFragment();
    ops.forEach((o, i) => {
      if (o[0] !== '+') la++;
      if (o[0] !== '-') lb++;
      if (!keep[i]) {
        if (!folded) frag.append(el('span', { class: 'd-fold', text: '⋯\n' }));
        folded = true;
        return;
      }
      folded = false;
      const cls = o[0] === '+' ? 'd-add' : o[0] === '-' ? 'd-del' : 'd-same';
      const num = o[0] === '+' ? `    ${String(lb).padStart(4)}` : o[0] === '-' ? `${String(la).padStart(4)}    ` : `${String(la).padStart(4)}${String(lb).padStart(4)}`;
      frag.append(el('span', { class: cls }, el('span', { class: 'd-num', text: `${num} ` }), `${o[0]} ${o[1]}\n`));
    });
    body.append(frag);
    body.focus();
  }

  // ---------------------------------------------------------------- try a visitor

  $('try-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!state.shop) { setStatus('Choose a shop first.', 'error'); return; }
    const attributes = Object.create(null); // `__proto__=x` is an attribute like any other
    const lines = $('try-attributes').value.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line) continue;
      const eq = line.indexOf('=');
      if (eq <= 0) {
        $('try-summary').textContent = `Extra attributes, line ${i + 1}: expected key=value.`;
        $('try-summary').className = 'check bad';
        return;
      }
      attributes[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    if (Object.keys(attributes).length > MAX_ATTRIBUTES) {
      $('try-summary').textContent = `At most ${MAX_ATTRIBUTES} extra attributes.`;
      $('try-summary').className = 'check bad';
      return;
    }
    let nowMs = 0;
    const instant = $('try-instant').value;
    if (instant) {
      nowMs = new Date(instant).getTime();
      if (!Number.isFinite(nowMs) || nowMs <= 0) {
        $('try-summary').textContent = 'The instant is not a valid date and time.';
        $('try-summary').className = 'check bad';
        return;
      }
    }
    const body = {
      shop: state.shop,
      visitor: $('try-visitor').value.trim(),
      context: {
        page: $('try-page').value.trim(),
        item: $('try-item').value.trim(),
        region: $('try-region').value.trim(),
        device: $('try-device').value.trim(),
        channel: $('try-channel').value.trim(),
        attributes,
      },
      now_ms: nowMs,
      draft: editor.value,
    };
    const seq = ++state.trySeq;
    $('try-summary').textContent = 'Deciding…';
    $('try-summary').className = 'check busy';
    try {
      const data = await api('POST', '/studio/api/try', body);
      if (seq !== state.trySeq) return;
      showTry(data, body.visitor);
    } catch (e) {
      if (seq !== state.trySeq) return;
      $('try-summary').textContent = `Could not decide: ${e instanceof ApiError ? e.describe() : String(e)}`;
      $('try-summary').className = 'check bad';
    }
  });

  /** The parts of a decision, as [key, label, text, node] to compare and show. */
  function facets(d, other) {
    const otherSteps = other && other.explanation && Array.isArray(other.explanation.steps) ? other.explanation.steps : null;
    const stepKey = (s) => (s ? `${s.slot} ${s.entry} ${s.outcome}` : '');
    const out = [];
    const b = d.banner;
    out.push(['banner', 'Banner', b ? `${b.id}${fmtParams(b.params) ? ` (${fmtParams(b.params)})` : ''}` : 'none']);
    const items = Array.isArray(d.items) ? d.items : [];
    const itemsText = items.map((i) => `${i.id} (${i.reason})`).join(', ');
    const itemsNode = items.length
      ? el('ol', { class: 'items' }, items.map((i) => el('li', {}, el('code', { text: i.id }), ` ${i.reason}`)))
      : null;
    out.push(['items', 'Items', items.length ? itemsText : 'none', itemsNode]);
    const bf = d.benefit;
    out.push(['benefit', 'Benefit', bf
      ? `${bf.id} — ${bf.kind}${fmtParams(bf.params) ? ` (${fmtParams(bf.params)})` : ''}${bf.remaining !== null && bf.remaining !== undefined ? `, ${bf.remaining} left` : ''}`
      : 'none']);
    const t = d.tier_preview;
    out.push(['tier', 'Tier preview', t
      ? `${t.name || `tier ${t.tier}`}${t.next_name ? ` → ${t.next_name}, ${fmtNum(t.gap)} to go` : ' (top level)'}`
      : 'none']);
    out.push(['addon', 'Add-on gap', d.add_on_gap === null || d.add_on_gap === undefined ? 'none' : fmtNum(d.add_on_gap)]);
    const ex = d.explanation || {};
    const auds = Array.isArray(ex.audiences) ? ex.audiences : [];
    out.push(['audiences', 'Audiences matched', auds.length ? auds.join(', ') : 'none']);
    const steps = Array.isArray(ex.steps) ? ex.steps : [];
    const stepsText = steps.map((s) => `${s.slot} ${s.entry} ${s.outcome}`).join('\n');
    const stepsNode = steps.length
      ? el('table', { class: 'steps' },
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Slot' }), el('th', { scope: 'col', text: 'Entry' }), el('th', { scope: 'col', text: 'Outcome' }))),
        el('tbody', {}, steps.map((s, i) => {
          const differs = otherSteps !== null && stepKey(otherSteps[i]) !== stepKey(s);
          return el('tr', { class: `${s.outcome === 'chosen' ? 'chosen' : ''} ${differs ? 'changed' : ''}`.trim(), title: differs ? 'differs from the other side' : null },
            el('td', { text: `${differs ? '≠ ' : ''}${s.slot}` }), el('td', { text: s.entry }), el('td', { text: s.outcome }));
        })))
      : null;
    out.push(['steps', 'Explanation', steps.length ? stepsText : 'none', stepsNode]);
    return out;
  }

  function renderDecision(container, d, other, errors, isDraft) {
    const body = container.querySelector('.body');
    body.replaceChildren();
    if (!d) {
      if (errors && errors.length) {
        body.append(el('p', { class: 'bad', text: 'The draft has errors, so it cannot decide:' }),
          el('ul', { class: 'errors' }, errors.map((e) => el('li', { class: 'error' },
            el('span', { class: 'pos', text: e.line ? `${e.line}:${e.column || 1}` : 'file' }), ` ${e.message}`))));
      } else {
        body.append(el('p', { class: 'muted', text: 'No draft to try.' }));
      }
      return 0;
    }
    const theirs = other ? new Map(facets(other).map((f) => [f[0], f[2]])) : null;
    let changed = 0;
    const dl = el('dl', { class: 'facets' });
    for (const [key, label, text, node] of facets(d, other)) {
      const differs = theirs !== null && theirs.get(key) !== text;
      if (differs) changed++;
      const dt = el('dt', { class: differs ? 'changed' : '', 'data-facet': key }, label,
        differs ? el('span', { class: 'badge', text: 'changed' }) : null);
      const dd = el('dd', { class: differs ? 'changed' : '', 'data-facet': key }, node || el('span', { text }));
      dl.append(dt, dd);
    }
    const rev = isDraft ? 'Decided by the draft in the editor (not published).' : `Decided by rule revision ${d.revision}.`;
    body.append(el('p', { class: 'muted', text: rev }), dl);
    return changed;
  }

  function showTry(data, visitor) {
    $('try-result').hidden = false;
    const serving = data && data.serving;
    const draft = data && data.draft;
    $('try-serving-title').textContent = serving ? `Serving (revision ${serving.revision})` : 'Serving';
    $('try-draft-title').textContent = 'Draft (the editor)';
    const changed = renderDecision($('try-draft'), draft, serving, data && data.draft_errors, true);
    renderDecision($('try-serving'), serving, draft, null, false);
    const s = $('try-summary');
    if (!draft) {
      s.textContent = `The draft has errors; showing the serving decision for ${visitor}.`;
      s.className = 'check bad';
    } else if (changed === 0) {
      s.textContent = `The draft decides the same as the serving file for ${visitor}.`;
      s.className = 'check ok';
    } else {
      const names = facets(draft).filter((f) => {
        const other = facets(serving || {}).find((g) => g[0] === f[0]);
        return other && other[2] !== f[2];
      }).map((f) => f[1].toLowerCase());
      s.textContent = `The draft changes ${names.join(', ')} for ${visitor} (marked "changed").`;
      s.className = 'check changed';
    }
  }

  // ---------------------------------------------------------------- lift

  $('lift-load').addEventListener('click', loadLift);

  async function loadLift() {
    const shop = state.shop;
    if (!shop) return;
    const win = $('lift-window').value;
    $('lift-summary').textContent = 'Loading the lift report…';
    let data;
    try {
      data = await api('GET', `/studio/api/lift?${q({ shop, window: win })}`);
    } catch (e) {
      $('lift-summary').textContent = `Could not load the lift report: ${e instanceof ApiError ? e.describe() : String(e)}`;
      return;
    }
    if (shop !== state.shop) return;
    const rows = Array.isArray(data && data.rows) ? data.rows : [];
    $('lift-summary').textContent = rows.length
      ? `${rows.length} entr${rows.length === 1 ? 'y' : 'ies'} with a holdout, window ${win}, rule revision ${data.rule_revision}. `
        + 'Lift = treated conversion rate − control conversion rate, with its 95% interval.'
      : `No entry of ${shop} has exposures in the last ${win} (only entries with a holdout have a control group).`;
    renderLiftTable(rows);
    renderLiftChart(rows);
  }

  function verdict(r) {
    if (!Number.isFinite(r.ci_low) || !Number.isFinite(r.ci_high)) return 'not enough data';
    if (r.ci_low > 0) return 'works';
    if (r.ci_high < 0) return 'hurts';
    return 'not sure yet';
  }

  function renderLiftTable(rows) {
    const table = $('lift-table');
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    for (const r of rows) {
      tbody.append(el('tr', { 'data-entry': `${r.slot}:${r.id}` },
        el('td', { text: r.slot }), el('td', {}, el('code', { text: r.id })),
        el('td', { class: 'num', text: fmtInt(r.treated) }), el('td', { class: 'num', text: fmtInt(r.treated_converted) }),
        el('td', { class: 'num', text: fmtPct(r.treated_rate) }),
        el('td', { class: 'num', text: fmtInt(r.control) }), el('td', { class: 'num', text: fmtInt(r.control_converted) }),
        el('td', { class: 'num', text: fmtPct(r.control_rate) }),
        el('td', { class: 'num', text: fmtPts(r.lift) }),
        el('td', { text: `${fmtPts(r.ci_low)} … ${fmtPts(r.ci_high)} (${verdict(r)})` }),
        el('td', { class: 'num', text: fmtMoney(r.treated_spend) }), el('td', { class: 'num', text: fmtMoney(r.control_spend) })));
    }
    table.hidden = rows.length === 0;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function renderLiftChart(rows) {
    const box = $('lift-chart');
    box.replaceChildren();
    if (!rows.length) return;
    const W = 960;
    const ROW = 46;
    const TOP = 28;
    const LABEL = 230;
    const RATE_W = 300;
    const GAP = 40;
    const CI_X = LABEL + RATE_W + GAP;
    const CI_W = W - CI_X - 90;
    const H = TOP + rows.length * ROW + 10;
    const maxRate = Math.max(0.0001, ...rows.flatMap((r) => [r.treated_rate, r.control_rate]).filter(Number.isFinite));
    const extent = Math.max(0.001, ...rows.flatMap((r) => [r.ci_low, r.ci_high, r.lift]).filter(Number.isFinite).map(Math.abs)) * 1.1;
    const cx = (x) => CI_X + CI_W / 2 + (x / extent) * (CI_W / 2);
    const rx = (x) => LABEL + (Number.isFinite(x) ? x / maxRate : 0) * (RATE_W - 60);
    const root = svg('svg', {
      viewBox: `0 0 ${W} ${H}`, width: '100%', role: 'img', class: 'lift-svg',
      'aria-label': 'Lift per entry: conversion rate of treated and control visitors, and the lift with its 95% interval. The same numbers are in the table below.',
    });
    const defs = svg('defs', {},
      svg('pattern', { id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
        svg('rect', { width: 6, height: 6, class: 'hatch-bg' }), svg('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'hatch-line' })));
    root.append(defs);
    root.append(svg('text', { x: LABEL, y: 16, class: 'axis-title' }, 'Conversion rate'));
    root.append(svg('text', { x: CI_X, y: 16, class: 'axis-title' }, 'Lift, 95% interval'));
    const zero = cx(0);
    root.append(svg('line', { x1: zero, y1: TOP - 4, x2: zero, y2: H - 6, class: 'zero' }));
    root.append(svg('text', { x: zero, y: H - 0, class: 'tick', 'text-anchor': 'middle' }, '0'));
    root.append(svg('text', { x: CI_X, y: H - 0, class: 'tick', 'text-anchor': 'start' }, fmtPts(-extent)));
    root.append(svg('text', { x: CI_X + CI_W, y: H - 0, class: 'tick', 'text-anchor': 'end' }, fmtPts(extent)));
    rows.forEach((r, i) => {
      const y = TOP + i * ROW;
      const g = svg('g', { class: `lift-row ${verdict(r).replace(/ /g, '-')}`, 'data-entry': `${r.slot}:${r.id}` });
      g.append(svg('title', {}, `${r.slot} ${r.id}: treated ${fmtPct(r.treated_rate)}, control ${fmtPct(r.control_rate)}, lift ${fmtPts(r.lift)} (${fmtPts(r.ci_low)} … ${fmtPts(r.ci_high)}), ${verdict(r)}`));
      g.append(svg('text', { x: 0, y: y + 16, class: 'label' }, `${r.slot} ${r.id}`.slice(0, 32)));
      g.append(svg('text', { x: 0, y: y + 34, class: 'sub' }, `${fmtInt(r.treated)} treated, ${fmtInt(r.control)} control`));
      g.append(svg('rect', { x: LABEL, y: y + 4, width: Math.max(1, rx(r.treated_rate) - LABEL), height: 14, class: 'bar treated' }));
      g.append(svg('text', { x: rx(r.treated_rate) + 4, y: y + 16, class: 'val' }, `T ${fmtPct(r.treated_rate)}`));
      g.append(svg('rect', { x: LABEL, y: y + 22, width: Math.max(1, rx(r.control_rate) - LABEL), height: 14, class: 'bar control' }));
      g.append(svg('text', { x: rx(r.control_rate) + 4, y: y + 34, class: 'val' }, `C ${fmtPct(r.control_rate)}`));
      if (Number.isFinite(r.ci_low) && Number.isFinite(r.ci_high)) {
        const mid = y + 20;
        g.append(svg('line', { x1: cx(r.ci_low), y1: mid, x2: cx(r.ci_high), y2: mid, class: 'ci' }));
        g.append(svg('line', { x1: cx(r.ci_low), y1: mid - 6, x2: cx(r.ci_low), y2: mid + 6, class: 'ci' }));
        g.append(svg('line', { x1: cx(r.ci_high), y1: mid - 6, x2: cx(r.ci_high), y2: mid + 6, class: 'ci' }));
      }
      if (Number.isFinite(r.lift)) {
        g.append(svg('circle', { cx: cx(r.lift), cy: y + 20, r: 5, class: 'point' }));
      }
      g.append(svg('text', { x: CI_X + CI_W + 8, y: y + 16, class: 'val' }, fmtPts(r.lift)));
      g.append(svg('text', { x: CI_X + CI_W + 8, y: y + 34, class: 'sub' }, verdict(r)));
      root.append(g);
    });
    box.append(root);
  }

  // ---------------------------------------------------------------- start

  async function start() {
    try {
      state.info = await api('GET', '/studio/api/info');
    } catch (e) {
      report(e, 'The studio API did not answer');
      return;
    }
    showTokenState();
    document.title = `Vitrine studio ${state.info.version || ''}`.trim();
    await loadShops(false);
    setStatus(state.shops.length ? 'Choose a shop to open its rule file.' : 'This server serves no shop yet.');
    // Asked once per tab: a reload after "Cancel" does not ask again.
    if (state.info.token_required && !state.token && !sessionStorage.getItem(ASKED_KEY)) askToken();
    const wanted = new URLSearchParams(location.hash.slice(1)).get('shop');
    if (wanted && state.shops.some((s) => s.shop === wanted)) await openShop(wanted);
  }

  // For the browser test (.ci/studio_e2e.py): the line diff, checked there
  // against a plain LCS on random files. Read-only, nothing else exposed.
  Object.defineProperty(window, 'vitrineStudio', { value: Object.freeze({ diffLines }) });

  start();
})();
