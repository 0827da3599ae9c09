// catsdogs page script: progressive enhancement of the upload form (drag-and-drop,
// paste, several files at once, instant results, feedback buttons). Without it the form
// still posts to /classify. The page never holds the API token: requests carry the
// session cookie and the CSRF token from the <meta> tag.
'use strict';
document.documentElement.classList.add('js');

// The class-activation map of an answer (explanation.evidence: rows x cols cells over the
// crop the model saw), shared by the result cards and the dashboard's explanation page.
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; // textContent: file names are never parsed as HTML
  return e;
}

// "Why?": the answer's class-activation map (explanation.evidence, rows x cols cells over
// the crop the model saw) drawn over the preview. A canvas, sized like the photo and
// fitted by the same CSS as the photo, so no inline style is needed (the CSP forbids it).
const MAX_HEAT_SIDE = 512;
function drawHeat(img, ex) {
  const [rows, cols] = ex.grid;
  const w = img.naturalWidth, h = img.naturalHeight;
  const k = Math.min(1, MAX_HEAT_SIDE / Math.max(w, h, 1));
  const canvas = el('canvas', 'heat');
  canvas.width = Math.max(1, Math.round(w * k));
  canvas.height = Math.max(1, Math.round(h * k));
  const cells = document.createElement('canvas');
  cells.width = cols;
  cells.height = rows;
  const cctx = cells.getContext('2d');
  const px = cctx.createImageData(cols, rows);
  const top = Math.max(1e-6, ...ex.evidence.map(Math.abs));
  ex.evidence.forEach((v, i) => {
    const a = Math.abs(v) / top;
    // Warm for evidence for the answer, cool against it; faint cells stay clear.
    px.data.set(v >= 0 ? [230, 57, 70, Math.round(200 * a)] : [40, 110, 230, Math.round(160 * a)], i * 4);
  });
  cctx.putImageData(px, 0, 0);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(cells, ex.crop.x * k, ex.crop.y * k, ex.crop.width * k, ex.crop.height * k);
  canvas.setAttribute('aria-hidden', 'true');
  return canvas;
}

// Where the supporting evidence lies, in words: a half, a quarter, the centre, or spread.
function heatSummary(ex, w, h, label) {
  const [rows, cols] = ex.grid;
  let left = 0, top = 0, centre = 0, total = 0;
  const quarters = [0, 0, 0, 0];
  ex.evidence.forEach((v, i) => {
    if (v <= 0) return;
    const x = ex.crop.x + ((i % cols) + 0.5) * ex.crop.width / cols;
    const y = ex.crop.y + (Math.floor(i / cols) + 0.5) * ex.crop.height / rows;
    total += v;
    if (x < w / 2) left += v;
    if (y < h / 2) top += v;
    if (Math.abs(x - w / 2) < w / 4 && Math.abs(y - h / 2) < h / 4) centre += v;
    quarters[(y < h / 2 ? 0 : 2) + (x < w / 2 ? 0 : 1)] += v;
  });
  const what = 'What made the model say ' + label + ': ';
  if (total <= 0) return what + 'no part of the photo stands out.';
  const names = ['top-left', 'top-right', 'bottom-left', 'bottom-right'];
  const q = quarters.indexOf(Math.max(...quarters));
  if (quarters[q] / total > 0.6) return what + 'mostly the ' + names[q] + ' quarter of the photo.';
  if (centre / total > 0.5) return what + 'mostly the centre of the photo.';
  if (left / total > 0.65) return what + 'mostly the left half of the photo.';
  if (left / total < 0.35) return what + 'mostly the right half of the photo.';
  if (top / total > 0.65) return what + 'mostly the top half of the photo.';
  if (top / total < 0.35) return what + 'mostly the bottom half of the photo.';
  return what + 'spread over the photo.';
}


(function () {
  const form = document.getElementById('upload-form');
  if (!form) return;
  const input = document.getElementById('file');
  const drop = document.getElementById('drop');
  const results = document.getElementById('results');
  const announce = document.getElementById('announce');
  const say = (text) => { if (announce) announce.textContent = text; };
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const maxBytes = Number(form.dataset.maxBytes) || 10 * 1024 * 1024;
  const maxFiles = Number(form.dataset.maxFiles) || 32;
  const IN_FLIGHT = 3;
  const queue = [];
  let running = 0;

  function bar(name, cls, p, text) {
    const row = el('div', 'bar ' + cls);
    const label = el('span', null, name);
    const prog = el('progress');
    prog.max = 1;
    prog.value = p;
    prog.setAttribute('aria-label', name + ' probability');
    row.append(label, prog, el('span', 'pct', text));
    return row;
  }

  function fail(card, message) {
    card.li.classList.remove('pending');
    card.li.classList.add('failed');
    card.verdict.remove();
    const p = el('p', 'err', message);
    p.setAttribute('role', 'alert');
    card.body.append(p);
  }

  // Busy answers (429 over the rate limit, 503 overloaded) say when to come back in
  // Retry-After: wait that long (at most a minute) and try again, a few times.
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function fetchPolitely(url, options, onWait) {
    for (let attempt = 0; ; attempt += 1) {
      const resp = await fetch(url, options);
      const retryAfter = Number(resp.headers.get('Retry-After'));
      const busy = resp.status === 429 || resp.status === 503;
      if (!busy || attempt >= 3 || !(retryAfter > 0) || retryAfter > 60) return resp;
      if (onWait) onWait(retryAfter);
      await sleep(retryAfter * 1000);
    }
  }

  async function errorMessage(resp) {
    try {
      const j = await resp.json();
      if (j && j.error && j.error.message) {
        if (resp.status === 401) return 'Your session has expired: reload the page.';
        return j.error.message;
      }
    } catch (_) { /* not JSON */ }
    return 'The server answered ' + resp.status + '.';
  }

  function newCard(file) {
    const li = el('li', 'card pending');
    let img = null;
    if (file.type && file.type.startsWith('image/')) {
      const preview = el('div', 'preview');
      img = el('img', 'thumb');
      img.alt = 'Preview of ' + (file.name || 'pasted image');
      img.src = URL.createObjectURL(file);
      img.addEventListener('load', () => URL.revokeObjectURL(img.src));
      img.addEventListener('error', () => { URL.revokeObjectURL(img.src); preview.remove(); });
      preview.append(img);
      li.append(preview);
    }
    const body = el('div', 'card-body');
    const verdict = el('p', 'verdict', 'Classifying…');
    body.append(el('p', 'name', file.name || 'pasted image'), verdict);
    li.append(body);
    results.prepend(li);
    return { li, body, verdict, img };
  }

  function addWhy(card, r) {
    const ex = r.explanation;
    const img = card.img;
    if (!ex || !img || !img.parentNode) return;
    const button = el('button', 'why', 'Why?');
    button.type = 'button';
    button.setAttribute('aria-pressed', 'false');
    const legend = el('p', 'why-legend');
    legend.hidden = true;
    legend.append(el('span', 'swatch for'), ' for ' + r.prediction + ' ',
      el('span', 'swatch against'), ' against · the model saw a ' + ex.grid[0] + '×' + ex.grid[1] + ' grid');
    const summary = el('p', 'why-summary');
    summary.hidden = true;
    let canvas = null;
    button.addEventListener('click', () => {
      const on = button.getAttribute('aria-pressed') !== 'true';
      if (on && !canvas) {
        canvas = drawHeat(img, ex);
        img.parentNode.append(canvas);
        summary.textContent = heatSummary(ex, img.naturalWidth, img.naturalHeight, r.prediction);
      }
      if (canvas) canvas.hidden = !on;
      legend.hidden = !on;
      summary.hidden = !on;
      button.setAttribute('aria-pressed', String(on));
      if (on) say(summary.textContent);
    });
    card.body.append(button, legend, summary);
  }

  function showResult(card, r) {
    say((r.filename || 'Image') + ': ' + r.prediction + ', ' + r.confidence);
    card.li.classList.remove('pending');
    card.li.dataset.predictionId = r.id;
    card.verdict.textContent = '';
    card.verdict.append(el('span', 'label-' + r.label, r.prediction), ' ', el('span', 'conf', r.confidence));
    if (r.is_cat_or_dog === false) {
      card.body.append(el('p', 'notice warn', 'This may be neither a cat nor a dog.'));
    }
    const bars = el('div', 'bars');
    bars.append(bar('Cat', 'cat', r.p_cat, r.probabilities.cat), bar('Dog', 'dog', r.p_dog, r.probabilities.dog));
    card.body.append(bars, el('p', 'meta', 'model ' + r.model_version + ' · ' + r.latency_ms.toFixed(1) + ' ms'));
    addWhy(card, r);
    // The id a user quotes to ask for a copy or the erasure of this record (docs/privacy.md).
    const pid = el('p', 'meta pid', 'Prediction id ');
    pid.append(el('code', null, String(r.id)), ': quote it to ask for a copy or the erasure of this record.');
    card.body.append(pid);
    const other = r.label === 'dog' ? 'cat' : 'dog';
    const group = el('div', 'fb');
    group.setAttribute('role', 'group');
    group.setAttribute('aria-label', 'Was this right?');
    const right = el('button', null, '✓ Right');
    const wrong = el('button', null, '✗ Wrong, it\'s a ' + other);
    for (const b of [right, wrong]) { b.type = 'button'; b.setAttribute('aria-pressed', 'false'); }
    right.dataset.feedback = 'correct';
    wrong.dataset.feedback = 'wrong';
    const status = el('p', 'fb-status');
    status.setAttribute('role', 'status');
    group.append(right, wrong);
    card.body.append(group, status);
    const send = async (button, body) => {
      // One request at a time per card, so answers cannot arrive out of order.
      right.disabled = true;
      wrong.disabled = true;
      status.textContent = 'Sending…';
      try {
        const resp = await fetchPolitely('/api/feedback', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
          body: JSON.stringify(Object.assign({ prediction_id: r.id }, body)),
        }, (s) => { status.textContent = 'Busy; sending again in ' + s + ' s…'; });
        if (!resp.ok) { status.textContent = 'Not saved: ' + await errorMessage(resp); return; }
        for (const b of [right, wrong]) b.setAttribute('aria-pressed', String(b === button));
        status.textContent = body.correct ? 'Thanks! Feedback saved.' : 'Thanks! Noted: it is a ' + other + '.';
      } catch (_) {
        status.textContent = 'Not saved: the server could not be reached.';
      } finally {
        right.disabled = false;
        wrong.disabled = false;
      }
    };
    right.addEventListener('click', () => send(right, { correct: true }));
    wrong.addEventListener('click', () => send(wrong, { label: other }));
  }

  async function classify(file, card) {
    const data = new FormData();
    data.append('file', file, file.name || 'pasted-image');
    if (document.getElementById('consent').checked) data.append('consent', 'true');
    // The map costs a few hundred bytes and no extra forward pass: always asked for, shown on "Why?".
    data.append('explain', 'true');
    try {
      const resp = await fetchPolitely('/api/predict', {
        method: 'POST', body: data, credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf },
      }, (s) => { card.verdict.textContent = 'Busy; trying again in ' + s + ' s…'; });
      if (!resp.ok) { fail(card, await errorMessage(resp)); return; }
      showResult(card, await resp.json());
    } catch (_) {
      fail(card, 'The server could not be reached.');
    }
  }

  function pump() {
    while (running < IN_FLIGHT && queue.length) {
      const [file, card] = queue.shift();
      running += 1;
      classify(file, card).finally(() => { running -= 1; pump(); });
    }
  }

  function accept(files) {
    const list = Array.from(files || []);
    if (list.length > maxFiles) {
      const card = newCard({ name: list.length + ' files', type: '' });
      fail(card, 'At most ' + maxFiles + ' files at a time; the first ' + maxFiles + ' are classified.');
    }
    for (const file of list.slice(0, maxFiles)) {
      const card = newCard(file);
      if (file.size > maxBytes) {
        fail(card, 'This file is larger than the ' + (maxBytes / 1048576).toFixed(0) + ' MiB limit.');
        continue;
      }
      if (file.size === 0) { fail(card, 'This file is empty.'); continue; }
      queue.push([file, card]);
    }
    pump();
  }

  input.addEventListener('change', () => { accept(input.files); input.value = ''; });
  form.addEventListener('submit', (e) => { e.preventDefault(); accept(input.files); input.value = ''; });
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    accept(e.dataTransfer && e.dataTransfer.files);
  });
  // A file dropped next to the zone must not navigate away from the page.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  document.addEventListener('paste', (e) => {
    const files = e.clipboardData && e.clipboardData.files;
    if (files && files.length) { e.preventDefault(); accept(files); }
  });
})();

// The dashboard's explanation page: the stored photo with its map drawn once it has loaded.
(function () {
  const view = document.getElementById('why-view');
  if (!view) return;
  const img = view.querySelector('img.photo');
  const ex = JSON.parse(view.dataset.explanation);
  const show = () => {
    img.parentNode.append(drawHeat(img, ex));
    const summary = document.getElementById('why-summary');
    summary.textContent = heatSummary(ex, img.naturalWidth, img.naturalHeight, view.dataset.answer);
  };
  if (img.complete && img.naturalWidth) show(); else img.addEventListener('load', show);
})();
