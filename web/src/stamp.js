// Bubuhkan: choose a PDF, see its pages (pdf.js, in the browser), click or drag where the stamp
// goes. The stamp is a square of SIZE points kept inside the page; the coordinates sent are PDF
// points from the page's bottom-left corner (its lower-left), as the contract says.

import { GlobalWorkerOptions, getDocument } from 'pdfjs-dist';
import workerUrl from 'pdfjs-dist/build/pdf.worker.min.mjs?url';
import { api, ApiError, newKey } from './api.js';
import { field, h, showError } from './dom.js';
import { t } from './i18n.js';

GlobalWorkerOptions.workerSrc = workerUrl;
const SIZE = 100;

export function stampView({ go }) {
  let pdf = null;
  let pageNo = 1;
  let pageBox = null; // { width, height } in points
  let scale = 1;
  let at = null; // { x, y } lower-left of the stamp, points from the bottom-left
  let rendering = null; // pdf.js's render task in progress, if any

  const file = field(t('choose_pdf'), { type: 'file', name: 'file', accept: 'application/pdf,.pdf', required: true });
  const pageSelect = h('select', { id: 'page', name: 'page', disabled: true });
  const canvas = h('canvas', { class: 'preview', role: 'img' });
  const box = h('div', { class: 'stamp-box', hidden: true });
  const stage = h('div', { class: 'stage', hidden: true }, canvas, box);
  const where = h('p', { id: 'where', 'aria-live': 'polite' });
  const reason = field(t('reason'), { type: 'text', name: 'reason', maxlength: 200 });
  const password = field(t('password'), { type: 'password', name: 'password', autocomplete: 'off' });
  const submit = h('button', { type: 'submit', disabled: true }, t('submit_stamp'));

  const place = (clientX, clientY) => {
    if (!pageBox || stage.hidden) return;
    const rect = canvas.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    const px = (clientX - rect.left) * (canvas.width / rect.width);
    const py = (clientY - rect.top) * (canvas.height / rect.height);
    // canvas pixels -> points from the bottom-left; the stamp centred on the pointer, kept inside
    const x = Math.min(Math.max(px / scale - SIZE / 2, 0), pageBox.width - SIZE);
    const y = Math.min(Math.max(pageBox.height - py / scale - SIZE / 2, 0), pageBox.height - SIZE);
    at = { x: Math.round(x * 100) / 100, y: Math.round(y * 100) / 100 };
    const cssPerPoint = rect.width / pageBox.width;
    box.style.left = `${at.x * cssPerPoint}px`;
    box.style.top = `${(pageBox.height - at.y - SIZE) * cssPerPoint}px`;
    box.style.width = box.style.height = `${SIZE * cssPerPoint}px`;
    box.hidden = false;
    where.textContent = t('position', { x: Math.round(at.x), y: Math.round(at.y) });
    submit.disabled = false;
  };

  let dragging = false;
  canvas.addEventListener('pointerdown', (e) => { dragging = true; canvas.setPointerCapture(e.pointerId); place(e.clientX, e.clientY); });
  canvas.addEventListener('pointermove', (e) => { if (dragging) place(e.clientX, e.clientY); });
  canvas.addEventListener('pointerup', () => { dragging = false; });
  window.addEventListener('resize', () => { if (at && pageBox && !stage.hidden) placeAt(at); });

  const placeAt = (point) => { // keyboard and resize: re-place from points
    const rect = canvas.getBoundingClientRect();
    const cssPerPoint = rect.width / pageBox.width;
    place(rect.left + (point.x + SIZE / 2) * cssPerPoint, rect.top + (pageBox.height - point.y - SIZE / 2) * cssPerPoint);
  };

  let generation = 0; // the latest page asked for: an older drawing stops where it is
  const renderPage = async () => {
    const mine = ++generation;
    if (rendering) {
      rendering.cancel();
      await rendering.promise.catch(() => {});
    }
    const page = await pdf.getPage(pageNo);
    if (mine !== generation) return;
    const base = page.getViewport({ scale: 1 });
    pageBox = { width: base.width, height: base.height };
    scale = Math.min(2, Math.max(0.5, (stage.parentElement?.clientWidth || 360) * (window.devicePixelRatio || 1) / base.width));
    const viewport = page.getViewport({ scale });
    canvas.width = Math.floor(viewport.width);
    canvas.height = Math.floor(viewport.height);
    canvas.setAttribute('aria-label', t('preview', { page: pageNo }));
    const task = page.render({ canvas, canvasContext: canvas.getContext('2d'), viewport });
    rendering = task;
    try {
      await task.promise;
    } catch (error) {
      if (error?.name === 'RenderingCancelledException') return;
      throw error;
    } finally {
      if (rendering === task) rendering = null;
    }
    if (mine !== generation) return;
    stage.hidden = false;
    at = null;
    box.hidden = true;
    submit.disabled = true;
    where.textContent = t('place_hint');
  };

  file.input.addEventListener('change', async () => {
    showError('');
    const chosen = file.input.files[0];
    if (!chosen) return;
    try {
      pdf = await getDocument({ data: new Uint8Array(await chosen.arrayBuffer()), isEvalSupported: false }).promise;
    } catch {
      pdf = null; // the service decides: it refuses what it cannot stamp, with its reason
      pageBox = null;
      stage.hidden = true;
      box.hidden = true;
      where.textContent = '';
      pageSelect.replaceChildren(h('option', { value: 1 }, '1'));
      pageSelect.disabled = false;
      submit.disabled = false;
      at = { x: 0, y: 0 };
      return;
    }
    pageSelect.replaceChildren(...Array.from({ length: pdf.numPages }, (_, i) => h('option', { value: i + 1 }, String(i + 1))));
    pageSelect.disabled = false;
    pageNo = 1;
    await renderPage();
  });
  pageSelect.addEventListener('change', async () => { pageNo = Number(pageSelect.value); if (pdf) await renderPage(); });
  canvas.tabIndex = 0;
  canvas.addEventListener('keydown', (e) => { // arrows move the stamp by 10 points
    if (!pageBox) return;
    const step = { ArrowLeft: [-10, 0], ArrowRight: [10, 0], ArrowUp: [0, 10], ArrowDown: [0, -10] }[e.key];
    if (!step) return;
    e.preventDefault();
    const from = at ?? { x: (pageBox.width - SIZE) / 2, y: (pageBox.height - SIZE) / 2 };
    placeAt({ x: from.x + step[0], y: from.y + step[1] });
  });

  let key = newKey();
  file.input.addEventListener('change', () => { key = newKey(); });
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      showError('');
      const chosen = file.input.files[0];
      if (!chosen || !at) return;
      const body = new FormData();
      body.append('file', chosen, chosen.name);
      body.append('page', String(pageNo));
      body.append('x', String(at.x));
      body.append('y', String(at.y));
      if (reason.input.value.trim()) body.append('reason', reason.input.value.trim());
      if (password.input.value) body.append('password', password.input.value);
      submit.disabled = true;
      try {
        const job = await api('POST', '/v1/stampings', { body, key });
        go(`/proses/${job.stamping_id}`);
      } catch (error) {
        submit.disabled = false;
        if (error instanceof ApiError && error.code === 'no_quota') showError(t('no_quota'));
        else if (error instanceof ApiError && error.status >= 400 && error.status < 500) showError(t('refused', { message: error.message }));
        else showError(t('error', { message: error.message }));
      }
    },
  }, file.el, h('p', { class: 'field' }, h('label', { for: 'page' }, t('page')), pageSelect), stage, where, reason.el, password.el, submit);
  return h('section', {}, h('h1', {}, t('stamp_title')), form);
}
