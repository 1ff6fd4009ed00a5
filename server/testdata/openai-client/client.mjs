// Drives orcd's OpenAI-compatible API with the official openai package and
// prints what it saw as one JSON object; the Go test checks it.
// Usage: ORCD_BASE_URL=http://127.0.0.1:PORT/v1 [ORCD_API_KEY=...] node client.mjs
import OpenAI from 'openai';

const client = new OpenAI({
  baseURL: process.env.ORCD_BASE_URL,
  apiKey: process.env.ORCD_API_KEY || 'unused',
  maxRetries: 0,
  timeout: 60_000,
});

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Gets the current weather in the provided location.',
    parameters: {
      type: 'object',
      properties: { location: { type: 'string', description: 'The city' } },
      required: ['location'],
    },
  },
}];
const messages = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello' },
];

const out = {};
const models = await client.models.list();
out.models = models.data.map((m) => m.id);
const model = out.models[0];

// Non-streaming.
const r = await client.chat.completions.create({ model, messages, max_tokens: 256, seed: 1 });
out.plain = {
  object: r.object,
  role: r.choices[0].message.role,
  content: r.choices[0].message.content,
  reasoning: r.choices[0].message.reasoning_content ?? null,
  finish: r.choices[0].finish_reason,
  usage: r.usage,
};

// Streaming, chunk by chunk.
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 256, seed: 1, stream: true, stream_options: { include_usage: true },
});
let content = '', reasoning = '', finish = null, usage = null, chunks = 0;
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    content += c.delta.content ?? '';
    reasoning += c.delta.reasoning_content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
}
out.streamed = { content, reasoning, finish, usage, chunks };

if (process.env.ORCD_TOOLS === '1') {
  const t = await client.chat.completions.create({ model, messages, tools, max_tokens: 256 });
  out.tool = { finish: t.choices[0].finish_reason, calls: t.choices[0].message.tool_calls ?? [] };
  // The SDK's stream helper assembles tool calls from the deltas.
  const runner = client.chat.completions.stream({ model, messages, tools, max_tokens: 256 });
  const final = await runner.finalChatCompletion();
  out.toolStreamed = { finish: final.choices[0].finish_reason, calls: final.choices[0].message.tool_calls ?? [] };
}

// An invalid request surfaces as the SDK's typed error.
try {
  await client.chat.completions.create({ model, messages, temperature: 5 });
  out.badRequest = null;
} catch (e) {
  out.badRequest = { status: e.status, type: e.type ?? e.error?.type ?? null, isAPIError: e instanceof OpenAI.APIError };
}

console.log(JSON.stringify(out));
