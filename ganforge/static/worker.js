// ganforge sampler: the generator runs here, off the page's main thread, so the page never blocks.
// Messages: {id, type: "load", bytes, backends, backend, base} -> {id, backend, threads, isolated};
//           {id, type: "run", z, labels, n, d} -> {id, data, dims}; any failure -> {id, error}.
"use strict";
let session = null;

const RUNTIME = {  // what each build loads (ganforge.web.BACKEND_FILES)
  webgpu: ["ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"],
  wasm: ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"],
};

async function gpuAdapter() {
  if (!self.navigator.gpu) return null;
  try { return await self.navigator.gpu.requestAdapter(); } catch (e) { return null; }
}

// The first runtime file of `files` that the server does not have, as an Error naming it; else null.
async function missing(base, files) {
  for (const name of files) {
    let resp = null;
    try { resp = await fetch(base + name, { method: "HEAD" }); } catch (e) { /* reported below */ }
    if (!resp || !resp.ok) {
      return new Error(`the runtime file ${name} is missing from the site (${resp ? `HTTP ${resp.status}` :
        "unreachable"}); export the page again (ganforge export RUN --format web)`);
    }
  }
  return null;
}

async function load({ bytes, backends, backend, base }) {
  // WebGPU where the site ships it and the browser has an adapter; its build also runs WebAssembly.
  const adapter = backends.includes("webgpu") && backend !== "wasm" ? await gpuAdapter() : null;
  const build = adapter || !backends.includes("wasm") ? "webgpu" : "wasm";
  try {
    importScripts(base + RUNTIME[build][0]);
  } catch (e) {
    throw (await missing(base, RUNTIME[build].slice(0, 1))) || new Error(`onnxruntime-web failed to load: ${e.message || e}`);
  }
  ort.env.logLevel = "error";
  ort.env.wasm.wasmPaths = base;
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages (ganforge serve).
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, self.navigator.hardwareConcurrency || 1) : 1;
  if (adapter) {
    try {
      ort.env.webgpu.adapter = adapter;
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu", "wasm"] });
      return "webgpu";
    } catch (e) { /* WebAssembly below */ }
  }
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  } catch (e) {
    throw (await missing(base, RUNTIME[build].slice(1))) ||
      new Error(`onnxruntime-web cannot load generator.onnx: ${e.message || e}`);
  }
  return "wasm";
}

async function run({ z, labels, n, d }) {
  const feeds = { z: new ort.Tensor("float32", z, [n, d]) };
  if (labels) feeds.labels = new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [n]);
  const out = (await session.run(feeds))[session.outputNames[0]];
  return { data: new Float32Array(out.data), dims: Array.from(out.dims, Number) };  // a copy: transferable
}

let queue = Promise.resolve();  // one message at a time, in order: a session runs one call at a time
self.onmessage = (event) => {
  const msg = event.data;
  queue = queue.then(async () => {
    try {
      if (msg.type === "load") {
        const backend = await load(msg);
        self.postMessage({ id: msg.id, backend, threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated });
      } else {
        const result = await run(msg);
        self.postMessage({ id: msg.id, ...result }, [result.data.buffer]);
      }
    } catch (e) {
      self.postMessage({ id: msg.id, error: String(e && e.message || e) });
    }
  });
};
