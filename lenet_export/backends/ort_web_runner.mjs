// One persistent Node process running an ONNX model with onnxruntime-web (wasm), driven by ort_web.py.
//
//   node ort_web_runner.mjs <folder holding node_modules/onnxruntime-web> <model.onnx>
//
// Every message, both ways, is a frame: a 4-byte little-endian header length, a JSON header, then
// header.nbytes raw bytes. First the runner sends {ready: true, versions...} (or {error}). Then each request
// {dtype: "float32"|"uint8", dims: [...], nbytes} is answered with {outputs: [{name, dims}], nbytes} and the
// outputs' float32 bytes back to back, or with {error: "one line", nbytes: 0}. EOF on stdin ends the process.
import { createRequire } from 'node:module';
import path from 'node:path';

// stdout carries the frames: anything else that prints (onnxruntime-web's warnings) goes to stderr.
console.log = console.info = console.warn = console.debug = console.error;

function send(header, payload = new Uint8Array(0)) {
  const json = Buffer.from(JSON.stringify({ ...header, nbytes: payload.byteLength }));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  process.stdout.write(Buffer.concat([len, json, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)]));
}

const oneLine = (e) => String((e && e.message) || e).split('\n')[0];

// Frames from stdin, as an async generator: [header, bytes].
async function* frames(stream) {
  let buf = Buffer.alloc(0);
  let need = null; // [header, nbytes] once a header is read
  for await (const chunk of stream) {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    for (;;) {
      if (need === null) {
        if (buf.length < 4) break;
        const n = buf.readUInt32LE(0);
        if (buf.length < 4 + n) break;
        const header = JSON.parse(buf.subarray(4, 4 + n).toString('utf8'));
        need = [header, header.nbytes];
        buf = buf.subarray(4 + n);
      }
      if (buf.length < need[1]) break;
      // copy: the tensor must own aligned memory that the next chunk cannot overwrite
      const body = new Uint8Array(need[1]);
      body.set(buf.subarray(0, need[1]));
      buf = buf.subarray(need[1]);
      yield [need[0], body];
      need = null;
    }
  }
}

const ARRAYS = { float32: Float32Array, uint8: Uint8Array };

async function main() {
  const [dir, model] = process.argv.slice(2);
  let ort, session;
  try {
    const require = createRequire(path.join(path.resolve(dir), 'package.json'));
    ort = require('onnxruntime-web'); // the "node" build: same wasm backend, files read from the package
    ort.env.logLevel = 'error';
    session = await ort.InferenceSession.create(model, { executionProviders: ['wasm'] });
  } catch (e) {
    send({ error: `onnxruntime-web cannot load ${path.basename(model || '?')}: ${oneLine(e)}` });
    return;
  }
  send({ ready: true, onnxruntime_web: ort.env.versions.web, node: process.versions.node,
         wasm_threads: ort.env.wasm.numThreads });

  for await (const [req, body] of frames(process.stdin)) {
    try {
      const Array_ = ARRAYS[req.dtype];
      if (!Array_) throw new Error(`unsupported dtype ${req.dtype}`);
      const x = new ort.Tensor(req.dtype, new Array_(body.buffer, 0, body.byteLength / Array_.BYTES_PER_ELEMENT),
                               req.dims);
      const out = await session.run({ [session.inputNames[0]]: x });
      const parts = session.outputNames.map((name) => out[name]);
      for (const [i, t] of parts.entries()) {
        if (t.type !== 'float32') throw new Error(`output ${session.outputNames[i]} is ${t.type}, not float32`);
      }
      const total = parts.reduce((s, t) => s + t.data.byteLength, 0);
      const bytes = new Uint8Array(total);
      let at = 0;
      for (const t of parts) {
        bytes.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
        at += t.data.byteLength;
      }
      send({ outputs: parts.map((t, i) => ({ name: session.outputNames[i], dims: t.dims })) }, bytes);
    } catch (e) {
      send({ error: oneLine(e) });
    }
  }
}

main().catch((e) => {
  process.stderr.write(`ort_web_runner: ${oneLine(e)}\n`);
  process.exit(1);
});
