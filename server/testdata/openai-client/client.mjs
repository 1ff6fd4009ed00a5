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

// n choices, and tool_choice none (tools defined, no call).
const two = await client.chat.completions.create({ model, messages, max_tokens: 256, n: 2, seed: 3 });
out.n = { choices: two.choices.map((c) => ({ index: c.index, content: c.message.content, finish: c.finish_reason })), usage: two.usage };
if (process.env.ORCD_TOOLS === '1') {
  const none = await client.chat.completions.create({ model, messages, tools, tool_choice: 'none', max_tokens: 256 });
  out.toolChoiceNone = { finish: none.choices[0].finish_reason, content: none.choices[0].message.content, calls: none.choices[0].message.tool_calls ?? [] };
}

// Log probabilities: chat, streamed and not, and completions with echo.
const lp = await client.chat.completions.create({ model, messages, max_tokens: 256, seed: 1, logprobs: true, top_logprobs: 2 });
const lstream = await client.chat.completions.create({
  model, messages, max_tokens: 256, seed: 1, logprobs: true, top_logprobs: 2, stream: true,
});
const streamedLogprobs = [];
for await (const chunk of lstream) {
  for (const c of chunk.choices) streamedLogprobs.push(...(c.logprobs?.content ?? []));
}
const comp = await client.completions.create({ model, prompt: 'Hello', max_tokens: 4, logprobs: 2, echo: true });
out.logprobs = {
  content: lp.choices[0].logprobs?.content ?? null,
  streamed: streamedLogprobs,
  completionText: comp.choices[0].text,
  completion: comp.choices[0].logprobs,
};

// The model by id, and an unknown id.
out.retrieved = (await client.models.retrieve(model)).id;
try {
  await client.models.retrieve('no-such-model');
  out.retrieveMissing = null;
} catch (e) {
  out.retrieveMissing = { status: e.status, isNotFound: e instanceof OpenAI.NotFoundError };
}

// The Responses API: plain, streamed event by event, and with a tool call
// whose result goes back by previous_response_id.
const items = (r) => r.output.map((o) => (o.type === 'function_call'
  ? { type: o.type, name: o.name, arguments: o.arguments, callID: o.call_id }
  : { type: o.type, text: (o.content ?? []).map((c) => c.text).join('') }));
const input = 'Hello';
const instructions = 'Be brief.';
const resp = await client.responses.create({ model, input, instructions, reasoning: { effort: 'low' }, max_output_tokens: 256 });
out.responses = { status: resp.status, text: resp.output_text, items: items(resp), usage: resp.usage };
const rstream = await client.responses.create({ model, input, instructions, max_output_tokens: 256, stream: true });
const types = [];
let rtext = '', rreasoning = '', completed = null;
for await (const ev of rstream) {
  types.push(ev.type);
  if (ev.type === 'response.output_text.delta') rtext += ev.delta;
  if (ev.type === 'response.reasoning_text.delta') rreasoning += ev.delta;
  if (ev.type === 'response.completed') completed = ev.response;
}
out.responsesStreamed = { types, text: rtext, reasoning: rreasoning, status: completed?.status ?? null, usage: completed?.usage ?? null };
if (process.env.ORCD_TOOLS === '1') {
  const rtools = [{ type: 'function', name: 'get_weather', description: 'Gets the current weather in the provided location.',
    parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] } }];
  const call = await client.responses.create({ model, input: 'Weather in SF?', tools: rtools, max_output_tokens: 256 });
  const fc = call.output.find((o) => o.type === 'function_call');
  // The SDK's stream helper assembles the same response from the events.
  const helper = client.responses.stream({ model, input: 'Weather in SF?', tools: rtools, max_output_tokens: 256 });
  const final = await helper.finalResponse();
  const next = await client.responses.create({
    model, previous_response_id: call.id, tools: rtools, max_output_tokens: 256,
    input: [{ type: 'function_call_output', call_id: fc.call_id, output: '{"temperature":20}' }],
  });
  out.responsesTool = { items: items(call), streamedItems: items(final), next: next.output_text };
}

// Structured output: response_format (plain and streamed), forced tool
// calls (required and named) and the Responses API's text.format; the Go
// test validates each against its schema.
if (process.env.ORCD_STRUCTURED === '1') {
  const schema = JSON.parse(process.env.ORCD_SCHEMA);
  const response_format = { type: 'json_schema', json_schema: { name: 'answer', strict: true, schema } };
  const st = {};
  const c = await client.chat.completions.create({ model, messages, max_tokens: 200, seed: 5, response_format });
  st.chat = c.choices[0].message.content;
  const cs = await client.chat.completions.create({ model, messages, max_tokens: 200, seed: 6, response_format, stream: true });
  st.chatStreamed = '';
  for await (const chunk of cs) for (const ch of chunk.choices) st.chatStreamed += ch.delta.content ?? '';
  const stools = [{ type: 'function', function: { name: 'answer', strict: true, parameters: schema } }];
  for (const [key, tool_choice] of [['required', 'required'], ['named', { type: 'function', function: { name: 'answer' } }]]) {
    const t = await client.chat.completions.create({ model, messages, tools: stools, tool_choice, max_tokens: 200 });
    st[key] = { finish: t.choices[0].finish_reason, calls: t.choices[0].message.tool_calls ?? [] };
  }
  const rf = await client.responses.create({ model, input: 'Hello', max_output_tokens: 200,
    text: { format: { type: 'json_schema', name: 'answer', strict: true, schema } } });
  st.responses = rf.output_text;
  out.structured = st;
}

// An invalid request surfaces as the SDK's typed error.
try {
  await client.chat.completions.create({ model, messages, temperature: 5 });
  out.badRequest = null;
} catch (e) {
  out.badRequest = { status: e.status, type: e.type ?? e.error?.type ?? null, isAPIError: e instanceof OpenAI.APIError };
}

console.log(JSON.stringify(out));
