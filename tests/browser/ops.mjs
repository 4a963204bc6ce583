// The operators' dashboard in a real browser: seeds a running Herald through its API, signs
// in at /ops with an admin key, checks that the key numbers and the throughput chart render,
// opens a failed message from the search field, retries it, and saves screenshots under
// target/. Run by tests/browser/run, which starts Herald and passes HERALD_URL, HERALD_KEY
// (admin) and HERALD_SEND_KEY.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

const base = process.env.HERALD_URL;
const adminKey = process.env.HERALD_KEY;
const sendKey = process.env.HERALD_SEND_KEY;
const shots = process.env.SCREENSHOTS || 'target';
mkdirSync(shots, { recursive: true });

async function call(method, path, key, body) {
  const r = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

// Seed: 20 emails that will be sent, 3 SMS that will fail, 1 email due next year.
for (let i = 0; i < 20; i++) {
  await call('POST', '/v1/notifications', sendKey, {
    channel: 'email', to: `user${i}@example.com`, tags: ['welcome'],
    content: { subject: `Welcome ${i}`, text: 'Hello' },
  });
}
const failedIds = [];
for (let i = 0; i < 3; i++) {
  const n = await call('POST', '/v1/notifications', sendKey, {
    channel: 'sms', to: `+1415555010${i}`, content: { text: 'Your code is 1234' },
  });
  failedIds.push(n.id);
}
await call('POST', '/v1/notifications', sendKey, {
  channel: 'email', to: 'later@example.com', tags: ['later'], send_at: '2099-01-01T00:00:00Z',
  content: { subject: 'Later', text: 'Later' },
});
// Wait for dispatch to finish with them.
for (let i = 0; ; i++) {
  const s = await call('GET', '/v1/stats?window=1h', adminKey);
  if (s.notifications.by_status.sent === 20 && s.notifications.by_status.failed === 3) break;
  assert.ok(i < 100, `dispatch did not finish: ${JSON.stringify(s.notifications)}`);
  await new Promise((r) => setTimeout(r, 100));
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
const problems = [];
page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
page.on('pageerror', (e) => problems.push(e.message));
const text = (sel) => page.locator(sel).first().innerText({ timeout: 10000 });

try {
  await page.goto(`${base}/ops`);
  // Sign in: paste the key into the sign-in field and press Enter.
  const signIn = page.locator('#sign-in-view input').first();
  await signIn.fill(adminKey);
  await signIn.press('Enter');

  // The key numbers, the chart, the queue, the providers and the failures.
  assert.equal(await text('[data-testid="count-1h-sent"] b'), '20');
  assert.equal(await text('[data-testid="count-1h-failed"] b'), '3');
  assert.equal(await text('[data-testid="count-1h-scheduled"] b'), '1');
  assert.equal(await text('[data-testid="total-24h"]'), '24');
  assert.equal(await text('[data-testid="queue-email-normal"]'), '1');
  const points = await page.locator('svg#throughput polyline[data-series="sent"]').getAttribute('points');
  assert.ok(points.split(' ').length >= 55, `a throughput line of about 60 points: ${points}`);
  assert.match(await text('tr[data-provider="flaky"]'), /100\.0%/);
  assert.equal(await page.locator('#failures a').count(), 3);
  // The chart's legend says the window's totals; times say their zone; the latency table's
  // rows have their own headers.
  assert.equal(await text('[data-testid="window-accepted"]'), '24');
  assert.equal(await text('[data-testid="window-failed"]'), '3');
  assert.match(await text('#failures tr:nth-child(2) td:last-child'), /\b(UTC|GMT[+-]?\d*|[A-Z]{3,5})$/);
  assert.equal(await page.locator('th[scope="row"]').count(), 2);
  // The window buttons change the cards that follow them.
  await page.locator('button[data-window="5m"]').click();
  await page.locator('[data-testid="total-5m"]').waitFor();
  assert.equal(await text('[data-testid="total-5m"]'), '24');
  assert.match(await text("#content"), /throughput · last 5m/i);
  await page.locator('button[data-window="1h"]').click();
  await page.locator('[data-testid="total-1h"]').waitFor();
  // The key is kept in session storage, never in the address.
  assert.ok(!page.url().includes(adminKey));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.key')), adminKey);
  // Numbers refresh without a reload: a new notification shows up in the counts.
  await call('POST', '/v1/notifications', sendKey, { channel: 'email', to: 'fresh@example.com', content: { subject: 'x', text: 'y' } });
  await page.locator('[data-testid="total-24h"]', { hasText: '25' }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/ops-dashboard.png`, fullPage: true });

  // The search field is the first input of the signed-in page; an id opens the message.
  const first = await page.evaluate(() => document.querySelector('#app-view input').id);
  assert.equal(first, 'search');
  await page.locator('#search').fill(failedIds[0]);
  await page.locator('#search').press('Enter');
  await page.locator('#timeline li[data-type="attempt"]').first().waitFor();
  assert.equal(await text('[data-testid="status"]'), 'failed');
  // What was sent: the text, and how carriers bill it.
  assert.equal(await text('#sent-message [data-testid="text"]'), 'Your code is 1234');
  assert.equal(await text('#sent-message [data-testid="sms"]'), 'GSM-7, 1 segment');
  assert.match(await text('#timeline li[data-type="attempt"]'), /recipient_invalid|permanent|chaos/);
  // Retry (admin) requeues it: the timeline says so.
  await page.locator('#retry').click();
  await page.locator('#timeline li[data-type="retried"]').waitFor();
  await page.screenshot({ path: `${shots}/ops-message.png`, fullPage: true });

  // A tag lists its notifications.
  await page.locator('#search').fill('later');
  await page.locator('#search').press('Enter');
  await page.locator('#results a').first().waitFor();
  assert.equal(await page.locator('#results a').count(), 1);

  // A sign-in link (`herald ops-link`) opens the dashboard with its tenant's read scope, leaves
  // nothing in the address, and works once.
  const linkPage = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  linkPage.on('pageerror', (e) => problems.push(e.message));
  const opsLink = `${base}/ops#link=${process.env.HERALD_OPS_TOKEN}`;
  await linkPage.goto(opsLink);
  await linkPage.locator('#who', { hasText: 'tenant acme' }).waitFor({ timeout: 10000 });
  assert.ok(!linkPage.url().includes('link='), `the token left the address: ${linkPage.url()}`);
  assert.equal(await linkPage.locator('#retry').count(), 0, 'read scope: no actions');
  const again = await browser.newPage();
  await again.goto(opsLink);
  await again.locator('#sign-in-error', { hasText: 'used already' }).waitFor({ timeout: 10000 });

  assert.deepEqual(problems, [], 'no errors in the browser console (CSP violations included)');
  console.log(`dashboard ok; screenshots in ${shots}/ops-dashboard.png and ${shots}/ops-message.png`);
} finally {
  await browser.close();
}
