// SPDX-License-Identifier: MIT
// The agent as a real client would be: the OpenAI SDK pointed at OpenRouter,
// trusting the pod CA only through NODE_EXTRA_CA_CERTS. One non-streaming
// and one streaming chat completion; prints one JSON line per call:
//   {"call":"create","content":"...","usage":true|false,"cost":...}
// Usage: node chat.mjs API_KEY [MODEL]
import OpenAI from 'openai';

const apiKey = process.argv[2];
const model = process.argv[3] || 'anthropic/claude-sonnet-4';
const client = new OpenAI({
	baseURL: 'https://openrouter.ai/api/v1',
	apiKey,
	maxRetries: 0,
	timeout: 15000,
});
const messages = [{ role: 'user', content: 'hi' }];

const done = await client.chat.completions.create({ model, messages });
console.log(JSON.stringify({
	call: 'create',
	content: done.choices[0].message.content,
	usage: !!done.usage,
	cost: done.usage?.cost ?? null,
}));

const stream = await client.chat.completions.create({ model, messages, stream: true });
let content = '';
let usage = null;
for await (const chunk of stream) {
	content += chunk.choices?.[0]?.delta?.content ?? '';
	if (chunk.usage) usage = chunk.usage;
}
console.log(JSON.stringify({
	call: 'stream',
	content,
	usage: !!usage,
	cost: usage?.cost ?? null,
}));
