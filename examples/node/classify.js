// Classify images with a lenet-export model from Node.js.
//
//   npm install --ignore-scripts        # onnxruntime-node ships its CPU binaries in the package
//   node classify.js ../../exported/fashion-mnist-lenet-modern
//
// Loads <export>/model.raw.onnx (uint8 images in, normalisation inside the graph), reads the golden
// input <export>/raw_test_data_set_0/input_0.pb (an ONNX TensorProto) and prints one JSON object:
// {"provider", "classes", "predictions": [{"index", "label", "class", "probability", "logits"}]}.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const { onnx } = require('onnx-proto');

function readTensor(file) {
  const t = onnx.TensorProto.decode(fs.readFileSync(file));
  if (t.dataType !== onnx.TensorProto.DataType.UINT8) throw new Error(`${file}: expected a uint8 tensor`);
  return new ort.Tensor('uint8', Uint8Array.from(t.rawData), t.dims.map(Number));
}

async function main() {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node classify.js <export folder>');
    process.exit(2);
  }
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'metadata.json'), 'utf8'));
  const session = await ort.InferenceSession.create(path.join(dir, 'model.raw.onnx'),
                                                    { executionProviders: ['cpu'] });
  const images = readTensor(path.join(dir, 'raw_test_data_set_0', 'input_0.pb'));
  const out = await session.run({ [session.inputNames[0]]: images });
  const [n, k] = out.logits.dims;
  const predictions = [];
  for (let i = 0; i < n; i++) {
    const logits = Array.from(out.logits.data.slice(i * k, (i + 1) * k));
    const probs = out.probabilities.data.slice(i * k, (i + 1) * k);
    const label = logits.indexOf(Math.max(...logits));
    predictions.push({ index: i, label, class: meta.classes[label], probability: probs[label], logits });
  }
  console.log(JSON.stringify({ provider: 'cpu', classes: meta.classes, predictions }));
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
