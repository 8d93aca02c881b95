// berth console: log in, pick a project, service and replica, and get a terminal in
// the replica over the console WebSocket (binary frames carry terminal bytes both
// ways; JSON text frames carry resizes up and the exit status down).
//
// The token lives in sessionStorage only: it goes when the tab does, and logging
// out forgets it (and ends the session when it came from a login).
'use strict';

const TOKEN = 'berth.console.token';
// 'session' when the token came from a login (logout ends it on the server too),
// 'api_token' when it was pasted (logout only forgets it).
const KIND = 'berth.console.kind';
// Replica statuses a console can be opened in.
const OPENABLE = new Set(['running', 'unhealthy', 'draining']);

const $ = (id) => document.getElementById(id);

let term = null; // the one xterm.js Terminal, made on first connect
let fit = null;
let socket = null; // the live console WebSocket, if any

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function show(text, kind = 'info') {
  const line = $('status');
  line.textContent = text;
  line.dataset.kind = kind;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'the server cannot be reached');
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the status line below
  }
  if (!response.ok) {
    const error = json && json.error;
    if (error) throw new ApiError(response.status, error.code, error.message);
    throw new ApiError(response.status, `http_${response.status}`, `${response.status} ${response.statusText}`);
  }
  return json;
}

// Every item of a cursor-paginated list.
async function listAll(path) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', `${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

// Shows an API failure; a token the server no longer takes sends the user back to log in.
function failed(what, error) {
  if (error instanceof ApiError && error.status === 401) {
    forget();
    showLogin();
    show(`${what}: ${error.message}; log in again`, 'error');
  } else {
    show(`${what}: ${error.message}`, 'error');
  }
}

function forget() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(KIND);
}

function showLogin() {
  hangUp();
  $('login').hidden = false;
  $('picker').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  for (const id of ['project', 'service', 'replica']) $(id).replaceChildren();
  if (term) term.reset(); // what the last session showed is not for the next person
  $('username').focus();
}

async function showPicker() {
  const me = await api('GET', '/v1/me');
  $('who').textContent = me.user.username;
  $('login').hidden = true;
  $('picker').hidden = false;
  $('logout').hidden = false;
  await loadProjects().catch((error) => failed('could not list what you can open', error));
}

// Replaces a select's options, keeping its choice while that is still there to pick.
function fill(select, items, label, disabled = () => false) {
  const kept = select.value;
  select.replaceChildren(
    ...items.map((item) => {
      const option = new Option(label(item), item.id);
      option.disabled = disabled(item);
      return option;
    }),
  );
  const still = items.findIndex((item) => item.id === kept && !disabled(item));
  const first = items.findIndex((item) => !disabled(item));
  if (still >= 0 || first >= 0) select.selectedIndex = still >= 0 ? still : first;
  select.disabled = items.length === 0;
}

async function loadProjects() {
  const projects = await listAll('/v1/projects');
  fill($('project'), projects, (p) => p.name);
  if (projects.length === 0) {
    show('you are a member of no project', 'error');
    fill($('service'), [], () => '');
    fill($('replica'), [], () => '');
    updateConnect();
    return;
  }
  await loadServices();
}

async function loadServices(announce = true) {
  const project = $('project').value;
  const services = await listAll(`/v1/services?project_id=${encodeURIComponent(project)}`);
  fill($('service'), services, (s) => `${s.name} (${s.status})`);
  if (services.length === 0) {
    if (announce) show('this project has no service', 'info');
    fill($('replica'), [], () => '');
    updateConnect();
    return;
  }
  await loadReplicas(announce);
}

// `announce` says how many can be opened (not when it would hide why a session ended).
async function loadReplicas(announce = true) {
  const service = $('service').value;
  if (!service) {
    fill($('replica'), [], () => '');
    updateConnect();
    return;
  }
  const { data: replicas } = await api('GET', `/v1/services/${encodeURIComponent(service)}/console/replicas`);
  fill(
    $('replica'),
    replicas,
    (r) => `${r.id} (${r.status})`,
    (r) => !OPENABLE.has(r.status),
  );
  const open = replicas.filter((r) => OPENABLE.has(r.status)).length;
  if (announce && !socket) {
    show(open ? `${open} replica${open === 1 ? '' : 's'} can be opened` : 'this service has no running replica', open ? 'info' : 'error');
  }
  updateConnect();
}

function updateConnect() {
  const replica = $('replica');
  const chosen = replica.selectedOptions[0];
  $('connect').disabled = !chosen || chosen.disabled;
  $('connect').hidden = Boolean(socket);
  $('disconnect').hidden = !socket;
}

function terminal() {
  if (term) return term;
  term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
  });
  fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($('terminal'));
  const encoder = new TextEncoder();
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: 'resize', cols, rows })));
  let pending = false;
  window.addEventListener('resize', () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fit.fit();
    });
  });
  return term;
}

function send(data) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
}

// The WebSocket URL for a ticket's `ws_url` (absolute, or a path on this origin),
// with the terminal's first size.
function socketUrl(wsUrl, cols, rows) {
  const url = new URL(wsUrl, window.location.href);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  if (url.protocol === 'https:') url.protocol = 'wss:';
  url.searchParams.set('cols', cols);
  url.searchParams.set('rows', rows);
  return url.href;
}

function endedText(exit, event, opened) {
  if (exit) {
    let how = '';
    if (exit.signal != null) how = ` (signal ${exit.signal})`;
    else if (exit.exit_code != null) how = ` (exit code ${exit.exit_code})`;
    const reason = exit.reason || event.reason;
    return [`session ended${how}${reason ? `: ${reason}` : ''}`, exit.reason ? 'error' : 'info'];
  }
  const reason = event.reason ? `: ${event.reason}` : '';
  switch (event.code) {
    case 1000:
      return [`session closed${reason}`, 'info'];
    case 1001:
      return [`session closed: the server is going away${reason}`, 'error'];
    case 1008:
      return [`session closed${reason || ': refused by policy'}`, 'error'];
    case 1009:
      return [`session closed${reason || ': a message was too large'}`, 'error'];
    case 1011:
      return [`session closed by a server error${reason}`, 'error'];
    default:
      return opened
        ? [`connection lost (code ${event.code})${reason}`, 'error']
        : ['the console could not be opened: the ticket was refused or the server cannot be reached', 'error'];
  }
}

async function connect() {
  const service = $('service').value;
  const replica = $('replica').value;
  if (!service || !replica) return;
  hangUp();
  $('connect').disabled = true;
  show('connecting…');
  let ticket;
  try {
    ticket = await api('POST', `/v1/services/${encodeURIComponent(service)}/console/tickets`, { replica_id: replica });
  } catch (error) {
    failed('could not open a console', error);
    updateConnect();
    return;
  }
  const t = terminal();
  t.reset();
  fit.fit();
  let ws;
  try {
    ws = new WebSocket(socketUrl(ticket.ws_url, t.cols, t.rows));
  } catch (error) {
    show(`could not open a console: ${error.message}`, 'error');
    updateConnect();
    return;
  }
  ws.binaryType = 'arraybuffer';
  socket = ws;
  updateConnect();
  let opened = false;
  let exit = null;
  ws.onopen = () => {
    opened = true;
    show(`connected to ${replica}`, 'ok');
    send(JSON.stringify({ type: 'resize', cols: t.cols, rows: t.rows }));
    t.focus();
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== 'string') {
      t.write(new Uint8Array(event.data));
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === 'exit') exit = message;
  };
  ws.onclose = (event) => {
    if (socket !== ws) return; // replaced or hung up on purpose
    socket = null;
    const [text, kind] = endedText(exit, event, opened);
    show(text, kind);
    t.write(`\r\n\x1b[2m[${text}]\x1b[0m\r\n`);
    updateConnect();
    // The replica (or the whole service) may be gone now: show what can still be opened.
    loadServices(false).catch((error) => failed('could not list the services', error));
  };
}

// Closes the live session, if any, without reporting it as ended by the server.
function hangUp() {
  const ws = socket;
  socket = null;
  if (ws) ws.close(1000, 'closed by the user');
  updateConnect();
}

async function login(event) {
  event.preventDefault();
  const username = $('username').value;
  const password = $('password').value;
  show('logging in…');
  forget();
  let session;
  try {
    session = await api('POST', '/v1/auth/login', { username, password });
  } catch (error) {
    show(`login failed: ${error.message}`, 'error');
    return;
  }
  sessionStorage.setItem(TOKEN, session.token);
  sessionStorage.setItem(KIND, 'session');
  $('password').value = '';
  show(`logged in as ${session.user.username}`, 'ok');
  await showPicker().catch((error) => failed('could not load your account', error));
}

async function useToken(event) {
  event.preventDefault();
  const token = $('api-token').value.trim();
  forget();
  sessionStorage.setItem(TOKEN, token);
  sessionStorage.setItem(KIND, 'api_token');
  $('api-token').value = '';
  show('checking the token…');
  await showPicker().catch((error) => failed('the token was not accepted', error));
}

async function logout() {
  hangUp();
  if (sessionStorage.getItem(KIND) === 'session') {
    // Best effort: the token is forgotten here whatever the server says.
    await api('POST', '/v1/auth/logout').catch(() => {});
  }
  forget();
  showLogin();
  show('logged out');
}

function guarded(what, action) {
  return () => action().catch((error) => failed(what, error));
}

function start() {
  $('login-form').addEventListener('submit', login);
  $('token-form').addEventListener('submit', useToken);
  $('logout').addEventListener('click', logout);
  $('project').addEventListener('change', guarded('could not list the services', loadServices));
  $('service').addEventListener('change', guarded('could not list the replicas', () => loadReplicas()));
  $('replica').addEventListener('change', updateConnect);
  $('refresh').addEventListener('click', guarded('could not list the replicas', () => loadReplicas()));
  $('connect').addEventListener('click', connect);
  $('disconnect').addEventListener('click', () => {
    hangUp();
    show('disconnected');
  });
  if (sessionStorage.getItem(TOKEN)) {
    showPicker().catch((error) => failed('could not load your account', error));
  } else {
    showLogin();
  }
}

start();
