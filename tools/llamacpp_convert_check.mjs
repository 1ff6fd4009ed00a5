// llamacpp_convert_check.mjs checks `orcd convert` against llama.cpp itself:
// it converts each HF fixture of model/testdata/hf (tiny_llama, tiny_qwen2,
// tiny_gptoss, written by tools/hf_arch_fixtures.py with HF transformers),
// loads the GGUF file with llama.cpp's CPU build (through node-llama-cpp's
// prebuilt binaries), feeds the fixture's prompt token ids (no tokenizer),
// and compares with HF's reference in <name>.json.gz:
//   - the logits at the last prompt position against prompt_logits;
//   - 20 greedy tokens (argmax of llama.cpp's raw logits) against greedy,
//     and the logits of each greedy step against greedy_logits.
// Each fixture is converted with --outtype f32 (the weights HF ran, so
// llama and qwen2 logits must agree to float rounding and greedy tokens be
// identical), and with the default --outtype auto (BF16 matrices) and q8_0,
// which must load; their differences from HF are reported.
//
// Run from the repository root (needs Go and Node >= 20; the npm registry):
//   npm ci --prefix tools/llamacpp --ignore-scripts --omit=optional
//   node tools/llamacpp_convert_check.mjs [--orcd PATH] [--keep DIR]
// tools/llamacpp/package.json pins node-llama-cpp and its linux-x64 CPU
// binaries; its node_modules is git-ignored. Without --orcd the script
// builds orcd with `go build`. It exits 1 if a file does not load, or if
// llama's or qwen2's f32 logits or greedy tokens differ from HF's; it is not
// part of `make test` (the npm install is 85 MB and needs the registry).
// Results of the last run are in model/testdata/README.md.
import {execFileSync} from "node:child_process";
import {mkdtempSync, readFileSync, rmSync} from "node:fs";
import {createRequire} from "node:module";
import {tmpdir} from "node:os";
import {join, resolve} from "node:path";
import {fileURLToPath, pathToFileURL} from "node:url";
import {gunzipSync} from "node:zlib";

const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
// exact: with --outtype f32, llama.cpp should compute what HF did, up to
// float rounding. Not gpt-oss: llama.cpp's YaRN always truncates the
// correction range to whole dimensions (ggml_rope_yarn_corr_dims floors and
// ceils), as HF does only with truncate=true, and gpt-oss's config says
// false; and llama.cpp's CPU MXFP4 matmul quantizes activations to Q8_0.
// With the experts dequantized to F32, llama.cpp matched orcd with truncated
// correction dims to 6e-6 (model/testdata/README.md), so the tensors are
// right; their logits against HF are reported, not checked.
const fixtures = [
    {name: "tiny_llama", exact: true},
    {name: "tiny_qwen2", exact: true},
    {name: "tiny_gptoss", exact: false},
];
const outTypes = ["f32", "auto", "q8_0"];
// f32 weights and KV cache: llama.cpp and PyTorch differ only in summation
// order.
const f32Tolerance = 1e-4;

const args = process.argv.slice(2);
const flag = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
};
const keep = flag("--keep");
const work = keep ?? mkdtempSync(join(tmpdir(), "llamacpp-check-"));
let orcd = flag("--orcd");
if (orcd == null) {
    orcd = join(work, "orcd");
    execFileSync("go", ["build", "-o", orcd, "./cmd/orcd"], {cwd: root, stdio: "inherit", env: {...process.env, CGO_ENABLED: "0"}});
}

// node-llama-cpp lives in tools/llamacpp/node_modules, not next to this file.
const require = createRequire(join(root, "tools", "llamacpp", "package.json"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const nlcVersion = JSON.parse(readFileSync(join(root, "tools", "llamacpp", "node_modules", "node-llama-cpp", "package.json"), "utf8")).version;
console.log(`node-llama-cpp ${nlcVersion}, llama.cpp ${llama.llamaCppRelease.repo} ${llama.llamaCppRelease.release} (${llama.buildType}, gpu ${llama.gpu})`);

// maxErr compares llama.cpp's logits (a Map token -> logit) with a reference
// row: the largest absolute difference, and that divided by the row's
// largest |logit| (the "relative error" reported, as in docs/QUALITY.md).
function maxErr(got, want) {
    if (got.size !== want.length) {
        throw new Error(`llama.cpp returned ${got.size} logits, the reference has ${want.length}`);
    }
    let abs = 0, scale = 0;
    for (let t = 0; t < want.length; t++) {
        abs = Math.max(abs, Math.abs(got.get(t) - want[t]));
        scale = Math.max(scale, Math.abs(want[t]));
    }
    return {abs, rel: abs / scale};
}

function argmax(logits) {
    let best = -1, bestLogit = -Infinity;
    for (const [t, l] of logits) {
        if (l > bestLogit || (l === bestLogit && t < best)) {
            best = t;
            bestLogit = l;
        }
    }
    return best;
}

// The logits of the next token after feeding tokens, with sampling at
// temperature 0 (greedy: the chain leaves the logits as the model gave
// them) and no repeat penalty.
async function feed(seq, tokens) {
    const input = tokens.map((t, i) => i < tokens.length - 1 ? t : [t, {
        generateNext: {logits: true, token: true, options: {temperature: 0}},
    }]);
    const out = await seq.controlledEvaluate(input);
    const next = out[tokens.length - 1]?.next;
    if (next?.logits == null) {
        throw new Error("llama.cpp returned no logits");
    }
    return next;
}

async function check(name, outType) {
    const ref = JSON.parse(gunzipSync(readFileSync(join(root, "model", "testdata", "hf", `${name}.json.gz`))));
    const file = join(work, `${name}-${outType}.gguf`);
    execFileSync(orcd, ["convert", "--outtype", outType, join(root, "model", "testdata", "hf", name), "-o", file], {stdio: ["ignore", "ignore", "inherit"]});
    const row = {model: name, outtype: outType, loads: false};
    let model;
    try {
        model = await llama.loadModel({modelPath: file, gpuLayers: 0});
    } catch (e) {
        row.error = e.message;
        return row;
    }
    row.loads = true;
    try {
        // An F32 KV cache (llama.cpp's default is F16) keeps llama.cpp's own
        // rounding out of the comparison.
        const ctx = await model.createContext({
            contextSize: 128, batchSize: 64, sequences: 1, flashAttention: false,
            experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
        });
        const seq = ctx.getSequence();
        let next = await feed(seq, ref.prompt);
        const prompt = maxErr(next.logits, ref.prompt_logits[ref.prompt.length - 1]);
        row.promptRelErr = prompt.rel;
        row.promptAbsErr = prompt.abs;
        const greedy = [];
        let stepRel = null; // none compared when the first token differs
        for (let i = 0; i < ref.greedy.length; i++) {
            const tok = argmax(next.logits);
            if (next.token !== tok) {
                throw new Error(`step ${i}: llama.cpp's greedy sampler chose ${next.token}, the argmax of its logits is ${tok}`);
            }
            greedy.push(tok);
            if (i === ref.greedy.length - 1) {
                break;
            }
            next = await feed(seq, [tok]);
            // greedy_logits[i] follows HF's greedy[i]; compare only while the
            // sequences agree.
            if (greedy.every((t, j) => t === ref.greedy[j])) {
                stepRel = Math.max(stepRel ?? 0, maxErr(next.logits, ref.greedy_logits[i]).rel);
            }
        }
        row.greedySame = greedy.filter((t, i) => t === ref.greedy[i]).length;
        row.greedyPrefix = greedy.findIndex((t, i) => t !== ref.greedy[i]);
        if (row.greedyPrefix < 0) {
            row.greedyPrefix = greedy.length;
        }
        row.greedyRelErr = stepRel;
        row.greedy = greedy;
        await ctx.dispose();
    } catch (e) {
        row.error = e.message;
    }
    await model.dispose();
    return row;
}

let failed = false;
for (const {name, exact} of fixtures) {
    for (const outType of outTypes) {
        const r = await check(name, outType);
        const fmt = (x) => x == null ? "-" : x.toExponential(1);
        console.log(`${r.model.padEnd(12)} --outtype ${r.outtype.padEnd(4)} loads ${r.loads ? "yes" : "NO "}` +
            (r.greedySame == null ? "" : `  greedy ${r.greedySame}/${r.greedy.length} (same prefix ${r.greedyPrefix})` +
                `  last-prompt logits rel err ${fmt(r.promptRelErr)} (abs ${fmt(r.promptAbsErr)})  greedy-step rel err ${fmt(r.greedyRelErr)}`) +
            (r.error ? `  ERROR: ${r.error}` : ""));
        if (!r.loads || r.error || (exact && outType === "f32" &&
            (r.greedyPrefix !== r.greedy.length || r.promptRelErr > f32Tolerance || (r.greedyRelErr ?? 0) > f32Tolerance))) {
            failed = true;
        }
    }
}

await llama.dispose();
if (keep == null) {
    rmSync(work, {recursive: true, force: true});
}
console.log(failed ? "FAIL" : "ok");
process.exit(failed ? 1 : 0);
