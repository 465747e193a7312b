// Drives Debian's chromium (Playwright) through the dashboard of a running
// `ironlake run`. Started by tests/dashboard.rs, which reads the last line of
// stdout (a JSON report) and asserts on it.
//
// Environment: BASE (http://127.0.0.1:PORT), VIEWER_TOKEN, ADMIN_TOKEN,
// SHOTS (directory for screenshots), CHROMIUM (default /usr/bin/chromium).
// Protocol: prints `PUBLISH` when it wants a new publication and waits for a
// `PUBLISHED` line on stdin (the harness backfills a quarter and refreshes).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';

const base = process.env.BASE;
const viewer = process.env.VIEWER_TOKEN;
const admin = process.env.ADMIN_TOKEN;
const shots = process.env.SHOTS || 'target/dashboard-screenshots';
mkdirSync(shots, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

const report = { pages: {}, console_errors: [], expected_errors: [], steps: [] };
const step = s => report.steps.push(s);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// Console errors and uncaught exceptions; `expected` pages are where the test
// provokes a refusal on purpose (a 401, 403), kept apart.
function watch(page, label, expected = false) {
  const sink = expected ? report.expected_errors : report.console_errors;
  page.on('console', m => { if (m.type() === 'error') sink.push(label + ': ' + m.text()); });
  page.on('pageerror', e => sink.push(label + ': ' + e.message));
  // A navigation aborts the previous page's polls: not a failure.
  page.on('requestfailed', r => {
    if (!/ERR_ABORTED/.test(r.failure() && r.failure().errorText)) sink.push(label + ': request failed ' + r.url() + ' ' + r.failure().errorText);
  });
  // Nothing may be loaded from anywhere but this server.
  page.on('request', r => {
    if (!r.url().startsWith(base) && !r.url().startsWith('data:')) report.console_errors.push(label + ': off-site request ' + r.url());
  });
}

async function login(page, token) {
  await page.goto(base + '/login');
  await page.fill('[data-testid=token]', token);
  await page.click('[data-testid=login]');
  await page.waitForURL(u => !u.pathname.startsWith('/login'));
}

async function chartPoints(page) {
  await page.waitForSelector('[data-testid=chart] svg', { timeout: 15000 });
  return page.$eval('[data-testid=chart] svg', s => ({
    points: Number(s.getAttribute('data-points')),
    marks: s.querySelectorAll('path, rect, circle').length,
  }));
}

async function tableText(page) {
  return page.$$eval('[data-testid=rows] tbody tr', trs => trs.map(tr => tr.innerText));
}

try {
  // 1. Without a session the dashboard sends the browser to /login.
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await ctx.newPage();
  watch(page, 'viewer');
  await page.goto(base + '/');
  await page.waitForURL(/\/login/);
  report.redirected_to_login = new URL(page.url()).pathname === '/login';
  step('redirect');

  // 2. A viewer logs in; the overview shows a card per goal with sparklines.
  await login(page, viewer);
  await page.waitForSelector('[data-testid=card-industry_yoy_pct] [data-testid=value]');
  await page.waitForFunction(() => document.querySelectorAll('.spark svg').length >= 8, null, { timeout: 15000 });
  report.overview = await page.evaluate(() => ({
    cards: [...document.querySelectorAll('.card')].map(c => ({
      id: c.getAttribute('data-testid'),
      value: c.querySelector('[data-testid=value]').innerText,
      points: Number((c.querySelector('.spark svg') || { getAttribute: () => 0 }).getAttribute('data-points')),
    })),
    freshness: document.querySelector('[data-testid=freshness]').innerText,
    role: (document.querySelector('[data-testid=role]') || {}).innerText,
  }));
  report.cookie = (await ctx.cookies()).map(c => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));
  report.cookie_visible_to_script = await page.evaluate(() => document.cookie);
  // First paint and page weight of a fresh load of the overview.
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('.spark svg').length >= 8, null, { timeout: 15000 });
  report.overview_timing = await page.evaluate(() => {
    const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
    const nav = performance.getEntriesByType('navigation')[0];
    const resources = performance.getEntriesByType('resource');
    return {
      first_contentful_paint_ms: paint ? Math.round(paint.startTime) : null,
      dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
      bytes: nav.transferSize + resources.reduce((s, r) => s + (r.transferSize || 0), 0),
      decoded_bytes: nav.decodedBodySize + resources.reduce((s, r) => s + (r.decodedBodySize || 0), 0),
      requests: 1 + resources.length,
    };
  });
  await page.screenshot({ path: shots + '/overview-1366.png', fullPage: true });
  step('overview');

  // 3. Every published aggregate has a page with a chart and a table.
  const list = await page.evaluate(async () => (await (await fetch('/api/v1/aggregates')).json()).aggregates.map(a => a.name));
  for (const name of list) {
    await page.goto(base + '/indicators/' + name);
    const chart = await chartPoints(page);
    await page.waitForSelector('[data-testid=rows], [data-testid=empty]');
    const rows = await page.$$eval('[data-testid=rows] tbody tr', t => t.length);
    const definition = await page.$eval('[data-testid=definition]', d => d.textContent.length);
    report.pages[name] = { chart, rows, definition };
    await page.screenshot({ path: shots + '/indicator-' + name + '.png', fullPage: false });
  }
  step('pages');

  // 4. The district selector changes the numbers (financing_cost: 全市 vs one district).
  await page.goto(base + '/indicators/financing_cost');
  await chartPoints(page);
  const cityRows = await tableText(page);
  const cityChart = await page.$eval('[data-testid=chart] svg', s => s.outerHTML);
  const district = await page.$$eval('[data-testid=district] option', os => os.map(o => o.value).find(v => /^5001/.test(v)));
  await page.selectOption('[data-testid=district]', district);
  await page.waitForFunction(t => {
    const first = document.querySelector('[data-testid=rows] tbody tr');
    return first && first.innerText !== t;
  }, cityRows[0], { timeout: 15000 });
  await chartPoints(page);
  const districtRows = await tableText(page);
  const districtChart = await page.$eval('[data-testid=chart] svg', s => s.outerHTML);
  report.district = {
    code: district,
    city_first_row: cityRows[0],
    district_first_row: districtRows[0],
    chart_changed: cityChart !== districtChart,
    rows_all_in_district: districtRows.every(r => r.includes(district)),
  };
  await page.screenshot({ path: shots + '/financing_cost-district.png', fullPage: false });
  step('district');

  // 5. A new publication appears without a reload.
  await page.goto(base + '/indicators/loan_growth');
  await chartPoints(page);
  const before = {
    version: await page.$eval('[data-testid=version]', e => e.innerText),
    quarters: (await tableText(page)).map(r => r.split('\t')[0]),
    points: (await chartPoints(page)).points,
  };
  await page.evaluate(() => { window.__not_reloaded = true; });
  console.log('PUBLISH');
  const answer = await lines.next();
  if (answer.value !== 'PUBLISHED') throw new Error('harness said ' + answer.value);
  await page.waitForFunction(v => document.querySelector('[data-testid=version]').innerText !== v, before.version, { timeout: 30000 });
  await page.waitForSelector('[data-testid=chart] svg');
  const after = {
    version: await page.$eval('[data-testid=version]', e => e.innerText),
    quarters: (await tableText(page)).map(r => r.split('\t')[0]),
    points: (await chartPoints(page)).points,
    not_reloaded: await page.evaluate(() => window.__not_reloaded === true),
  };
  report.publication = { before, after };
  await page.screenshot({ path: shots + '/loan_growth-updated.png', fullPage: false });
  step('publication');

  // 6. Operations as a viewer: visible, but running a pipeline is not offered...
  await page.goto(base + '/ops');
  await page.waitForSelector('[data-testid=pipelines]');
  report.viewer_ops = {
    pipelines: await page.$$eval('[data-testid=pipelines] tbody tr', t => t.length),
    tables: await page.$$eval('[data-testid=tables] tbody tr', t => t.map(r => r.innerText)),
    run_buttons_disabled: await page.$$eval('[data-testid^=run-]', bs => bs.length > 0 && bs.every(b => b.disabled)),
  };
  await page.screenshot({ path: shots + '/ops-viewer.png', fullPage: true });
  // ...and refused when forced (with the session's CSRF token).
  const forced = await ctx.newPage();
  watch(forced, 'viewer forcing a run', true);
  await forced.goto(base + '/ops');
  await forced.waitForSelector('[data-testid=pipelines]');
  report.viewer_forced_status = await forced.evaluate(async () => {
    const s = await (await fetch('/ui/session')).json();
    const r = await fetch('/api/v1/pipelines/financing_demands/runs', { method: 'POST', headers: { 'X-CSRF-Token': s.csrf } });
    return r.status;
  });
  await forced.close();
  step('viewer');

  // 7. An admin runs a pipeline from the operations page.
  const actx = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const apage = await actx.newPage();
  watch(apage, 'admin');
  await login(apage, admin);
  await apage.goto(base + '/ops');
  await apage.waitForSelector('[data-testid=run-financing_demands]:not([disabled])');
  const runsBefore = await apage.evaluate(async () => (await (await fetch('/api/v1/runs?pipeline=financing_demands&limit=1000')).json()).runs.length);
  await apage.click('[data-testid=run-financing_demands]');
  await apage.waitForFunction(() => /已启动/.test(document.getElementById('toast').innerText), null, { timeout: 10000 });
  const runs = () => apage.evaluate(async () => (await (await fetch('/api/v1/runs?pipeline=financing_demands&limit=1000')).json()).runs);
  for (let i = 0; i < 60; i++) {
    const r = await runs();
    if (r.length > runsBefore && r[0].outcome !== 'running') break;
    await apage.waitForTimeout(500);
  }
  report.admin_run = (await runs())[0];
  await apage.screenshot({ path: shots + '/ops-admin.png', fullPage: true });
  // A POST with the admin's cookie but without the CSRF token is refused.
  const csrf = await actx.newPage();
  watch(csrf, 'admin without CSRF token', true);
  await csrf.goto(base + '/ops');
  report.admin_without_csrf_status = await csrf.evaluate(async () =>
    (await fetch('/api/v1/pipelines/financing_demands/runs', { method: 'POST' })).status);
  await csrf.close();
  step('admin');

  // 8. Phone width: the overview and an indicator fit without sideways scrolling.
  const pctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const ppage = await pctx.newPage();
  watch(ppage, 'phone');
  await login(ppage, viewer);
  await ppage.waitForFunction(() => document.querySelectorAll('.spark svg').length >= 8, null, { timeout: 15000 });
  report.phone = { overview_overflow: await ppage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth) };
  await ppage.screenshot({ path: shots + '/overview-phone.png', fullPage: true });
  await ppage.goto(base + '/indicators/demand_funnel');
  await chartPoints(ppage);
  report.phone.indicator_overflow = await ppage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await ppage.screenshot({ path: shots + '/demand_funnel-phone.png', fullPage: true });
  step('phone');

  // 9. A wrong token is refused with a message.
  const wctx = await browser.newContext();
  const wpage = await wctx.newPage();
  watch(wpage, 'wrong token', true);
  await wpage.goto(base + '/login');
  await wpage.fill('[data-testid=token]', 'not-a-token');
  await wpage.click('[data-testid=login]');
  await wpage.waitForFunction(() => document.querySelector('[data-testid=login-message]').innerText.length > 0, null, { timeout: 20000 });
  report.wrong_token = { message: await wpage.$eval('[data-testid=login-message]', e => e.innerText), path: new URL(wpage.url()).pathname };
  step('wrong token');
} catch (e) {
  report.failure = String(e && e.stack || e);
} finally {
  await browser.close();
  stdin.close();
}
console.log(JSON.stringify(report));
