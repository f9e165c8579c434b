// The applicants' page: one small script, routes in the address bar (a reload resumes where the
// applicant was: order and stamping ids are in the path), no server rendering.

import './style.css';
import { api, announce, ApiError, follow, newKey, poll, refresh, setSignedOutHandler, setToken, signedIn, signOut } from './api.js';
import { field, h, showError } from './dom.js';
import { language, rupiah, setLanguage, t, when } from './i18n.js';
import { qrCanvas } from './qr.js';

const view = document.getElementById('view');
let leaving = new AbortController(); // aborts the current view's polling when the route changes

const ROUTES = [
  [/^\/masuk$/, signInView, false],
  [/^\/beli$/, buyView, true],
  [/^\/bayar\/([0-9a-f-]{36})$/, payView, true],
  [/^\/meterai$/, stampsView, true],
  [/^\/bubuhkan$/, async (ctx) => (await import('./stamp.js')).stampView(ctx), true], // pdf.js loads only here
  [/^\/proses\/([0-9a-f-]{36})$/, progressView, true],
  [/^\/riwayat$/, historyView, true],
  [/^\/verifikasi$/, verifyView, false],
];

export function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

function nav() {
  const links = [['/beli', 'nav_buy'], ['/meterai', 'nav_stamps'], ['/bubuhkan', 'nav_stamp'],
    ['/riwayat', 'nav_history'], ['/verifikasi', 'nav_verify']];
  const here = location.pathname;
  const items = links.map(([path, key]) => h('a', {
    href: path, 'aria-current': here === path ? 'page' : undefined,
    onclick: (e) => { e.preventDefault(); go(path); },
  }, t(key)));
  if (signedIn()) {
    items.push(h('button', { type: 'button', class: 'link', onclick: async () => { await signOut(); go('/masuk'); } },
      t('nav_signout')));
  } else {
    items.push(h('a', { href: '/masuk', onclick: (e) => { e.preventDefault(); go('/masuk'); } }, t('nav_signin')));
  }
  document.getElementById('nav').replaceChildren(...items);
  const lang = document.getElementById('lang');
  lang.textContent = t('switch_lang');
  lang.lang = language() === 'id' ? 'en' : 'id';
  document.querySelector('.skip').textContent = t('skip');
  document.getElementById('waiting-title').textContent = t('waiting_title');
}

async function render() {
  leaving.abort();
  leaving = new AbortController();
  showError('');
  let path = location.pathname.replace(/\/+$/, '') || '/';
  if (path === '/') path = signedIn() ? '/meterai' : '/masuk';
  const route = ROUTES.find(([pattern]) => pattern.test(path)) ?? ROUTES[0];
  const [pattern, fn, needsSession] = route;
  if (needsSession && !signedIn() && !(await refresh())) {
    history.replaceState(null, '', `/masuk?next=${encodeURIComponent(location.pathname)}`);
    return render();
  }
  if (path !== location.pathname) history.replaceState(null, '', path + location.search);
  nav();
  const params = pattern.exec(path).slice(1);
  view.replaceChildren(h('p', {}, t('loading')));
  const { signal } = leaving;
  try {
    const content = await fn({ params, signal, go });
    if (signal.aborted) return; // another route was taken meanwhile: its view is the one shown
    if (content) view.replaceChildren(content);
    const heading = view.querySelector('h1');
    if (heading) document.title = `${heading.textContent} · e-Meterai`;
    view.focus();
  } catch (error) {
    if (signal.aborted) return;
    view.replaceChildren();
    showError(t('error', { message: error.message }));
  }
}

// --- Masuk ----------------------------------------------------------------------------------

function signInView() {
  const next = new URLSearchParams(location.search).get('next') || '/beli';
  const phone = field(t('phone'), { type: 'tel', name: 'phone', autocomplete: 'tel', inputmode: 'tel', required: true });
  const code = field(t('code'), {
    type: 'text', name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6}',
    maxlength: 6, required: true,
  });
  const sent = h('p', { class: 'note' });
  const codeForm = h('form', {
    hidden: true,
    onsubmit: async (e) => {
      e.preventDefault();
      showError('');
      try {
        const data = await api('POST', '/v1/auth/token', { body: { phone: normal(phone.input.value), code: code.input.value.trim() }, auth: false });
        setToken(data.token);
        announce(t('signin'));
        go(next.startsWith('/') && !next.startsWith('//') ? next : '/beli', { replace: true });
      } catch (error) {
        showError(error instanceof ApiError && error.status === 401 ? t('invalid_code') : t('error', { message: error.message }));
        code.input.focus();
      }
    },
  }, sent, code.el, h('button', { type: 'submit' }, t('signin')),
  h('button', { type: 'button', class: 'link', onclick: () => { codeForm.hidden = true; phoneForm.hidden = false; phone.input.focus(); } }, t('other_phone')));
  const phoneForm = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      showError('');
      const number = normal(phone.input.value);
      if (!/^\+?[0-9]{8,15}$/.test(number)) {
        showError(t('invalid_phone'));
        phone.input.focus();
        return;
      }
      try {
        const data = await api('POST', '/v1/auth/otp', { body: { phone: number }, auth: false });
        sent.textContent = t('code_sent', { phone: number, minutes: Math.round((data?.expires_in_s ?? 300) / 60) });
        phoneForm.hidden = true;
        codeForm.hidden = false;
        code.input.focus();
      } catch (error) {
        showError(t('error', { message: error.message }));
      }
    },
  }, phone.el, h('button', { type: 'submit' }, t('send_code')));
  return h('section', {}, h('h1', {}, t('signin_title')), phoneForm, codeForm);
}

function normal(phone) {
  return phone.replace(/[\s().-]/g, '');
}

// --- Beli -------------------------------------------------------------------------------------

async function banks() {
  try {
    return (await api('GET', '/v1/banks', { auth: false })).banks;
  } catch {
    return [];
  }
}

async function buyView() {
  const [pricing, bankList] = await Promise.all([api('GET', '/v1/pricing', { auth: false }), banks()]);
  const quantity = field(t('quantity'), { type: 'number', name: 'quantity', min: 1, max: pricing.max_quantity, value: 2, required: true });
  const duty = h('dd', {});
  const fee = h('dd', {});
  const total = h('dd', { class: 'total' });
  const dutyLabel = h('dt', {});
  const update = () => {
    const n = Math.max(1, Math.min(pricing.max_quantity, Number.parseInt(quantity.input.value, 10) || 1));
    dutyLabel.textContent = t('duty', { n });
    duty.textContent = rupiah(n * pricing.duty_per_stamp);
    fee.textContent = rupiah(n * pricing.fee_per_stamp);
    total.textContent = rupiah(n * (pricing.duty_per_stamp + pricing.fee_per_stamp));
  };
  quantity.input.addEventListener('input', update);
  update();
  const bankSelect = bankList.length > 1
    ? h('select', { id: 'bank', name: 'bank' }, bankList.map((b) => h('option', { value: b.client_id }, b.name)))
    : null;
  const method = h('fieldset', {}, h('legend', {}, t('pay_with')),
    h('label', {}, h('input', { type: 'radio', name: 'method', value: 'va', checked: true }), ' ', t('va')),
    bankSelect ? h('p', { class: 'field' }, h('label', { for: 'bank' }, t('bank')), bankSelect) : null,
    h('label', {}, h('input', { type: 'radio', name: 'method', value: 'qris' }), ' ', t('qris')),
    h('p', { class: 'note', id: 'qris-note', hidden: true }));
  // QRIS off while our acquirer does not answer (GET /v1/pricing, or a 503 qris_unavailable): VA instead.
  // After a 503 the alert says it all, and the note under the choice only says until when.
  const qrisOff = (retryAt, { brief = false } = {}) => {
    method.querySelector('input[value="va"]').checked = true;
    method.querySelector('input[value="qris"]').disabled = true;
    const note = method.querySelector('#qris-note');
    note.textContent = t(brief ? 'qris_off_short' : 'qris_unavailable', { time: retryAt ? when(retryAt) : '…' });
    note.hidden = false;
  };
  const qrisState = (pricing.payment_methods ?? []).find((m) => m.method === 'qris');
  if (qrisState && !qrisState.available) qrisOff(qrisState.retry_at);
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      const n = Number.parseInt(quantity.input.value, 10);
      const method = form.querySelector('input[name="method"]:checked')?.value ?? 'va';
      const bank = method === 'va' && bankSelect ? bankSelect.value : null;
      // One key per purchase, kept until it is answered: a retry or a reload cannot buy twice.
      const pending = JSON.parse(sessionStorage.getItem('purchase') ?? 'null');
      const key = pending && pending.quantity === n && pending.bank === bank && pending.method === method
        ? pending.key : newKey();
      sessionStorage.setItem('purchase', JSON.stringify({ key, quantity: n, bank, method }));
      form.querySelector('button[type="submit"]').disabled = true;
      try {
        const body = { quantity: n, ...(bank ? { bank } : {}), ...(method === 'qris' ? { payment_method: 'qris' } : {}) };
        const order = await api('POST', '/v1/orders', { body, key, noWait: ['qris_unavailable'] });
        sessionStorage.removeItem('purchase');
        sessionStorage.setItem(`method:${order.order_id}`, method);
        go(`/bayar/${order.order_id}`);
      } catch (error) {
        form.querySelector('button[type="submit"]').disabled = false;
        if (error instanceof ApiError && error.code === 'qris_unavailable') {
          sessionStorage.removeItem('purchase');
          qrisOff(error.body?.error?.retry_at, { brief: true });
          showError(t('qris_unavailable', { time: error.body?.error?.retry_at ? when(error.body.error.retry_at) : '…' }));
        } else {
          showError(t('error', { message: error.message }));
        }
      }
    },
  }, quantity.el, h('dl', { class: 'price' }, dutyLabel, duty, h('dt', {}, t('fee')), fee, h('dt', {}, t('total')), total),
  method, h('button', { type: 'submit' }, t('buy')));
  return h('section', {}, h('h1', {}, t('buy_title')), form);
}

// --- Bayar ------------------------------------------------------------------------------------

async function payView({ params: [orderId], signal }) {
  const section = h('section', {}, h('h1', {}, t('pay_title')));
  const status = h('p', { class: 'status', 'aria-live': 'polite' });
  const details = h('div', {});
  section.append(h('p', {}, t('status'), ': ', status), details);
  let countdown = null;
  let shown = null;
  const devControl = (path) => fetch(path, { credentials: 'omit' }).then((r) => r.ok).catch(() => false);
  const [devBank, devAcquirer, bankList] = await Promise.all([devControl('/dev/bank/'), devControl('/dev/acquirer/'),
    banks()]);
  const bankOf = (va) => bankList.find((b) => va.startsWith(b.partner_service_id))?.name;
  const show = (order) => {
    status.textContent = t(`status_${order.status}`);
    const p = order.payment;
    const ref = p ? (p.qr_content ?? p.virtual_account_no) : null;
    if (p && order.status === 'AWAITING_PAYMENT' && shown !== ref) {
      shown = ref;
      const left = h('span', {});
      const devPay = (body) => ((p.method === 'qris' ? devAcquirer : devBank) ? h('div', { class: 'dev' }, h('p', {}, t('dev_note')),
        h('button', { type: 'button', onclick: async (e) => {
          e.target.disabled = true;
          await fetch(p.method === 'qris' ? '/dev/acquirer/pay' : '/dev/bank/pay',
            { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
        } }, t('dev_pay'))) : null);
      if (p.method === 'qris') {
        details.replaceChildren(
          h('figure', { class: 'qr' }, qrCanvas(p.qr_content, t('qris_code')), h('figcaption', {}, t('qris_scan'))),
          h('dl', { class: 'pay' }, h('dt', {}, t('amount')), h('dd', { class: 'total' }, rupiah(p.amount))),
          h('p', {}, left),
          devPay({ qr_content: p.qr_content }));
      } else {
        const va = p.virtual_account_no;
        details.replaceChildren(
          h('dl', { class: 'pay' },
            h('dt', {}, t('va_no')), h('dd', { class: 'va' }, h('span', { id: 'va-no' }, va), ' ',
              h('button', { type: 'button', onclick: async () => { await navigator.clipboard?.writeText(va).catch(() => {}); announce(t('copied')); } }, t('copy'))),
            bankOf(va) ? [h('dt', {}, t('bank')), h('dd', { id: 'bank-name' }, bankOf(va))] : [],
            h('dt', {}, t('amount')), h('dd', { class: 'total' }, rupiah(p.amount))),
          h('p', {}, left),
          devPay({ virtual_account_no: va }));
      }
      const expires = Date.parse(order.payment.expires_at);
      clearInterval(countdown);
      const tick = () => {
        const s = Math.max(0, Math.round((expires - Date.now()) / 1000));
        left.textContent = s > 0 ? t('expires_in', { time: when(order.payment.expires_at), left: `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}` }) : t('expired');
      };
      tick();
      countdown = setInterval(tick, 1000);
      signal.addEventListener('abort', () => clearInterval(countdown));
    } else if (!order.payment && order.status === 'AWAITING_PAYMENT') {
      const qris = sessionStorage.getItem(`method:${orderId}`) === 'qris';
      details.replaceChildren(h('p', {}, t(qris ? 'waiting_qr' : 'waiting_bill')));
    } else if (order.status !== 'AWAITING_PAYMENT') {
      clearInterval(countdown);
      details.replaceChildren(order.status === 'FULFILLED'
        ? h('p', {}, h('a', { href: '/meterai', onclick: (e) => { e.preventDefault(); go('/meterai'); } }, t('to_stamps')))
        : '');
    }
  };
  const first = await api('GET', `/v1/orders/${orderId}`);
  if (signal.aborted) return null; // left while loading (a tap on the menu): never draw over the next view
  show(first);
  view.replaceChildren(section);
  const final = new Set(['FULFILLED', 'EXPIRED', 'REFUNDED', 'FAILED']);
  if (final.has(first.status)) return null;
  follow(`/v1/orders/${orderId}`, (o) => final.has(o.status), (o) => { if (!signal.aborted) show(o); }, { signal })
    .catch((error) => showError(t('error', { message: error.message })));
  return null;
}

// --- Meterai saya -----------------------------------------------------------------------------

async function stampsView() {
  const quota = await api('GET', '/v1/quota');
  return h('section', {}, h('h1', {}, t('stamps_title')),
    h('dl', { class: 'quota' }, h('dt', {}, t('available')), h('dd', { id: 'available' }, quota.available),
      h('dt', {}, t('used')), h('dd', { id: 'used' }, quota.used)),
    h('h2', {}, t('serials')),
    quota.serials_available.length ? h('ul', { class: 'serials' }, quota.serials_available.map((sn) => h('li', {}, sn))) : h('p', {}, t('none')),
    h('p', {}, h('a', { href: '/bubuhkan', onclick: (e) => { e.preventDefault(); go('/bubuhkan'); } }, t('nav_stamp'))));
}

// --- Proses -----------------------------------------------------------------------------------

async function progressView({ params: [id], signal }) {
  const section = h('section', {}, h('h1', {}, t('progress_title')));
  const state = h('p', { class: 'status', 'aria-live': 'polite' });
  const extra = h('div', {});
  section.append(state, extra);
  const show = (job) => {
    state.textContent = t(`st_${job.status}`);
    extra.replaceChildren();
    if (job.status === 'QUEUED' && job.queue) extra.append(h('p', {}, t('queue', job.queue)));
    if (job.sn) extra.append(h('p', {}, `${t('serial')}: `, h('span', { class: 'sn' }, job.sn)));
    if (job.status === 'DONE') extra.append(downloadButton(`/v1/stampings/${id}/document`, `e-meterai-${job.sn}.pdf`, t('download')));
    if (job.status === 'FAILED') extra.append(h('p', { class: 'error' }, job.error ?? ''));
  };
  const job = await api('GET', `/v1/stampings/${id}`);
  if (signal.aborted) return null; // left while loading: never draw over the next view
  show(job);
  view.replaceChildren(section);
  poll(async () => { const j = await api('GET', `/v1/stampings/${id}`); if (!signal.aborted) show(j); return j; },
    (j) => j.status === 'DONE' || j.status === 'FAILED', { signal }).catch((error) => showError(t('error', { message: error.message })));
  return null;
}

export function downloadButton(path, filename, label) {
  return h('button', { type: 'button', onclick: async () => {
    const response = await api('GET', path, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = h('a', { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } }, label);
}

// --- Riwayat ----------------------------------------------------------------------------------

async function historyView() {
  const orders = h('ul', { class: 'list', 'aria-label': t('orders') });
  const stampings = h('ul', { class: 'list', 'aria-label': t('stampings') });
  const section = h('section', {}, h('h1', {}, t('history_title')), h('h2', {}, t('orders')), orders, h('h2', {}, t('stampings')), stampings);
  const page = async (path, list, key, item) => {
    const data = await api('GET', path);
    for (const entry of data[key]) list.append(item(entry));
    list.nextElementSibling?.classList?.contains('more') && list.nextElementSibling.remove();
    if (data.next) {
      list.after(h('button', { type: 'button', class: 'more', onclick: (e) => { e.target.remove(); page(`${path.split('?')[0]}?cursor=${encodeURIComponent(data.next)}`, list, key, item); } }, t('more')));
    }
  };
  const orderItem = (o) => {
    const li = h('li', {}, h('strong', {}, `${o.quantity} × e-meterai · ${rupiah(o.amount)}`), ' · ', t(`status_${o.status}`));
    if (['PAID', 'FULFILLED', 'REFUND_PENDING', 'REFUNDED'].includes(o.status)) li.append(' ', downloadButton(`/v1/orders/${o.order_id}/receipt`, `kuitansi-${o.order_id}.pdf`, t('receipt')));
    if (o.status === 'AWAITING_PAYMENT') li.append(' ', h('a', { href: `/bayar/${o.order_id}`, onclick: (e) => { e.preventDefault(); go(`/bayar/${o.order_id}`); } }, t('pay_title')));
    if (o.status === 'FULFILLED') {
      const key = newKey();
      li.append(' ', h('button', { type: 'button', onclick: async (e) => {
        try {
          await api('POST', `/v1/orders/${o.order_id}/refund`, { body: {}, key });
          e.target.replaceWith(h('span', {}, t('refund_asked')));
        } catch (error) {
          showError(error.code === 'nothing_to_refund' ? t('nothing_to_refund') : t('error', { message: error.message }));
        }
      } }, t('refund')));
    }
    for (const r of o.refunds ?? []) li.append(h('p', { class: 'note' }, `${t('refund_asked')} ${rupiah(r.amount)} · ${r.status}${r.reference ? ` · Ref. ${r.reference}` : ''}`));
    return li;
  };
  const stampingItem = (s) => {
    const li = h('li', {}, t(`st_${s.status}`), s.sn ? ` · ${s.sn}` : '');
    if (s.status === 'DONE') li.append(' ', downloadButton(`/v1/stampings/${s.stamping_id}/document`, `e-meterai-${s.sn}.pdf`, t('document')));
    else if (s.status !== 'FAILED') li.append(' ', h('a', { href: `/proses/${s.stamping_id}`, onclick: (e) => { e.preventDefault(); go(`/proses/${s.stamping_id}`); } }, t('progress_title')));
    return li;
  };
  await Promise.all([page('/v1/orders?limit=10', orders, 'orders', orderItem), page('/v1/stampings?limit=10', stampings, 'stampings', stampingItem)]);
  return section;
}

// --- Verifikasi -------------------------------------------------------------------------------

function verifyView() {
  const file = field(t('verify_file'), { type: 'file', name: 'file', accept: 'application/pdf,.pdf', required: true });
  const result = h('div', { 'aria-live': 'polite' });
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      const chosen = file.input.files[0];
      if (!chosen) return;
      const body = new FormData();
      body.append('file', chosen, chosen.name);
      try {
        const data = await api('POST', '/v1/verify', { body, auth: false });
        result.replaceChildren(h('p', { class: data.valid ? 'ok' : 'error', id: 'verdict' }, data.valid ? t('valid') : t('invalid')),
          h('ul', { class: 'list' }, data.stamps.map((s) => h('li', {}, `${t('serial')} ${s.sn} · ${s.status} · `,
            s.signed_at ? `${t('signed_at')} ${when(s.signed_at)} · ` : '', s.intact ? t('intact') : t('not_intact')))));
      } catch (error) {
        result.replaceChildren(h('p', { class: 'error', id: 'verdict' }, t('error', { message: error.message })));
      }
    },
  }, file.el, h('button', { type: 'submit' }, t('verify')));
  return h('section', {}, h('h1', {}, t('verify_title')), form, result);
}

// --- start ------------------------------------------------------------------------------------

setLanguage(language());
document.getElementById('lang').addEventListener('click', () => {
  setLanguage(language() === 'id' ? 'en' : 'id');
  render();
});
setSignedOutHandler(() => {
  showError(t('session_ended'));
});
window.addEventListener('popstate', render);
render();
