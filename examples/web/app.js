// lenet-export in the browser: a model.raw.onnx (uint8 images in, normalisation inside the graph) run by
// onnxruntime-web's wasm backend. Class names, input size and the model's description come from the model's
// own metadata_props, read with protobufjs. Serve this folder with `python3 serve.py` (see README).
//
// For tests and scripts: window.classifyBatch(uint8Array, n) -> Promise<number[]> (n x classes logits,
// row-major), window.lenet.ready (a Promise that resolves once the first model is loaded).
import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';

// One thread: more need SharedArrayBuffer, which browsers give only to cross-origin isolated pages
// (Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp, see serve.py).
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL('node_modules/onnxruntime-web/dist/', location.href).href;

const $ = (id) => document.getElementById(id);
const TOP = 5;
let model = null; // {name, session, meta, classes, h, w, c}
let shown = 0; // results shown so far (tests wait on body[data-results])

function status(text, state = 'ready') {
  $('status').textContent = text;
  document.body.dataset.state = state;
}

// ModelProto field 14 (metadata_props) only: protobufjs skips every field the descriptor does not name.
const metadataType = fetch('onnx-metadata.json').then((r) => r.json())
  .then((json) => protobuf.Root.fromJSON(json).lookupType('onnx.ModelProto'));

async function readMetadata(bytes) {
  const m = (await metadataType).decode(bytes);
  return Object.fromEntries(m.metadataProps.map((p) => [p.key, p.value]));
}

async function loadModel(name, url) {
  status(`loading ${name}…`, 'loading');
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const meta = await readMetadata(bytes);
  if (!meta.classes) throw new Error(`${name} has no lenet-export metadata (classes)`);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
  const [h, w, c = 1] = JSON.parse(meta.raw_input_shape || meta.input_shape).slice(1); // N x H x W [x C]
  model = { name, session, meta, classes: JSON.parse(meta.classes), h, w, c };
  Object.assign($('seen'), { width: w, height: h });
  Object.assign($('draw'), { width: 10 * w, height: 10 * h });
  clearDrawing();
  $('top').replaceChildren();
  $('source').textContent = `${model.classes.length} classes, ${w}x${h} ${c === 1 ? 'grey' : 'colour'} input`;
  $('about').textContent = `${meta.model_name} trained on ${meta.dataset} (test accuracy `
    + `${(100 * Number(meta.test_accuracy)).toFixed(2)}%), onnxruntime-web ${ort.env.versions.web}, wasm, `
    + `${ort.env.wasm.numThreads} thread`;
  status(`${name} ready`);
  return model;
}

// n images in the model's raw layout (N x H x W grey, N x H x W x C colour) -> {logits, probabilities}
async function run(pixels, n) {
  const { session, h, w, c } = model;
  const dims = c === 1 ? [n, h, w] : [n, h, w, c];
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('uint8', pixels, dims) });
  return { logits: out.logits.data, probabilities: out.probabilities.data };
}

// What the model sees: any image drawn onto a w x h canvas (resized by the browser where needed),
// then grey (Pillow's "L" weights, as `lenet-export predict`) or RGB, in the raw layout.
function toPixels(source) {
  const { h, w, c } = model;
  const ctx = $('seen').getContext('2d', { willReadFrequently: true });
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const px = new Uint8Array(w * h * c);
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (c === 1) px[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    else px.set([r, g, b], 3 * i);
  }
  if (c === 1) { // show exactly the grey values the model gets
    const img = ctx.createImageData(w, h);
    px.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
    ctx.putImageData(img, 0, 0);
  }
  return px;
}

function showResult(probabilities, what) {
  const order = [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]).slice(0, TOP);
  $('top').replaceChildren(...order.map((k) => {
    const li = document.createElement('li');
    const pct = (100 * probabilities[k]).toFixed(1);
    li.innerHTML = '<span class="name"></span><span class="bar"><span></span></span><span class="p"></span>';
    li.querySelector('.name').textContent = model.classes[k];
    li.querySelector('.bar span').style.width = `${pct}%`;
    li.querySelector('.p').textContent = `${pct}%`;
    return li;
  }));
  $('source').textContent = what;
  document.body.dataset.results = String(++shown);
}

async function classify(source, what) {
  try {
    const { probabilities } = await run(toPixels(source), 1);
    showResult(probabilities, what);
  } catch (e) {
    status(`error: ${e.message}`, 'error');
  }
}

async function classifyFile(file) {
  try {
    const img = await createImageBitmap(file);
    const { w, h } = model;
    const draw = $('draw').getContext('2d');
    draw.imageSmoothingEnabled = false; // show the file's own pixels, enlarged
    draw.drawImage(img, 0, 0, $('draw').width, $('draw').height);
    await classify(img, `${file.name} (${img.width}x${img.height}${img.width !== w || img.height !== h
      ? `, resized to ${w}x${h}` : ''})`);
  } catch (e) {
    status(`error: cannot read ${file.name}: ${e.message}`, 'error');
  }
}

// Drawing: strokes on a 10x canvas, classified when the pointer lifts.
function clearDrawing() {
  const ctx = $('draw').getContext('2d');
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, $('draw').width, $('draw').height);
}

function setUpDrawing() {
  const cv = $('draw');
  let last = null;
  const at = (e) => {
    const r = cv.getBoundingClientRect();
    return [(e.clientX - r.left) * cv.width / r.width, (e.clientY - r.top) * cv.height / r.height];
  };
  cv.addEventListener('pointerdown', (e) => { cv.setPointerCapture(e.pointerId); last = at(e); });
  cv.addEventListener('pointermove', (e) => {
    if (!last) return;
    const ctx = cv.getContext('2d');
    const p = at(e);
    Object.assign(ctx, { strokeStyle: $('pen').value, lineWidth: Number($('size').value), lineCap: 'round' });
    ctx.beginPath();
    ctx.moveTo(...last);
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
  });
  const end = () => { if (last) { last = null; classify(cv, 'your drawing'); } };
  cv.addEventListener('pointerup', end);
  cv.addEventListener('pointercancel', end);
  $('clear').addEventListener('click', () => { clearDrawing(); $('top').replaceChildren(); });
}

function setUpFiles() {
  $('file').addEventListener('change', (e) => e.target.files[0] && classifyFile(e.target.files[0]));
  const drop = $('drop');
  for (const t of ['dragenter', 'dragover']) {
    drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add('over'); });
  }
  for (const t of ['dragleave', 'drop']) drop.addEventListener(t, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    if (e.dataTransfer.files[0]) classifyFile(e.dataTransfer.files[0]);
  });
}

async function start() {
  setUpDrawing();
  setUpFiles();
  const models = await (await fetch('models.json')).json();
  const select = $('model');
  select.replaceChildren(...models.map((m) => new Option(m.name, m.url)));
  const wanted = new URLSearchParams(location.search).get('model');
  if (wanted) select.value = models.find((m) => m.name === wanted)?.url ?? select.value;
  select.addEventListener('change', () => loadModel(select.selectedOptions[0].text, select.value)
    .catch((e) => status(`error: ${e.message}`, 'error')));
  return loadModel(select.selectedOptions[0].text, select.value);
}

const ready = start();
ready.catch((e) => status(`error: ${e.message}`, 'error'));

window.lenet = {
  ready,
  get model() { return model; },
  loadModel,
  classifyFile,
  async classifyBatch(pixels, n) {
    await ready;
    const { logits } = await run(Uint8Array.from(pixels), n);
    return Array.from(logits);
  },
};
window.classifyBatch = window.lenet.classifyBatch;
