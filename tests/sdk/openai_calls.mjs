// The OpenAI SDK for Node through keygate: chat and chat streaming (without
// stream_options: keygate asks for usage itself and takes it back out), and a typed error.
// Prints one JSON report in the shape of common.py's.
import OpenAI from 'openai';
import { readFileSync } from 'node:fs';

const BASE = process.env.KEYGATE_URL;
const KEY = process.env.KEYGATE_KEY;
const MODEL = 'gpt-4o-mini';
const report = { calls: [], refusals: [], failures: [], facts: {} };
const words = (text) => text.split(/\s+/).filter(Boolean).length;
const sdkVersion = JSON.parse(readFileSync(new URL('./node_modules/openai/package.json', import.meta.url))).version;
report.facts.sdk = `openai ${sdkVersion} (node ${process.version})`;

const clientFor = (key) => new OpenAI({ baseURL: `${BASE}/v1`, apiKey: key, maxRetries: 0, timeout: 20000 });
const client = clientFor(KEY);
const chatUsage = (u) => (u ? { input: u.prompt_tokens, output: u.completion_tokens } : null);

async function call(name, model, fn, expect) {
  try {
    const [usage, extra] = await fn();
    report.calls.push({ name, model, usage, expect, ...extra });
  } catch (e) {
    report.failures.push({ name, error: `${e?.constructor?.name}: ${e?.message}`, trace: String(e?.stack).slice(0, 800) });
  }
}

async function refusal(name, fn) {
  try {
    const result = await fn();
    report.failures.push({ name, error: `no error raised: ${JSON.stringify(result).slice(0, 500)}` });
  } catch (e) {
    report.refusals.push({ name, type: `openai.${e?.constructor?.name}`, status: e?.status ?? null, code: e?.code ?? null, message: String(e?.message).slice(0, 300) });
  }
}

const P_CHAT = 'hello from the openai node sdk';
await call('chat', MODEL, async () => {
  const r = await client.chat.completions.create({ model: MODEL, max_tokens: 3, messages: [{ role: 'user', content: P_CHAT }] });
  return [chatUsage(r.usage), { id: r.id, text: r.choices[0].message.content }];
}, { input: words(P_CHAT), output: 3 });

const P_STREAM = 'a streamed chat from node without stream options';
await call('chat_stream_without_stream_options', MODEL, async () => {
  const stream = await client.chat.completions.create({ model: MODEL, max_tokens: 4, stream: true, messages: [{ role: 'user', content: P_STREAM }] });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return [null, {
    text: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''),
    chunks: chunks.length,
    chunks_with_usage: chunks.filter((c) => c.usage != null).length,
    chunks_without_choices: chunks.filter((c) => !c.choices?.length).length,
    finish_reasons: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
  }];
}, { input: words(P_STREAM), output: 4 });

const P_STREAM_USAGE = 'a streamed chat from node that asks for usage';
await call('chat_stream_with_include_usage', MODEL, async () => {
  const stream = await client.chat.completions.create({ model: MODEL, max_tokens: 5, stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: P_STREAM_USAGE }] });
  const usage = [];
  let text = '';
  for await (const c of stream) {
    if (c.usage) usage.push(c.usage);
    text += c.choices[0]?.delta?.content ?? '';
  }
  return [chatUsage(usage.at(-1)), { text, chunks_with_usage: usage.length }];
}, { input: words(P_STREAM_USAGE), output: 5 });

const refuse = (key, model = MODEL) => clientFor(key).chat.completions.create({ model, max_tokens: 2, messages: [{ role: 'user', content: 'refused' }] });
await refusal('unknown_key', () => refuse(process.env.KEYGATE_UNKNOWN_KEY));
await refusal('quota_used_up', () => refuse(process.env.KEYGATE_EXHAUSTED_KEY));
await refusal('model_not_allowed', () => refuse(process.env.KEYGATE_RESTRICTED_KEY, 'gpt-4o'));

process.stdout.write(`${JSON.stringify(report)}\n`);
