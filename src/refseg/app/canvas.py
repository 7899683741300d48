"""The page's two custom components: a picture to click on, and the reference list.

Both are a ``gr.HTML`` with a *static* template and a script (``js_on_load``). The browser
only draws and reports; the server keeps the state and sends back a plain value that the
script draws (:mod:`refseg.app.views`, :mod:`refseg.app.references_view`).

- The picture canvas reports a click as ``trigger("prompt", {kind: "pos"|"neg", x, y, seq})``
  and a drag as ``{kind: "box", x1, y1, x2, y2, seq}``, coordinates as fractions of the shown
  picture: a plain click is a positive point, shift/alt+click or the "not object" toggle a
  negative one. In "select" mode every click is a ``pos`` (the server picks the instance); in
  "view" mode nothing is reported. The picture (a JPEG preview) travels once, as the custom
  prop ``picture``; each answer is only the small view.
- The reference list reports a row's remove button as ``trigger("remove_reference", {id})``,
  and warns before the page is left while the memory holds references the user has no file of.

Nothing the user types or a file holds goes through a template: the templates are static and
the scripts write text with ``textContent`` (a template would evaluate ``${...}`` in it).
Python binds the events as ``canvas.prompt(fn, ...)`` and ``references.remove_reference(fn,
...)``; ``fn`` reads the data from ``gr.EventData``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .pictures import Picture
from .views import empty_view

CANVAS_HTML = """
<div class="pc-root" data-mode="empty" data-negative="false">
  <div class="pc-toolbar">
    <button type="button" class="pc-kind pc-pos" aria-pressed="true"
      title="a click marks the object">+ object</button>
    <button type="button" class="pc-kind pc-neg" aria-pressed="false"
      title="a click marks what is not the object (or shift/alt+click)">&minus; not object</button>
    <span class="pc-hint">click: on the object &middot; shift/alt+click: not on it &middot; drag: box</span>
  </div>
  <div class="pc-stage">
    <img class="pc-picture" alt="" draggable="false">
    <img class="pc-overlay" alt="" draggable="false">
    <div class="pc-marks"></div>
    <div class="pc-labels"></div>
    <div class="pc-pending"></div>
    <div class="pc-rubber"></div>
  </div>
  <div class="pc-legend"></div>
  <div class="pc-caption" aria-live="polite"></div>
</div>
"""

CANVAS_CSS = """
.pc-root { font: 14px/1.4 var(--font, sans-serif); }
.pc-toolbar { display: flex; gap: 6px; align-items: center; margin-bottom: 6px; flex-wrap: wrap; }
.pc-root:not([data-mode="prompt"]) .pc-toolbar { display: none; }
.pc-kind { border: 1px solid #999; border-radius: 6px; padding: 2px 10px; background: #fff; color: #222;
  cursor: pointer; }
.pc-pos[aria-pressed="true"] { background: #16a34a; color: #fff; border-color: #16a34a; }
.pc-neg[aria-pressed="true"] { background: #dc2626; color: #fff; border-color: #dc2626; }
.pc-hint { color: #555; font-size: 12px; }
.pc-stage { position: relative; display: block; max-width: 100%; line-height: 0;
  touch-action: none; user-select: none; -webkit-user-select: none; cursor: crosshair; }
.pc-root[data-mode="select"] .pc-stage { cursor: pointer; }
.pc-root[data-mode="view"] .pc-stage { cursor: default; }
.pc-root[data-mode="empty"] .pc-stage { display: none; }
.pc-root[data-busy="true"] .pc-stage { cursor: progress; }
.pc-picture { display: block; width: 100%; height: auto; }
.pc-overlay, .pc-marks, .pc-labels, .pc-pending, .pc-rubber { position: absolute; left: 0; top: 0;
  width: 100%; height: 100%; pointer-events: none; }
.pc-overlay[src=""], .pc-overlay:not([src]) { display: none; }
.pc-dot { position: absolute; width: 12px; height: 12px; margin: -6px 0 0 -6px; border-radius: 50%;
  border: 2px solid #fff; box-shadow: 0 0 0 1px #000; box-sizing: border-box; }
.pc-dot.pos { background: #16a34a; }
.pc-dot.neg { background: #dc2626; }
.pc-pending .pc-dot { opacity: .55; }
.pc-box { position: absolute; border: 2px solid #facc15; box-shadow: 0 0 0 1px #000; box-sizing: border-box; }
.pc-rubber .pc-box { border-style: dashed; }
.pc-label { position: absolute; transform: translateY(-100%); padding: 1px 5px; border-radius: 3px;
  font: 600 13px/1.3 var(--font, sans-serif); white-space: nowrap; box-shadow: 0 0 0 1px rgba(0,0,0,.5); }
.pc-label.below { transform: none; }
.pc-label.selected { box-shadow: 0 0 0 2px #fff, 0 0 0 3px #000; z-index: 1; }
.pc-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; line-height: 1.4; }
.pc-legend:empty { display: none; }
.pc-chip { display: inline-flex; align-items: center; gap: 5px; font-size: 14px; color: var(--body-text-color, #222); }
.pc-swatch { width: 14px; height: 14px; border-radius: 3px; box-shadow: 0 0 0 1px rgba(0,0,0,.4); }
.pc-caption { margin-top: 4px; min-height: 1.4em; color: var(--body-text-color, #333); }
"""

CANVAS_JS = r"""
const root = element.querySelector('.pc-root');
const stage = element.querySelector('.pc-stage');
const picture = element.querySelector('.pc-picture');
const overlay = element.querySelector('.pc-overlay');
const marks = element.querySelector('.pc-marks');
const labelLayer = element.querySelector('.pc-labels');
const pendingLayer = element.querySelector('.pc-pending');
const rubber = element.querySelector('.pc-rubber');
const legend = element.querySelector('.pc-legend');
const caption = element.querySelector('.pc-caption');
const posButton = element.querySelector('.pc-pos');
const negButton = element.querySelector('.pc-neg');
const DRAG_PX = 6;
const STALE_MS = 15000;
let negative = false;
let seq = 0;

function view() { return (props.value && typeof props.value === 'object') ? props.value : {mode: 'empty'}; }
function safeUrl(url, kind) { return (typeof url === 'string' && url.startsWith('data:image/' + kind)) ? url : ''; }

function setNegative(on) {
  negative = on;
  root.dataset.negative = String(on);
  posButton.setAttribute('aria-pressed', String(!on));
  negButton.setAttribute('aria-pressed', String(on));
}
posButton.addEventListener('click', () => setNegative(false));
negButton.addEventListener('click', () => setNegative(true));

function place(el, x, y, v) {
  el.style.left = (100 * x / v.width) + '%';
  el.style.top = (100 * y / v.height) + '%';
}
function dot(kind, x, y, v) {
  const el = document.createElement('div');
  el.className = 'pc-dot ' + (kind === 'neg' ? 'neg' : 'pos');
  el.dataset.x = String(x); el.dataset.y = String(y);
  place(el, x, y, v);
  return el;
}
function boxEl(b, v) {
  const el = document.createElement('div');
  el.className = 'pc-box';
  el.style.left = (100 * b.x1 / v.width) + '%';
  el.style.top = (100 * b.y1 / v.height) + '%';
  el.style.width = (100 * (b.x2 - b.x1) / v.width) + '%';
  el.style.height = (100 * (b.y2 - b.y1) / v.height) + '%';
  for (const k of ['x1', 'y1', 'x2', 'y2']) el.dataset[k] = String(b[k]);
  return el;
}
function ink(hex) {
  const n = parseInt(String(hex).slice(1), 16);
  const lum = 0.299 * ((n >> 16) & 255) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
  return lum > 150 ? '#000' : '#fff';
}
function colour(hex) { return /^#[0-9a-f]{6}$/i.test(String(hex)) ? hex : '#888888'; }

function render() {
  const v = view();
  root.dataset.mode = v.mode || 'empty';
  root.dataset.seq = String(v.seq || 0);
  root.dataset.stale = 'false';
  caption.textContent = v.caption || '';
  // As large as the column allows, at most 72% of the window's height, in the picture's aspect.
  if (v.width && v.height) stage.style.width = 'min(100%, ' + (72 * v.width / v.height).toFixed(3) + 'vh)';
  const url = safeUrl(props.picture && props.picture.url, 'jpeg');
  if (url !== (picture.getAttribute('src') || '')) picture.setAttribute('src', url);
  const over = safeUrl(v.overlay, 'png');
  if (over !== (overlay.getAttribute('src') || '')) overlay.setAttribute('src', over);
  marks.replaceChildren();
  if (v.mode === 'prompt' && v.width) {
    if (v.box) marks.appendChild(boxEl(v.box, v));
    for (const p of (v.points || [])) marks.appendChild(dot(p.kind, p.x, p.y, v));
  }
  labelLayer.replaceChildren();
  for (const l of (v.labels || [])) {
    const el = document.createElement('div');
    el.className = 'pc-label' + (l.y / v.height < 0.06 ? ' below' : '') + (l.selected ? ' selected' : '');
    el.textContent = l.text;
    el.style.background = colour(l.colour);
    el.style.color = ink(colour(l.colour));
    place(el, l.x, l.y, v);
    labelLayer.appendChild(el);
  }
  legend.replaceChildren();
  for (const item of (v.legend || [])) {
    const chip = document.createElement('span');
    chip.className = 'pc-chip';
    const swatch = document.createElement('span');
    swatch.className = 'pc-swatch';
    swatch.style.background = colour(item.colour);
    const text = document.createElement('span');
    text.textContent = item.name + ' (' + item.count + ')';
    chip.append(swatch, text);
    legend.appendChild(chip);
  }
  for (const el of Array.from(pendingLayer.children)) {
    if (Number(el.dataset.seq) <= (v.seq || 0)) el.remove();
  }
  root.dataset.busy = String(pendingLayer.children.length > 0);
  root.dataset.shownSeq = String(v.seq || 0);
  if (v.seq === 0) seq = 0;
}
watch(['value', 'picture'], render);
render();

function fractions(e) {
  const r = picture.getBoundingClientRect();
  return {x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
          y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))};
}
function send(data, pendingEl) {
  seq = Math.max(seq, Number(root.dataset.seq || 0)) + 1;
  data.seq = seq;
  root.dataset.sent = JSON.stringify(data);
  if (pendingEl) { pendingEl.dataset.seq = String(seq); pendingLayer.appendChild(pendingEl); }
  root.dataset.busy = 'true';
  trigger('prompt', data);
  const mine = seq;
  setTimeout(() => {
    if (Number(root.dataset.seq || 0) < mine && pendingLayer.children.length) {
      root.dataset.stale = 'true';
      caption.textContent = 'No answer from the server yet: it is busy or gone (reload the page if this stays).';
    }
  }, STALE_MS);
}

let start = null;
stage.addEventListener('pointerdown', (e) => {
  const v = view();
  if (!v.width || e.button !== 0 || (v.mode !== 'prompt' && v.mode !== 'select')) return;
  e.preventDefault();
  stage.setPointerCapture(e.pointerId);
  start = {e: e, f: fractions(e), neg: negative || e.shiftKey || e.altKey};
});
stage.addEventListener('pointermove', (e) => {
  if (!start || view().mode !== 'prompt') return;
  if (Math.hypot(e.clientX - start.e.clientX, e.clientY - start.e.clientY) < DRAG_PX) {
    rubber.replaceChildren(); return;
  }
  const v = view(), f = fractions(e);
  rubber.replaceChildren(boxEl({x1: Math.min(start.f.x, f.x) * v.width, y1: Math.min(start.f.y, f.y) * v.height,
                                x2: Math.max(start.f.x, f.x) * v.width, y2: Math.max(start.f.y, f.y) * v.height}, v));
});
stage.addEventListener('pointerup', (e) => {
  if (!start) return;
  const s = start; start = null;
  rubber.replaceChildren();
  const v = view(), f = fractions(e);
  const dragged = Math.hypot(e.clientX - s.e.clientX, e.clientY - s.e.clientY) >= DRAG_PX;
  if (dragged && v.mode === 'prompt') {
    const b = {x1: Math.min(s.f.x, f.x), y1: Math.min(s.f.y, f.y), x2: Math.max(s.f.x, f.x), y2: Math.max(s.f.y, f.y)};
    send({kind: 'box', ...b}, boxEl({x1: b.x1 * v.width, y1: b.y1 * v.height, x2: b.x2 * v.width, y2: b.y2 * v.height}, v));
  } else if (!dragged || v.mode === 'prompt') {
    const kind = (v.mode === 'prompt' && s.neg) ? 'neg' : 'pos';
    send({kind: kind, x: s.f.x, y: s.f.y}, v.mode === 'prompt' ? dot(kind, s.f.x * v.width, s.f.y * v.height, v) : null);
  }
});
stage.addEventListener('pointercancel', () => { start = null; rubber.replaceChildren(); });
"""

LIST_HTML = """
<div class="rl-root">
  <div class="rl-summary" aria-live="polite"></div>
  <div class="rl-rows" role="list"></div>
</div>
"""

LIST_CSS = """
.rl-summary { margin: 4px 0 8px; font-weight: 600; color: var(--body-text-color, #222); }
.rl-rows { display: flex; flex-direction: column; gap: 6px; max-height: 460px; overflow-y: auto; }
.rl-row { display: grid; grid-template-columns: 64px 1fr auto; gap: 10px; align-items: center; padding: 4px;
  border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; }
.rl-thumb { width: 64px; height: 64px; border-radius: 4px; object-fit: cover; background: #eee; }
.rl-nothumb { width: 64px; height: 64px; border-radius: 4px; background: #eee; color: #666; font-size: 11px;
  display: flex; align-items: center; justify-content: center; text-align: center; }
.rl-text { display: flex; flex-direction: column; gap: 2px; min-width: 0; color: var(--body-text-color, #222); }
.rl-class { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.rl-meta { font-size: 12px; color: var(--body-text-color-subdued, #555); overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.rl-kind { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; margin-left: 6px;
  font-weight: 600; vertical-align: 1px; }
.rl-kind.positive { background: #dcfce7; color: #14532d; }
.rl-kind.negative { background: #fee2e2; color: #7f1d1d; }
.rl-remove { border: 1px solid #bbb; border-radius: 6px; background: #fff; color: #222; padding: 3px 10px;
  cursor: pointer; }
.rl-remove:hover { border-color: #dc2626; color: #dc2626; }
"""

LIST_JS = r"""
const summary = element.querySelector('.rl-summary');
const rows = element.querySelector('.rl-rows');
function value() { return (props.value && typeof props.value === 'object') ? props.value : {rows: []}; }
function span(cls, text) { const el = document.createElement('span'); el.className = cls; el.textContent = text; return el; }
function render() {
  const v = value();
  summary.textContent = v.summary || '';
  rows.replaceChildren();
  for (const r of (v.rows || [])) {
    const row = document.createElement('div');
    row.className = 'rl-row';
    row.setAttribute('role', 'listitem');
    row.dataset.id = String(r.id);
    let thumb;
    if (typeof r.thumbnail === 'string' && r.thumbnail.startsWith('data:image/')) {
      thumb = document.createElement('img');
      thumb.className = 'rl-thumb';
      thumb.alt = 'reference #' + r.id;
      thumb.src = r.thumbnail;
    } else {
      thumb = span('rl-nothumb', 'from a memory file');
    }
    const text = document.createElement('div');
    text.className = 'rl-text';
    const title = span('rl-class', r['class']);
    title.appendChild(span('rl-kind ' + (r.kind === 'negative' ? 'negative' : 'positive'), r.kind));
    const details = ['#' + r.id, r.marked ? 'marked by ' + r.marked : '', r.file].filter(Boolean).join(' \u00b7 ');
    text.append(title, span('rl-meta', details));
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'rl-remove';
    remove.textContent = 'Remove';
    remove.setAttribute('aria-label', 'Remove reference #' + r.id + ' (' + r['class'] + ')');
    remove.addEventListener('click', () => { remove.disabled = true; trigger('remove_reference', {id: r.id}); });
    row.append(thumb, text, remove);
    rows.appendChild(row);
  }
  window.__refsegUnsaved = Boolean(v.unsaved);
}
watch('value', render);
render();
if (!window.__refsegUnloadGuard) {
  window.__refsegUnloadGuard = true;
  window.addEventListener('beforeunload', (e) => {
    if (window.__refsegUnsaved) { e.preventDefault(); e.returnValue = ''; }
  });
}
"""

PAGE_CSS = """
#message { position: sticky; top: 0; z-index: 20; }
#message .msg { padding: 8px 12px; border-radius: 8px; background: #eef6ff; color: #123; min-height: 1.4em;
  font-size: 15px; }
#message .msg-error { background: #fde8e8; color: #7f1d1d; border: 1px solid #f5b5b5; }
#message .msg-busy { background: #fff8e1; color: #5b4300; }
#message .spinner { display: inline-block; width: .9em; height: .9em; margin-right: .5em; vertical-align: -2px;
  border: 2px solid currentColor; border-right-color: transparent; border-radius: 50%;
  animation: refseg-spin .8s linear infinite; }
@keyframes refseg-spin { to { transform: rotate(360deg); } }
"""


def picture_canvas(elem_id: str, value: dict[str, Any] | None = None) -> gr.HTML:
    """A picture canvas; bind ``.prompt(fn, inputs, outputs)`` to its clicks."""
    return gr.HTML(
        value=value or empty_view(),
        picture=None,
        html_template=CANVAS_HTML,
        css_template=CANVAS_CSS,
        js_on_load=CANVAS_JS,
        apply_default_css=False,
        elem_id=elem_id,
        padding=False,
    )


def show_picture(picture: Picture | None, view: dict[str, Any]) -> gr.HTML:
    """An update that sends a (new) picture with its view; send ``view`` alone for other changes."""
    prop = {"url": picture.url, "width": picture.width, "height": picture.height} if picture else None
    return gr.HTML(value=view, picture=prop)


def reference_list(elem_id: str, value: dict[str, Any]) -> gr.HTML:
    """The reference list; bind ``.remove_reference(fn, inputs, outputs)`` to its remove buttons."""
    return gr.HTML(
        value=value,
        html_template=LIST_HTML,
        css_template=LIST_CSS,
        js_on_load=LIST_JS,
        apply_default_css=False,
        elem_id=elem_id,
        padding=False,
    )


def message_area(html_text: str) -> gr.HTML:
    """The one place the page says what happened (server-made, escaped HTML)."""
    return gr.HTML(html_text, elem_id="message", js_on_load=None, apply_default_css=False, padding=False)
