// The Anthropic TypeScript SDK (`@anthropic-ai/sdk`) against tokenwire's Messages dialect.
import Anthropic from "@anthropic-ai/sdk";

import { main, PNG_BASE64, readThenAbort } from "./checks.mjs";

const HI = [{ role: "user", content: "hi" }];
const MAX_TOKENS = 256;

function client(baseUrl) {
  // The SDK appends /v1/messages to its base URL itself.
  return new Anthropic({ baseURL: baseUrl, apiKey: "unused", maxRetries: 0 });
}

async function* textDeltas(stream) {
  for await (const event of stream) {
    if (event.type === "content_block_delta" && event.delta.type === "text_delta") {
      yield event.delta.text;
    }
  }
}

function summary(message) {
  return {
    text: message.content.map((block) => block.text ?? "").join(""),
    stop_reason: message.stop_reason,
    model: message.model,
    usage: message.usage,
  };
}

const checks = {
  async messages_plain({ baseUrl, model }) {
    const body = { model, max_tokens: MAX_TOKENS, messages: HI };
    return summary(await client(baseUrl).messages.create(body));
  },

  async messages_stream({ baseUrl, model }) {
    const stream = client(baseUrl).messages.stream({ model, max_tokens: MAX_TOKENS, messages: HI });
    const types = [];
    stream.on("streamEvent", (event) => types.push(event.type));
    const final = await stream.finalMessage();
    return { ...summary(final), first: types[0], last: types.at(-1) };
  },

  async messages_abort({ baseUrl, model }) {
    const stream = client(baseUrl).messages.stream({ model, max_tokens: MAX_TOKENS, messages: HI });
    return readThenAbort(textDeltas(stream), () => stream.abort());
  },

  async messages_image({ baseUrl, model }) {
    const content = [
      { type: "image", source: { type: "base64", media_type: "image/png", data: PNG_BASE64 } },
      { type: "text", text: "What is in this picture?" },
    ];
    const body = { model, max_tokens: MAX_TOKENS, messages: [{ role: "user", content }] };
    return summary(await client(baseUrl).messages.create(body));
  },

  async count_tokens({ baseUrl, model }) {
    const counted = await client(baseUrl).messages.countTokens({ model, messages: HI });
    return { input_tokens: counted.input_tokens };
  },
};

await main(checks);
