// The console page in a real browser: Debian's chromium driven by playwright-core.
//
// Opens <BERTH_URL>/console, logs in with a username and password, picks the
// project, service and replica, connects, and checks that the terminal is a real
// one: the size the page gives it reaches the shell (`stty size`, before and after
// the window shrinks), a typed command's output appears, and `exit 3` ends the
// session with the page saying so; a second session ends when the service is
// stopped under it, and the page says why. Then logging out forgets the token, and
// an API token pasted instead of a password is checked, used and forgotten alike. Any
// Content-Security-Policy violation or script error fails the run.
//
// Environment: BERTH_URL (http://127.0.0.1:PORT), BERTH_USERNAME, BERTH_PASSWORD,
// BERTH_API_TOKEN (one of the same user's, with projects:read, services:read and
// console), BERTH_PROJECT, BERTH_SERVICE (names), BERTH_REPLICA (an id; default: the first
// that can be opened), BERTH_ARTIFACTS (where a failure's screenshot goes; default
// the system's temp dir), CHROMIUM (default /usr/bin/chromium).
// Exit status 0 when every check passed; 1 with the reason and a screenshot path.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') throw new Error(`${name} is not set`);
  return value;
};

const STEP_MS = 20_000;

async function run(page, log, refusals) {
  const base = env('BERTH_URL').replace(/\/$/, '');
  const project = env('BERTH_PROJECT');
  const service = env('BERTH_SERVICE');

  // The short form redirects to the page, which comes with its security headers.
  const response = await page.goto(`${base}/console`);
  if (new URL(page.url()).pathname !== '/console/') throw new Error(`/console led to ${page.url()}`);
  const headers = response.headers();
  for (const [name, needle] of [
    ['content-security-policy', "script-src 'self'"],
    ['x-content-type-options', 'nosniff'],
    ['x-frame-options', 'DENY'],
    ['referrer-policy', 'no-referrer'],
  ]) {
    if (!(headers[name] ?? '').includes(needle)) throw new Error(`the page's ${name} is ${headers[name]}`);
  }
  log('page loaded');

  await page.fill('#username', env('BERTH_USERNAME'));
  await page.fill('#password', env('BERTH_PASSWORD'));
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#picker:not([hidden])', { timeout: STEP_MS });
  log(`logged in as ${await page.textContent('#who')}`);

  await page.waitForSelector(`#project option:text-is("${project}")`, { state: 'attached', timeout: STEP_MS });
  await page.selectOption('#project', { label: project });
  const serviceOption = page.locator('#service option', { hasText: new RegExp(`^${service} \\(`) });
  await serviceOption.waitFor({ state: 'attached', timeout: STEP_MS });
  await page.selectOption('#service', await serviceOption.getAttribute('value'));
  const wanted = process.env.BERTH_REPLICA;
  const replica = page.locator(wanted ? `#replica option[value="${wanted}"]` : '#replica option:not([disabled])').first();
  await replica.waitFor({ state: 'attached', timeout: STEP_MS });
  await page.selectOption('#replica', await replica.getAttribute('value'));
  log(`picked ${project} / ${service} / ${await replica.textContent()}`);

  await page.click('#connect');
  await waitForStatus(page, /^connected/);
  log(await page.textContent('#status'));

  // The terminal's text as xterm.js's DOM renderer shows it, a line per row (it
  // renders spaces as no-break spaces).
  const screen = () => page.evaluate(readScreen);
  const waitForScreen = async (pattern, what) => {
    const deadline = Date.now() + STEP_MS;
    while (!pattern.test(await screen())) {
      if (Date.now() > deadline) throw new Error(`the terminal never showed ${what}; it shows:\n${await screen()}`);
      await page.waitForTimeout(100);
    }
  };
  const type = async (line) => {
    await page.focus('.xterm-helper-textarea');
    await page.keyboard.type(line);
    await page.keyboard.press('Enter');
  };

  // The size the page fitted the terminal to is the shell's (the first size on the
  // URL and a resize on open), and follows the window.
  const checkSize = async (when) => {
    const [rows, cols] = await page.evaluate(() => [term.rows, term.cols]);
    await type('busybox stty size');
    await waitForScreen(new RegExp(`^${rows} ${cols}\\s*$`, 'm'), `"${rows} ${cols}" from stty size ${when}`);
    log(`stty size ${when}: ${rows} ${cols}`);
    return [rows, cols];
  };
  // Typed before the shell is up, a line would be echoed twice (by the terminal's
  // cooked mode, then by the shell's line editor): wait for busybox's prompt.
  const prompt = /^\/ # /m;
  await waitForScreen(prompt, "the shell's prompt");
  const before = await checkSize('at connect');
  await page.setViewportSize({ width: 700, height: 420 });
  await page.waitForFunction(([r, c]) => term.rows !== r && term.cols !== c, before, { timeout: STEP_MS });
  await checkSize('after the window shrank');

  // The output, which the typed line itself does not contain.
  await type('echo berth-$((6*7))');
  await waitForScreen(/berth-42/, 'berth-42');
  log('echo came back: berth-42');

  await type('exit 3');
  await waitForStatus(page, /ended \(exit code 3\)/);
  log(await page.textContent('#status'));

  // A replica that dies under a session: the page says so, with the server's reason.
  await page.click('#connect');
  await waitForStatus(page, /^connected/);
  await waitForScreen(prompt, "the second shell's prompt");
  await type('echo still-$((2*3))-here');
  await waitForScreen(/still-6-here/, 'the second session answer');
  const { token, serviceId } = await page.evaluate(() => ({
    token: sessionStorage.getItem('berth.console.token'),
    serviceId: document.getElementById('service').value,
  }));
  const stop = await fetch(`${base}/v1/services/${serviceId}/stop`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: '{}',
  });
  if (!stop.ok) throw new Error(`stopping the service: ${stop.status} ${await stop.text()}`);
  await waitForStatus(page, /^session ended .*: the replica stopped$/);
  log(await page.textContent('#status'));

  const stored = await page.evaluate(() => ({ session: sessionStorage.length, local: localStorage.length }));
  if (stored.session === 0 || stored.local !== 0) throw new Error(`token storage: ${JSON.stringify(stored)}`);
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])', { timeout: STEP_MS });
  const nothingStored = async () => {
    const left = await page.evaluate(() => sessionStorage.length + localStorage.length);
    if (left !== 0) throw new Error(`${left} items stored after logout`);
  };
  await nothingStored();
  log('logged out; nothing stored');

  // An API token pasted instead of a password: a wrong one is refused, a right one
  // opens the same picker, and logging out forgets it too.
  const useToken = async (token) => {
    await page.fill('#api-token', token);
    await page.click('#token-form button[type=submit]');
  };
  refusals.push('401 /v1/me');
  await useToken('berth_not-a-token');
  await waitForStatus(page, /^the token was not accepted: /);
  log(await page.textContent('#status'));
  await useToken(env('BERTH_API_TOKEN'));
  await page.waitForSelector(`#project option:text-is("${project}")`, { state: 'attached', timeout: STEP_MS });
  log(`the API token shows ${project} to ${await page.textContent('#who')}`);
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])', { timeout: STEP_MS });
  await nothingStored();
}

function readScreen() {
  const rows = document.querySelector('.xterm-rows');
  return rows ? [...rows.children].map((row) => row.textContent.replace(/\u00a0/g, ' ')).join('\n') : '';
}

async function waitForStatus(page, pattern) {
  try {
    await page.waitForFunction(
      ([source, flags]) => new RegExp(source, flags).test(document.getElementById('status').textContent),
      [pattern.source, pattern.flags],
      { timeout: STEP_MS },
    );
  } catch {
    throw new Error(`the status line never matched ${pattern}; it says: "${await page.textContent('#status')}"`);
  }
}

async function main() {
  const started = Date.now();
  const log = (line) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}`);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const problems = [];
  // Failed HTTP answers the run provokes on purpose ("401 /v1/me"), each allowed once;
  // any other is a problem.
  const refusals = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    page = await context.newPage();
    page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
    page.on('console', (message) => {
      // Failed loads are judged by their answers, below.
      if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
        problems.push(`console error: ${message.text()}`);
      }
    });
    page.on('response', (response) => {
      if (response.status() < 400) return;
      const answer = `${response.status()} ${new URL(response.url()).pathname}`;
      const expected = refusals.indexOf(answer);
      if (expected >= 0) refusals.splice(expected, 1);
      else problems.push(`HTTP ${answer}`);
    });
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => {
        console.error(`csp violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
      });
    });
    await run(page, log, refusals);
    if (problems.length) throw new Error('the page reported problems');
    log('ok');
  } catch (error) {
    console.error(`FAILED: ${error.message}`);
    if (problems.length) console.error(`the page reported:\n${problems.join('\n')}`);
    if (page) {
      const dir = mkdtempSync(join(process.env.BERTH_ARTIFACTS || tmpdir(), 'berth-console-'));
      const shot = join(dir, 'failure.png');
      await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
      console.error(`screenshot: ${shot}`);
    }
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack || error}`);
  process.exit(1);
});
