// The admin UI, end to end, in a real browser: Playwright (playwright-core) drives Debian's
// Chromium against `pigeon dev`. An operator signs in with the dev token and, by keyboard only,
// creates a script pigeon from a registered capability, tests its script, sends a letter and
// sees it counted, fixes and redrives a dead letter, and reads the audit entries. Every page is
// saved as a screenshot: in target/e2e-screenshots/, or in docs/screenshots/ (the set the README
// shows) with UPDATE_SCREENSHOTS=1.
//
//   node tests/e2e/admin-ui.test.mjs [path/to/pigeon]     (default: target/debug/pigeon)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const binary = resolve(process.argv[2] || join(root, 'target/debug/pigeon'));
const shots = join(root, process.env.UPDATE_SCREENSHOTS ? 'docs/screenshots' : 'target/e2e-screenshots');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
const PIGEON = 'e2e-gift-points';

let step = 'starting';
const log = (text) => console.log(`[e2e] ${text}`);
const begin = (text) => { step = text; log(text); };

/** Starts `pigeon dev` on a free port; resolves with its URL, token and process. */
function startBus(dataDir) {
  return new Promise((resolveBus, reject) => {
    const child = spawn(binary, ['dev', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const found = {};
    const timer = setTimeout(() => reject(new Error('pigeon dev printed no token and URL within 60 s')), 60_000);
    child.on('exit', (code) => reject(new Error(`pigeon dev exited early (${code})`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/^(token|admin): (\S+)/);
      if (m) found[m[1]] = m[2];
      if (found.token && found.admin) {
        clearTimeout(timer);
        resolveBus({ url: found.admin, token: found.token, child });
      }
    });
  });
}

async function until(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/** Presses Tab (or Shift+Tab) until `locator` has the focus: proves it is reachable by keyboard. */
async function tabTo(page, locator, { back = false, max = 80 } = {}) {
  const target = await locator.elementHandle();
  assert.ok(target, `${locator} is on the page`);
  for (let i = 0; i < max; i++) {
    if (await page.evaluate((el) => document.activeElement === el, target)) return;
    await page.keyboard.press(back ? 'Shift+Tab' : 'Tab');
  }
  throw new Error(`${locator} cannot be reached with Tab`);
}

async function shot(page, name) {
  await page.waitForTimeout(150);
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
  log(`screenshot ${join(shots, `${name}.png`)}`);
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), 'pigeon-e2e-'));
  const bus = await startBus(dataDir);
  log(`pigeon dev at ${bus.url}`);
  const browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const problems = [];
  try {
    const api = async (path, init = {}) => {
      const response = await fetch(`${bus.url}/api/v1${path}`, { ...init, headers: { Authorization: `Bearer ${bus.token}`, 'Content-Type': 'application/json' } });
      assert.ok(response.ok, `${path}: HTTP ${response.status}`);
      return response.json();
    };
    begin('waiting for the demo module to register its capabilities');
    await until('act-toy/progress.add online', async () => {
      const providers = await api('/providers');
      return providers.some((p) => p.capabilities.some((c) => c.destination === 'act-toy/progress.add' && c.online));
    });
    // Letters of the demo traffic teach the bus what gift.sent letters carry (checked wiring).
    await until('sampled gift.sent letters', async () => (await api('/schemas?topic=live.gift')).some((x) => x.tag === 'gift.sent' && x.sampled > 0));

    const context = await browser.newContext({ viewport: { width: 1366, height: 860 } });
    const page = await context.newPage();
    // Script errors, CSP refusals and server errors are problems. A 4xx is the API refusing
    // bad input on purpose (the test provokes some); the browser logs those loads as errors too.
    page.on('console', (m) => {
      if (m.type() === 'error' && !/the server responded with a status of 4\d\d/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on('response', (r) => { if (r.status() >= 500) problems.push(`HTTP ${r.status()} from ${r.url()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('dialog', (d) => d.accept());

    begin('signing in with the dev token');
    await page.goto(`${bus.url}/`);
    await page.waitForSelector('#token');
    await page.keyboard.type('not-a-token');
    await page.keyboard.press('Enter');
    await page.getByText('That token is not valid').waitFor();
    await shot(page, 'sign-in');
    await page.keyboard.press('Control+A');
    await page.keyboard.type(bus.token);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.locator('#overview-cards').waitFor();
    assert.match(await page.locator('#whoami').innerText(), /admin/);

    begin('creating a pigeon from a registered capability, by keyboard only');
    await page.keyboard.press('g');
    await page.keyboard.press('p');
    await page.getByRole('heading', { name: 'Pigeons', exact: true }).waitFor();
    await page.locator('#pigeon-list').getByText('demo-gift-progress').waitFor();
    await shot(page, 'pigeons');
    await tabTo(page, page.getByRole('link', { name: 'New pigeon' }));
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'New pigeon' }).waitFor();
    await tabTo(page, page.locator('#p-id'));
    await page.keyboard.type(PIGEON);
    await page.keyboard.press('Tab');
    await page.keyboard.type('Gifts become progress points');
    await page.keyboard.press('Tab');
    await page.keyboard.type('e2e');
    await page.keyboard.press('Tab'); // the action
    assert.equal(await page.evaluate(() => document.activeElement.id), 'p-action');
    await page.keyboard.press('ArrowDown'); // forward → script
    assert.equal(await page.locator('#p-action').inputValue(), 'script');
    await tabTo(page, page.locator('#p-topic'));
    await page.keyboard.type('live.gift');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Control+A');
    // Its own tag, so the demo traffic (gift.sent) does not add to the counts checked below.
    await page.keyboard.type('gift.bonus');
    const capability = page.locator('input[data-capability="act-toy/progress.add"]');
    await tabTo(page, capability);
    await page.keyboard.press('Space');
    assert.ok(await capability.isChecked(), 'the capability is picked with Space');
    const wiring = page.locator('#wiring');
    assert.match(await wiring.innerText(), /live\.gift[\s\S]*e2e-gift-points[\s\S]*act-toy\/progress\.add/);
    assert.equal(await wiring.locator('.node.dest.online').count(), 1, 'the capability shows online');

    begin('running the script test on a sample letter');
    await tabTo(page, page.locator('#run-test'));
    await page.keyboard.press('Enter');
    const tested = page.locator('#test-result');
    await tested.getByText('1 letter(s) would be sent.').waitFor();
    const testOutput = JSON.parse(await tested.locator('pre').innerText());
    assert.deepEqual(testOutput, { roomId: 'room-1', userId: 1001, score: 30 }, 'the script reshaped the sample letter');
    await shot(page, 'pigeon-new');

    begin('saving');
    await tabTo(page, page.locator('#save'), { back: true });
    await page.keyboard.press('Enter');
    await page.waitForURL(/#\/pigeons\/e2e-gift-points$/);
    await page.getByRole('heading', { name: `Pigeon ${PIGEON}` }).waitFor();
    const saved = await api(`/pigeons/${PIGEON}`);
    assert.equal(saved.action, 'script');
    assert.deepEqual(saved.destinations, [{ capability: 'act-toy/progress.add' }]);
    assert.deepEqual(saved.match, { topic: 'live.gift', tag: 'gift.bonus' });

    begin('sending a letter and seeing it counted');
    await tabTo(page, page.locator('#fly-send'));
    await page.keyboard.press('Enter');
    await page.locator('#fly-result').getByText('1 delivered, 0 dead-lettered').waitFor();
    // A letter the script refuses: it becomes a dead letter, counted as a failure.
    await tabTo(page, page.locator('#fly-payload'), { back: true });
    await page.keyboard.press('Control+A');
    await page.keyboard.type('{"userId": 1002, "roomId": "room-2", "giftCount": 0}');
    await tabTo(page, page.locator('#fly-send'));
    await page.keyboard.press('Enter');
    await page.locator('#fly-result').getByText('0 delivered, 1 dead-lettered').waitFor();
    await page.keyboard.press('g');
    await page.keyboard.press('o');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    // Counts reach the store within 5 s and the page refreshes every 5 s: wait for both letters.
    const row = page.locator(`#overview-pigeons tr[data-pigeon="${PIGEON}"]`);
    const cells = async () => (await row.locator('td').allInnerTexts()).slice(1, 4);
    await until('both letters counted on the overview', async () => (await row.count()) && (await cells()).join() === '2,1,1', 30_000)
      .catch(async (e) => { throw new Error(`${e.message}; the row reads ${(await row.count()) ? await cells() : 'nothing'}`); });
    assert.deepEqual(await cells(), ['2', '1', '1'], 'two letters in, one out, one failure');
    await shot(page, 'overview');

    begin('fixing and redriving the dead letter');
    await page.keyboard.press('g');
    await page.keyboard.press('l');
    await page.getByRole('heading', { name: 'Dead letters' }).waitFor();
    const dead = (await api(`/dead-letters?pigeon=${PIGEON}`)).items;
    assert.equal(dead.length, 1);
    assert.equal(dead[0].error_kind, 'script');
    const inspect = page.getByRole('button', { name: `Inspect dead letter ${dead[0].id}`, exact: true });
    await tabTo(page, inspect);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: `Dead letter ${dead[0].id}`, exact: true }).waitFor();
    await tabTo(page, page.locator('#dl-payload'));
    await page.keyboard.press('Control+A');
    await page.keyboard.type('{"userId": 1002, "roomId": "room-2", "giftCount": 2}');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter'); // Save payload
    await page.getByText('Payload saved.').waitFor();
    await shot(page, 'dead-letters');
    await tabTo(page, page.locator('#dl-retry-one'));
    await page.keyboard.press('Enter');
    await page.locator('#dl-result').getByText('Redrive: 1 dead letter(s) queued for redelivery now.').waitFor();
    const redelivered = await until('the retrier to deliver the fixed letter', async () => {
      const { letter } = await api(`/dead-letters/${dead[0].id}`);
      return letter.status === 'delivered' && letter;
    });
    assert.equal(redelivered.payload.giftCount, 2);
    // The open letter follows: its status once the retrier is done, after the next action or
    // look. Inspecting it again shows it delivered, no longer editable.
    await tabTo(page, inspect, { back: true });
    await page.keyboard.press('Enter');
    await page.locator('#dl-detail .badge', { hasText: 'delivered' }).first().waitFor();
    assert.ok(await page.locator('#dl-payload').isDisabled(), 'a delivered letter is not edited');

    begin('reading the audit log');
    await page.keyboard.press('g');
    await page.keyboard.press('u');
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    const audit = page.locator('#audit-table');
    for (const action of ['pigeon.create', 'dead_letter.edit', 'dead_letter.retry']) {
      await audit.locator(`tr[data-action="${action}"]`).first().waitFor();
    }
    const created = audit.locator('tr[data-action="pigeon.create"]').first();
    assert.match(await created.innerText(), /pigeon\/e2e-gift-points/);
    await tabTo(page, created.getByRole('button'));
    await page.keyboard.press('Enter');
    const change = audit.locator('tr[data-action="pigeon.create"] + tr .diff').first();
    await change.waitFor();
    assert.match(await change.innerText(), /e2e-gift-points/);
    await shot(page, 'audit');

    begin('the other pages');
    await page.goto(`${bus.url}/ui/#/pigeons/${PIGEON}`);
    await page.locator('#count-in').getByText('2').waitFor({ timeout: 15_000 });
    // A change makes version 2; the history shows what changed.
    await page.locator('#p-name').focus();
    await page.keyboard.press('End');
    await page.keyboard.type(' for the bonus round');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'History (2 versions)' }).waitFor();
    const changed = async (kind) => (await page.locator(`#versions-diff .${kind}`).allInnerTexts()).map((t) => t.trim());
    assert.deepEqual(await changed('del'), ['"name": "Gifts become progress points",']);
    assert.deepEqual(await changed('add'), ['"name": "Gifts become progress points for the bonus round",']);
    await shot(page, 'pigeon');
    await page.goto(`${bus.url}/ui/#/providers`);
    await page.getByRole('heading', { name: 'act-toy' }).waitFor();
    await shot(page, 'providers');
    await page.goto(`${bus.url}/ui/#/dictionary`);
    await page.getByRole('heading', { name: 'Source schemas' }).waitFor();
    await shot(page, 'dictionary');
    await page.goto(`${bus.url}/ui/#/archive`);
    await page.locator('#archive-results table').waitFor();
    await shot(page, 'archive');
    await page.locator('#r-dry').click();
    await page.locator('#replay-result .error').getByText(/to_topic|topic/).waitFor(); // no target yet: said where it happens
    await page.locator('#r-topic').fill('replay.gifts');
    await page.locator('#r-dry').click();
    await page.locator('#replay-result').getByText(/letter\(s\) would be replayed/).waitFor();
    await shot(page, 'archive-replay');

    begin('tracing an archived demo gift to its handler');
    // A demo gift, archived and forwarded to act-toy, whose handler's receipt the bus keeps.
    const now = Date.now();
    const archived = await api('/archive/search', { method: 'POST', body: JSON.stringify({ query: { since: now - 3600_000, until: now + 60_000, tag: 'gift.sent' }, limit: 5 }) });
    assert.ok(archived.items.length > 0, 'demo gifts are archived');
    const gift = archived.items[0].letter_id;
    await page.goto(`${bus.url}/ui/#/trace/${gift}`);
    await until('the gift\'s trace to show its handler\'s receipt', async () => {
      if (await page.locator('#trace-result .hop-title', { hasText: 'Handled by act-toy' }).count()) return true;
      await page.reload();
      await page.locator('#trace-result, #main .error').first().waitFor();
      return false;
    });
    const hops = await page.locator('#trace-result .hop-title').allInnerTexts();
    assert.equal(hops[0], 'Read');
    assert.ok(hops.includes('Pigeon demo-gift-progress · v1 · forward'), hops.join(' | '));
    assert.ok(hops.includes('Archived'), hops.join(' | '));
    assert.match(await page.locator('#trace-result').innerText(), /found in the archive/);
    await page.locator('#trace-result .badge', { hasText: 'acknowledged' }).first().waitFor();
    await shot(page, 'trace');

    assert.deepEqual(problems, [], 'the browser reported no errors');
    log('passed');
  } catch (e) {
    console.error(`[e2e] FAILED while ${step}`);
    if (problems.length) console.error(problems.join('\n'));
    throw e;
  } finally {
    await browser.close();
    bus.child.kill('SIGTERM');
    await new Promise((r) => { bus.child.once('exit', r); setTimeout(r, 20_000); });
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
