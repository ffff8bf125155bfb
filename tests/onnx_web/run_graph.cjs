// Runs an ONNX graph with onnxruntime-web's WebAssembly backend, as a browser page would, on inputs
// written by tests/test_onnx_web.py: node run_graph.cjs ORT_WEB_DIR GRAPH.onnx FOLDER
// FOLDER/inputs.json: {name: {"type": "float32" | "int64", "dims": [...]}} with FOLDER/NAME.bin the raw
// little-endian values; the outputs come back as FOLDER/outputs.json and FOLDER/out_NAME.bin.
const fs = require("fs");
const path = require("path");

async function main() {
  const [ortDir, graph, folder] = process.argv.slice(2);
  const ort = require(require.resolve("onnxruntime-web", { paths: [ortDir] }));
  ort.env.wasm.numThreads = 1; // no worker threads: the same arithmetic order on every machine
  const session = await ort.InferenceSession.create(fs.readFileSync(graph), { executionProviders: ["wasm"] });
  const specs = JSON.parse(fs.readFileSync(path.join(folder, "inputs.json")));
  const feeds = {};
  for (const [name, spec] of Object.entries(specs)) {
    const bytes = fs.readFileSync(path.join(folder, `${name}.bin`));
    const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    const data = spec.type === "int64" ? new BigInt64Array(buffer) : new Float32Array(buffer);
    feeds[name] = new ort.Tensor(spec.type, data, spec.dims);
  }
  const results = await session.run(feeds);
  const outputs = {};
  for (const [name, tensor] of Object.entries(results)) {
    fs.writeFileSync(path.join(folder, `out_${name}.bin`), Buffer.from(tensor.data.buffer, tensor.data.byteOffset,
                                                                       tensor.data.byteLength));
    outputs[name] = { type: tensor.type, dims: tensor.dims };
  }
  fs.writeFileSync(path.join(folder, "outputs.json"), JSON.stringify(outputs));
}

main().catch((error) => {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
