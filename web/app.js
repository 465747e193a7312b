// ironlake dashboard: the programme's indicators in a browser.
// Plain JavaScript, no third-party code; charts are SVG drawn by the server
// (GET /api/v1/aggregates/{name}/chart.svg). Pages: / (overview),
// /indicators/{name}, /ops, /login. The page follows new publications by
// polling GET /api/v1/aggregates with If-None-Match (a 304 when unchanged).
'use strict';

const POLL_MS = 3000;
const MAX_TABLE_ROWS = 500;

const state = {
  session: null, // {role, csrf, public_aggregates}
  list: null, // GET /api/v1/aggregates
  listEtag: null,
  districts: null,
  render: null, // redraws the current page with fresh data
  versions: {}, // aggregate -> version shown
};

// The plan's goals, one card each: which column, which way the plan wants it.
const GOALS = [
  { agg: 'loan_growth', col: 'industry_yoy_pct', title: '工业贷款增速', en: 'Industrial loans, yoy', want: 'match', wantText: '与制造业贷款增速基本相当' },
  { agg: 'loan_growth', col: 'manufacturing_yoy_pct', title: '制造业贷款增速', en: 'Manufacturing loans, yoy', want: 'match', wantText: '与工业贷款增速基本相当' },
  { agg: 'loan_growth', col: 'gap_pp', title: '增速差 (制造业 − 工业)', en: 'Growth gap', want: 'zero', wantText: '期望接近 0 (about equal)' },
  { agg: 'direct_financing_growth', col: 'bond_yoy_pct', title: '债券融资增长', en: 'Bond financing, yoy', want: 'up', wantText: '期望上升 ↑' },
  { agg: 'direct_financing_growth', col: 'equity_yoy_pct', title: '股权融资增长', en: 'Equity financing, yoy', want: 'up', wantText: '期望上升 ↑' },
  { agg: 'financing_cost', col: 'fin_expense_ratio_pct', all: true, title: '财务费用/主营业务成本', en: 'Financial expenses ÷ cost', want: 'down', wantText: '期望下降 ↓' },
  { agg: 'financing_cost', col: 'avg_loan_rate_pct', all: true, title: '平均贷款利率', en: 'Average loan rate', want: 'down', wantText: '期望低 ↓' },
  { agg: 'financing_cost', col: 'avg_comprehensive_cost_pct', all: true, title: '综合融资成本', en: 'Comprehensive financing cost', want: 'down', wantText: '期望低 ↓' },
];

// Charts worth drawing first for the bundled indicators; any other published
// aggregate gets a chart chosen from its columns (see defaultChart).
const CHARTS = {
  loan_growth: { y: ['industry_yoy_pct', 'manufacturing_yoy_pct'], kind: 'line' },
  direct_financing_growth: { y: ['bond_amount', 'equity_amount'], kind: 'bar' },
  financing_cost: { y: ['fin_expense_ratio_pct', 'avg_loan_rate_pct', 'avg_comprehensive_cost_pct'], kind: 'line' },
  demand_funnel: { y: ['n_submitted', 'n_screened', 'n_recommended', 'n_accepted', 'n_credit_granted', 'n_funded', 'n_rejected', 'n_withdrawn'], kind: 'stacked' },
  matching_list: { y: ['amount'], kind: 'bar' },
  interest_subsidy: { y: ['subsidy', 'first_year_interest'], kind: 'bar' },
  bank_lending: { y: ['industry_yoy_pct', 'credit_share_pct', 'medium_long_share_pct'], kind: 'line' },
};

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (opts.method && opts.method !== 'GET' && state.session && state.session.csrf) {
    headers['X-CSRF-Token'] = state.session.csrf;
  }
  return fetch(path, Object.assign({}, opts, { headers, credentials: 'same-origin' }));
}

async function getJson(path, opts) {
  const r = await call(path, opts);
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error || message; } catch (_) { /* not JSON */ }
    throw new HttpError(r.status, message);
  }
  return r.json();
}

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

function nf(v, digits) {
  return Number(v).toLocaleString('zh-CN', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

// Money in 亿元/万元/元, percentages with 2 decimals, counts with separators.
function fmt(v, unit) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'boolean') return v ? '是' : '否';
  if (typeof v !== 'number') return String(v);
  if (unit === 'CNY yuan') {
    const a = Math.abs(v);
    if (a >= 1e8) return nf(v / 1e8, 2) + ' 亿元';
    if (a >= 1e4) return nf(v / 1e4, 2) + ' 万元';
    return nf(v, 2) + ' 元';
  }
  if (unit === 'percentage points') return nf(v, 2) + ' 个百分点';
  if (unit && unit.startsWith('percent')) return nf(v, 2) + '%';
  if (Number.isInteger(v)) return nf(v, 0);
  return nf(v, 4).replace(/0+$/, '').replace(/\.$/, '');
}

function prevYear(q) {
  return String(Number(q.slice(0, 4)) - 1) + q.slice(4);
}

function when(ts, timeZone) {
  if (!ts) return '—';
  const d = new Date(ts);
  if (isNaN(d)) return String(ts);
  try {
    return d.toLocaleString('zh-CN', { hour12: false, timeZone: timeZone || undefined });
  } catch (_) {
    return d.toLocaleString('zh-CN', { hour12: false });
  }
}

function age(secs) {
  if (secs === null || secs === undefined) return '—';
  if (secs < 120) return secs + ' 秒';
  if (secs < 7200) return Math.round(secs / 60) + ' 分钟';
  if (secs < 172800) return Math.round(secs / 3600) + ' 小时';
  return Math.round(secs / 86400) + ' 天';
}

function titleOf(agg) {
  const d = (agg && agg.description) || '';
  const i = d.indexOf(':');
  return i > 0 && i < 40 ? d.slice(0, i) : (agg ? agg.name : '');
}

function isNumericType(t) {
  return /^(Decimal|Int|UInt|Float)/.test(t || '');
}

function aggregateOf(name) {
  return state.list && state.list.aggregates.find(a => a.name === name);
}

// ---------- session, navigation, polling ----------

async function loadSession() {
  state.session = await getJson('/ui/session');
}

function canRead() {
  return state.session.public_aggregates || !!state.session.role;
}

function navigate(path) {
  history.pushState(null, '', path);
  route();
}

document.addEventListener('click', e => {
  const a = e.target.closest && e.target.closest('a[data-link]');
  if (a && !e.ctrlKey && !e.metaKey && !e.shiftKey && a.origin === location.origin) {
    e.preventDefault();
    navigate(a.pathname + a.search);
  }
});
window.addEventListener('popstate', () => route());

function renderChrome() {
  const nav = document.getElementById('nav');
  nav.replaceChildren();
  const here = location.pathname;
  const link = (href, text) => h('a', { href, 'data-link': true, class: here === href ? 'active' : null }, text);
  nav.append(link('/', '总览 Overview'));
  if (state.list) {
    const current = here.startsWith('/indicators/') ? decodeURIComponent(here.slice('/indicators/'.length)) : '';
    const pick = h('select', { 'data-testid': 'nav-indicator', 'aria-label': '指标 Indicators',
      onchange: e => { if (e.target.value) navigate('/indicators/' + e.target.value); } },
      h('option', { value: '' }, '指标 Indicators…'),
      state.list.aggregates.map(a => h('option', { value: a.name }, titleOf(a))));
    pick.value = current;
    nav.append(pick);
  }
  nav.append(link('/ops', '运维 Operations'));
  const who = document.getElementById('who');
  who.replaceChildren();
  if (state.session && state.session.role) {
    who.append(h('span', { 'data-testid': 'role' }, '已登录 ' + state.session.role));
    who.append(h('button', { class: 'secondary', type: 'button', onclick: logout }, '退出 Log out'));
  } else {
    who.append(h('a', { href: '/login', 'data-link': true }, '登录 Log in'));
  }
}

async function logout() {
  await call('/logout', { method: 'POST' });
  await loadSession();
  navigate('/login');
}

async function loadList() {
  const headers = state.listEtag ? { 'If-None-Match': state.listEtag } : {};
  const r = await call('/api/v1/aggregates', { headers, cache: 'no-store' });
  if (r.status === 304) return false;
  if (!r.ok) throw new HttpError(r.status, (await r.json()).error);
  state.list = await r.json();
  state.listEtag = r.headers.get('ETag');
  return true;
}

async function poll() {
  try {
    if (canRead() && await loadList()) {
      const changed = state.list.aggregates.filter(a => state.versions[a.name] !== undefined && state.versions[a.name] !== a.version);
      if (changed.length && state.render) {
        toast('已更新 Updated: ' + changed.map(a => a.name + ' v' + a.version).join(', '));
        await state.render();
      }
    }
    if (location.pathname === '/ops' && state.render && Date.now() - (poll.ops || 0) > 10000) {
      poll.ops = Date.now();
      await state.render();
    }
  } catch (e) {
    // A transient failure: the next poll tries again.
  }
  setTimeout(poll, POLL_MS);
}

function shown(name) {
  const a = aggregateOf(name);
  if (a) state.versions[a.name] = a.version;
  return a;
}

function errorBox(e) {
  return h('p', { class: 'state error', 'data-testid': 'error' }, '出错了 Error: ' + (e.message || e));
}

async function route() {
  const main = document.getElementById('main');
  state.render = null;
  state.versions = {};
  const path = location.pathname;
  try {
    if (!state.session) await loadSession();
    if (path !== '/login' && !canRead()) {
      location.replace('/login?next=' + encodeURIComponent(path));
      return;
    }
    if (canRead() && !state.list) await loadList();
    renderChrome();
    let page;
    if (path === '/login') page = loginPage;
    else if (path === '/ops') page = opsPage;
    else if (path.startsWith('/indicators/')) page = view => indicatorPage(view, decodeURIComponent(path.slice('/indicators/'.length)));
    else page = overviewPage;
    main.replaceChildren(h('p', { class: 'state loading' }, '加载中… Loading…'));
    const view = h('div');
    state.render = async () => {
      try {
        await page(view);
      } catch (e) {
        view.replaceChildren(errorBox(e));
      }
    };
    await state.render();
    main.replaceChildren(view);
  } catch (e) {
    main.replaceChildren(errorBox(e));
  }
}

// ---------- charts ----------

function chartUrl(name, y, kind, params, w, hgt) {
  const q = new URLSearchParams(params || {});
  q.set('y', y.join(','));
  q.set('kind', kind);
  q.set('w', String(w));
  q.set('h', String(hgt));
  return '/api/v1/aggregates/' + encodeURIComponent(name) + '/chart.svg?' + q.toString();
}

async function svgInto(el, url) {
  const r = await call(url);
  if (!r.ok) throw new HttpError(r.status, r.statusText);
  const text = await r.text();
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  el.replaceChildren(document.importNode(doc.documentElement, true));
}

// ---------- overview ----------

async function overviewPage(view) {
  const list = state.list.aggregates;
  const latestQuarter = list.flatMap(a => a.quarters || []).sort().pop();
  const refreshed = list.map(a => a.published_at).filter(Boolean).sort().pop();
  const rows = {};
  for (const name of new Set(GOALS.map(g => g.agg))) {
    if (!shown(name)) continue;
    const params = GOALS.find(g => g.agg === name).all ? '?district_code=ALL' : '';
    rows[name] = await getJson('/api/v1/aggregates/' + name + params);
  }
  const cards = h('div', { class: 'cards' });
  for (const g of GOALS) {
    const data = rows[g.agg];
    if (!data) continue;
    const agg = aggregateOf(g.agg);
    const col = (agg.columns || []).find(c => c.name === g.col) || {};
    const withValue = data.filter(r => r[g.col] !== null && r[g.col] !== undefined);
    const last = withValue[withValue.length - 1];
    const prior = last && data.find(r => r.quarter === prevYear(last.quarter));
    let delta = null;
    let verdict = '';
    if (last && prior && prior[g.col] !== null) {
      delta = last[g.col] - prior[g.col];
      const better = g.want === 'up' ? delta > 0 : g.want === 'down' ? delta < 0
        : g.want === 'zero' ? Math.abs(last[g.col]) < Math.abs(prior[g.col]) : null;
      verdict = better === null ? '' : better ? 'good' : 'bad';
    }
    const spark = h('div', { class: 'spark' });
    const params = g.all ? { district_code: 'ALL' } : {};
    svgInto(spark, chartUrl(g.agg, [g.col], 'spark', params, 240, 40)).catch(() => spark.replaceChildren());
    cards.append(h('a', { class: 'card', href: '/indicators/' + g.agg, 'data-link': true, 'data-testid': 'card-' + g.col },
      h('h3', {}, g.title, h('small', {}, g.en)),
      h('div', { class: 'value', 'data-testid': 'value' }, last ? fmt(last[g.col], col.unit) : '—', h('small', {}, last ? last.quarter : '暂无数据')),
      h('div', { class: 'delta ' + verdict }, delta === null ? '较上年同期: —' : '较上年同期 ' + (delta >= 0 ? '+' : '') + nf(delta, 2) + ' 个百分点'),
      spark,
      h('div', { class: 'want' }, g.wantText)));
  }
  view.replaceChildren(
    h('h1', {}, '总览', h('small', {}, 'Overview: the plan’s goals')),
    h('p', { class: 'meta', 'data-testid': 'freshness' },
      '数据截至 ' + (latestQuarter || '—') + ' · 最近发布 (last refresh) ' + when(refreshed)),
    cards.children.length ? cards : h('p', { class: 'state' }, '暂无数据 (nothing published yet)'),
    h('h2', {}, '全部指标', h('small', {}, 'All published indicators')),
    h('ul', {}, list.map(a => h('li', {},
      h('a', { href: '/indicators/' + a.name, 'data-link': true }, titleOf(a)),
      ' — ', a.name, ' · v' + a.version + ' · ' + (a.rows ?? 0) + ' 行'))));
}

// ---------- one indicator ----------

function defaultChart(agg, rows) {
  if (CHARTS[agg.name]) return CHARTS[agg.name];
  const cols = (agg.columns || []).filter(c => isNumericType(c.type));
  const text = (agg.columns || []).filter(c => !isNumericType(c.type) && c.name !== 'quarter' && c.name !== 'district_name').map(c => c.name);
  const withAll = text.filter(c => rows.some(r => r[c] === 'ALL'));
  const perQuarter = {};
  for (const r of rows) {
    if (withAll.every(c => r[c] === 'ALL')) perQuarter[r.quarter] = (perQuarter[r.quarter] || 0) + 1;
  }
  const single = Object.values(perQuarter).every(n => n <= 1);
  const pct = cols.filter(c => (c.unit || '').startsWith('percent'));
  const money = cols.filter(c => c.unit === 'CNY yuan');
  if (single && pct.length) return { y: pct.slice(0, 3).map(c => c.name), kind: 'line' };
  return { y: (money.length ? money : cols).slice(0, 3).map(c => c.name), kind: 'bar' };
}

function filterParams(ctl) {
  const p = {};
  if (ctl.district && ctl.district !== '*') p.district_code = ctl.district;
  if (ctl.from) p.from = ctl.from;
  if (ctl.to) p.to = ctl.to;
  return p;
}

async function indicatorPage(view, name) {
  const agg = shown(name);
  if (!agg) {
    view.replaceChildren(h('p', { class: 'state error' }, '没有这个指标 (no published aggregate named ' + name + ')'));
    return;
  }
  if (!state.districts) state.districts = (await getJson('/ui/districts')).districts;
  const def = await getJson('/api/v1/aggregates/' + encodeURIComponent(name) + '/definition');
  const hasDistrict = agg.columns.some(c => c.name === 'district_code');
  const ctl = view.ctl && view.ctl.name === name ? view.ctl : {
    name, district: hasDistrict ? 'ALL' : null, from: null, to: null, y: null, search: '', sort: null, desc: false,
  };
  view.ctl = ctl;
  let params = filterParams(ctl);
  let rows = await getJson('/api/v1/aggregates/' + encodeURIComponent(name) + '?' + new URLSearchParams(params));
  if (!rows.length && ctl.district === 'ALL' && !ctl.triedAll) {
    // No city-wide rows (per-enterprise or per-category tables): show every district.
    ctl.triedAll = true;
    ctl.district = '*';
    params = filterParams(ctl);
    rows = await getJson('/api/v1/aggregates/' + encodeURIComponent(name) + '?' + new URLSearchParams(params));
  }
  if (!ctl.y) Object.assign(ctl, defaultChart(agg, rows));
  const redraw = () => state.render();

  // Controls: district, quarter range, series.
  const controls = h('div', { class: 'controls' });
  if (hasDistrict) {
    const sel = h('select', { 'data-testid': 'district', onchange: e => { ctl.district = e.target.value; redraw(); } },
      h('option', { value: '*' }, '全部行 (all rows)'),
      state.districts.map(d => h('option', { value: d.code }, d.name + (d.code === 'ALL' ? '' : ' ' + d.code))));
    sel.value = ctl.district;
    controls.append(h('label', {}, '区县 District', sel));
  }
  const quarters = agg.quarters || [];
  const qsel = (key, label) => h('label', {}, label,
    h('select', { 'data-testid': key, onchange: e => { ctl[key] = e.target.value || null; redraw(); } },
      h('option', { value: '' }, key === 'from' ? '最早' : '最新'),
      quarters.map(q => h('option', { value: q, selected: q === ctl[key] }, q))));
  controls.append(qsel('from', '起 From'), qsel('to', '止 To'));
  const numeric = agg.columns.filter(c => isNumericType(c.type));
  const series = h('div', { class: 'series', 'data-testid': 'series' }, numeric.map(c => h('label', {},
    h('input', { type: 'checkbox', checked: ctl.y.includes(c.name), onchange: e => {
      ctl.y = e.target.checked ? ctl.y.concat([c.name]) : ctl.y.filter(x => x !== c.name);
      if (!ctl.y.length) ctl.y = [c.name];
      redraw();
    } }), c.label || c.name)));
  controls.append(h('label', {}, '图表 Series', series));

  // Chart.
  const chart = h('div', { class: 'chart', 'data-testid': 'chart' }, h('p', { class: 'state loading' }, '加载中…'));
  const width = Math.max(320, Math.min(1300, (document.getElementById('main').clientWidth || 900) - 24));
  const chartParams = Object.assign({}, params);
  if (ctl.district === '*') delete chartParams.district_code;
  svgInto(chart, chartUrl(name, ctl.y, ctl.kind, chartParams, width, width < 500 ? 260 : 340))
    .catch(e => chart.replaceChildren(errorBox(e)));

  // Downloads through the API, with the same filters.
  const dl = fmt2 => '/api/v1/aggregates/' + encodeURIComponent(name) + '?' + new URLSearchParams(Object.assign({ format: fmt2 }, params));
  const downloads = h('div', { class: 'downloads' },
    h('a', { href: dl('csv'), download: name + '.csv', 'data-testid': 'download-csv' }, '下载 CSV'),
    h('a', { href: dl('parquet'), download: name + '.parquet', 'data-testid': 'download-parquet' }, '下载 Parquet'),
    h('span', { class: 'meta' }, rows.length + ' 行 rows'));

  const extra = [];
  if (name === 'interest_subsidy' || name === 'guarantee_fee_subsidy' || name === 'working_capital_subsidy') {
    extra.push(h('h2', {}, '按季度、区县合计', h('small', {}, 'Totals per quarter and district')), totalsTable(rows, agg));
  }

  view.replaceChildren(
    h('h1', {}, titleOf(agg), h('small', {}, name)),
    h('p', { class: 'meta', 'data-testid': 'version' }, '版本 v' + agg.version + ' · 发布于 ' + when(agg.published_at) + ' · ' + quarters.length + ' 个季度'),
    controls, chart, downloads, ...extra,
    h('h2', {}, '明细', h('small', {}, 'Rows')),
    dataTable(rows, agg, ctl),
    definitionBox(def));
}

function totalsTable(rows, agg) {
  const money = agg.columns.filter(c => c.unit === 'CNY yuan').map(c => c.name);
  const groups = new Map();
  for (const r of rows) {
    const key = r.quarter + '|' + (r.district_code || '');
    const g = groups.get(key) || { quarter: r.quarter, district: r.district_name || r.district_code || '', n: 0, sums: {} };
    g.n += 1;
    for (const m of money) g.sums[m] = (g.sums[m] || 0) + (r[m] || 0);
    groups.set(key, g);
  }
  const sorted = [...groups.values()].sort((a, b) => (a.quarter + a.district).localeCompare(b.quarter + b.district));
  return h('div', { class: 'scroll' }, h('table', { 'data-testid': 'totals' },
    h('thead', {}, h('tr', {}, h('th', {}, '季度'), h('th', {}, '区县'), h('th', {}, '企业数'),
      money.map(m => h('th', {}, (agg.columns.find(c => c.name === m) || {}).label || m)))),
    h('tbody', {}, sorted.map(g => h('tr', {}, h('td', {}, g.quarter), h('td', {}, g.district), h('td', { class: 'num' }, g.n),
      money.map(m => h('td', { class: 'num', title: String(g.sums[m]) }, fmt(g.sums[m], 'CNY yuan'))))))));
}

function dataTable(rows, agg, ctl) {
  const cols = agg.columns;
  const search = h('input', { type: 'search', placeholder: '搜索 Search', value: ctl.search, 'data-testid': 'search' });
  const body = h('tbody');
  const count = h('span', { class: 'meta' });
  const draw = () => {
    const needle = ctl.search.trim().toLowerCase();
    let shownRows = needle
      ? rows.filter(r => cols.some(c => r[c.name] !== null && String(r[c.name]).toLowerCase().includes(needle)))
      : rows.slice();
    if (ctl.sort) {
      const k = ctl.sort;
      shownRows.sort((a, b) => {
        const x = a[k]; const y = b[k];
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), 'zh-CN');
        return ctl.desc ? -c : c;
      });
    }
    count.textContent = shownRows.length + ' / ' + rows.length + ' 行' + (shownRows.length > MAX_TABLE_ROWS ? ' (显示前 ' + MAX_TABLE_ROWS + ' 行)' : '');
    body.replaceChildren(...shownRows.slice(0, MAX_TABLE_ROWS).map(r => h('tr', {}, cols.map(c => {
      const v = r[c.name];
      const num = typeof v === 'number';
      return h('td', { class: num ? 'num' : null, title: num ? String(v) : null }, fmt(v, c.unit));
    }))));
  };
  search.addEventListener('input', () => { ctl.search = search.value; draw(); });
  const head = h('tr', {}, cols.map(c => h('th', {
    class: 'sortable', 'data-col': c.name, title: c.formula || '',
    onclick: () => { ctl.desc = ctl.sort === c.name ? !ctl.desc : false; ctl.sort = c.name; draw(); },
  }, (c.label || c.name) + (ctl.sort === c.name ? (ctl.desc ? ' ▼' : ' ▲') : ''), h('small', {}, c.name))));
  draw();
  if (!rows.length) return h('p', { class: 'state', 'data-testid': 'empty' }, '暂无数据 (no rows for this selection)');
  return h('div', {}, h('div', { class: 'controls' }, search, count),
    h('div', { class: 'scroll' }, h('table', { 'data-testid': 'rows' }, h('thead', {}, head), body)));
}

function definitionBox(def) {
  const policy = Object.entries(def.policy || {});
  return h('details', { 'data-testid': 'definition' },
    h('summary', {}, '口径说明 Definition'),
    h('p', {}, def.description),
    h('dl', {}, def.columns.map(c => [h('dt', {}, (c.label || c.name) + ' (' + c.name + ')'),
      h('dd', {}, (c.formula || '') + (c.unit ? ' [' + c.unit + ']' : ''))])),
    policy.length ? h('p', {}, '政策参数 Policy: ' + policy.map(([k, v]) => k + ' = ' + v).join(', ')) : null,
    h('p', { class: 'meta' }, '来源 ' + def.file + (def.lags ? ' · 按季度增量刷新' : ' · 全量刷新')));
}

// ---------- operations ----------

async function opsPage(view) {
  if (!state.session.role) {
    view.replaceChildren(h('h1', {}, '运维', h('small', {}, 'Operations')),
      h('p', { class: 'state' }, '请先登录 (log in with a viewer or admin token) — ', h('a', { href: '/login?next=/ops', 'data-link': true }, '登录')));
    return;
  }
  const [p, t, r] = await Promise.all([
    getJson('/api/v1/pipelines'), getJson('/api/v1/tables'), getJson('/api/v1/runs?limit=200'),
  ]);
  const admin = state.session.role === 'admin';
  const trigger = async (name, btn) => {
    btn.disabled = true;
    const resp = await call('/api/v1/pipelines/' + encodeURIComponent(name) + '/runs', { method: 'POST' });
    const body = await resp.json().catch(() => ({}));
    toast(resp.ok ? '已启动 ' + name + ' (started)' : '未启动 ' + name + ': ' + (body.error || resp.status));
    setTimeout(() => state.render && state.render(), 800);
  };
  const pipelines = h('table', { 'data-testid': 'pipelines' },
    h('thead', {}, h('tr', {}, ['管道 Pipeline', '表 Table', '计划 Schedule', '下次运行 Next (pipeline time)', '上次运行 Last', '结果 Outcome', ''].map(x => h('th', {}, x)))),
    h('tbody', {}, p.pipelines.map(x => {
      const last = x.last_run || {};
      const outcome = x.running ? 'running' : (last.outcome || '—');
      const push = x.kind === 'push';
      const btn = push ? h('span', { class: 'meta' }, '合作方推送 (partners push)') : h('button', {
        type: 'button', 'data-testid': 'run-' + x.name, disabled: !admin || x.running,
        title: admin ? '立即运行 Run now' : '需要管理员权限 (admin only)',
      }, '立即运行 Run now');
      if (!push) btn.addEventListener('click', () => trigger(x.name, btn));
      const schedule = push ? '推送 POST ' + x.intake : x.schedule + ' (' + x.time_zone + ')';
      return h('tr', {}, h('td', {}, x.name), h('td', {}, x.table), h('td', {}, schedule),
        h('td', {}, when(x.next_run, x.time_zone)), h('td', {}, when(last.ended_at || last.started_at, x.time_zone)),
        h('td', {}, h('span', { class: 'badge ' + outcome }, outcome)), h('td', {}, btn));
    })));
  const tables = h('table', { 'data-testid': 'tables' },
    h('thead', {}, h('tr', {}, ['表 Table', '行数 Rows', '季度 Quarters', '最新季度 Latest', '隔离行 Quarantined', '上次成功 Last success', '新鲜度 Age'].map(x => h('th', {}, x)))),
    h('tbody', {}, t.tables.map(x => h('tr', {}, h('td', { title: x.description }, x.table), h('td', { class: 'num' }, fmt(x.rows)),
      h('td', { class: 'num' }, x.quarters), h('td', {}, x.latest_quarter || '—'), h('td', { class: 'num' }, fmt(x.quarantined_rows)),
      h('td', {}, when(x.last_success)), h('td', {}, age(x.age_secs))))));
  const failures = r.runs.filter(x => x.outcome === 'failed').slice(0, 20);
  view.replaceChildren(
    h('h1', {}, '运维', h('small', {}, 'Operations')),
    h('p', { class: 'meta' }, admin ? '管理员可立即运行管道 (admins can run a pipeline now)' : '只读 (read-only: running a pipeline needs the admin role)'),
    h('h2', {}, '管道', h('small', {}, 'Pipelines')), h('div', { class: 'scroll' }, pipelines),
    h('h2', {}, '数据表', h('small', {}, 'Tables')), h('div', { class: 'scroll' }, tables),
    h('h2', {}, '最近失败', h('small', {}, 'Recent failures')),
    failures.length ? h('div', { class: 'scroll' }, h('table', { 'data-testid': 'failures' },
      h('thead', {}, h('tr', {}, ['运行 Run', '管道', '开始 Started', '错误 Error'].map(x => h('th', {}, x)))),
      h('tbody', {}, failures.map(x => h('tr', { class: 'failed' }, h('td', {}, x.run_id), h('td', {}, x.pipeline),
        h('td', {}, when(x.started_at)), h('td', { style: null }, x.error || '')))))) : h('p', { class: 'state' }, '没有失败的运行 (no failed runs)'));
}

// ---------- login ----------

async function loginPage(view) {
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, 'data-testid': 'token', placeholder: '令牌 Token' });
  const message = h('p', { class: 'meta', 'data-testid': 'login-message' });
  const form = h('form', {}, h('label', {}, '访问令牌 (viewer、analyst 或 admin)', input),
    h('button', { type: 'submit', 'data-testid': 'login' }, '登录 Log in'), message);
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const r = await call('/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: input.value }) });
    if (!r.ok) {
      message.textContent = r.status === 401 ? '令牌无效 (the token matches no role)' : '登录失败 (' + r.status + ')';
      message.className = 'meta bad';
      return;
    }
    input.value = '';
    await loadSession();
    state.list = null;
    state.listEtag = null;
    const next = new URLSearchParams(location.search).get('next');
    navigate(next && next.startsWith('/') && !next.startsWith('//') ? next : '/');
  });
  view.replaceChildren(h('h1', {}, '登录', h('small', {}, 'Log in')), h('div', { class: 'login' }, form,
    h('p', { class: 'meta' }, state.session.public_aggregates ? '指标页面无需登录；运维页面需要登录。' : '查看指标需要登录 (viewer token or above).')));
}

route().then(() => setTimeout(poll, POLL_MS));
