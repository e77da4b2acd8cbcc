// openai-node (the `openai` package) against tokenwire's OpenAI dialects.
import OpenAI from "openai";

import { main, PNG_DATA_URL, readThenAbort } from "./checks.mjs";

const HI = [{ role: "user", content: "hi" }];
/** Deltas read from a background response before the client leaves it. */
const BEFORE_LEAVING = 10;

function client(baseUrl) {
  return new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "unused", maxRetries: 0 });
}

async function* chatDeltas(stream) {
  for await (const chunk of stream) yield chunk.choices[0]?.delta?.content ?? "";
}

async function* responseDeltas(stream) {
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") yield event.delta;
  }
}

async function chatStream(openai, body) {
  const stream = await openai.chat.completions.create({ ...body, stream: true });
  let text = "";
  let finishReason = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    const choice = chunk.choices[0];
    text += choice?.delta?.content ?? "";
    finishReason = choice?.finish_reason ?? finishReason;
    usage = chunk.usage ?? usage;
  }
  return { text, chunks, finish_reason: finishReason, usage };
}

const checks = {
  async chat_plain({ baseUrl, model }) {
    const answer = await client(baseUrl).chat.completions.create({ model, messages: HI });
    return {
      text: answer.choices[0].message.content,
      finish_reason: answer.choices[0].finish_reason,
      model: answer.model,
      usage: answer.usage,
    };
  },

  async chat_stream({ baseUrl, model }) {
    const body = { model, messages: HI, stream_options: { include_usage: true } };
    return chatStream(client(baseUrl), body);
  },

  async chat_abort({ baseUrl, model }) {
    const controller = new AbortController();
    const stream = await client(baseUrl).chat.completions.create(
      { model, messages: HI, stream: true },
      { signal: controller.signal },
    );
    return readThenAbort(chatDeltas(stream), () => controller.abort());
  },

  async chat_image({ baseUrl, model }) {
    const content = [
      { type: "text", text: "What is in this picture?" },
      { type: "image_url", image_url: { url: PNG_DATA_URL } },
    ];
    return chatStream(client(baseUrl), { model, messages: [{ role: "user", content }] });
  },

  async responses_plain({ baseUrl, model }) {
    const response = await client(baseUrl).responses.create({ model, input: "hi" });
    return { status: response.status, text: response.output_text, usage: response.usage };
  },

  async responses_stream({ baseUrl, model }) {
    const stream = await client(baseUrl).responses.create({ model, input: "hi", stream: true });
    const types = [];
    const numbers = [];
    let text = "";
    let usage = null;
    for await (const event of stream) {
      types.push(event.type);
      numbers.push(event.sequence_number);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") usage = event.response.usage;
    }
    return { text, first: types[0], last: types.at(-1), numbers, usage };
  },

  async responses_abort({ baseUrl, model }) {
    const controller = new AbortController();
    const stream = await client(baseUrl).responses.create(
      { model, input: "hi", stream: true },
      { signal: controller.signal },
    );
    return readThenAbort(responseDeltas(stream), () => controller.abort());
  },

  async responses_image({ baseUrl, model }) {
    const content = [
      { type: "input_text", text: "What is in this picture?" },
      { type: "input_image", image_url: PNG_DATA_URL, detail: "auto" },
    ];
    const input = [{ role: "user", content }];
    const response = await client(baseUrl).responses.create({ model, input });
    return { status: response.status, text: response.output_text };
  },

  // Leave a background response after some deltas, come back with `starting_after`,
  // and read the rest: the numbers must join up with nothing missing or repeated.
  async background_resume({ baseUrl, model }) {
    const openai = client(baseUrl);
    const stream = await openai.responses.create({
      model,
      input: "a long story",
      stream: true,
      background: true,
    });
    let responseId = "";
    const first = [];
    for await (const event of stream) {
      if (event.type === "response.created") responseId = event.response.id;
      if (event.type === "response.output_text.delta") {
        first.push([event.sequence_number, event.delta]);
        if (first.length === BEFORE_LEAVING) break; // closes the connection
      }
    }
    const resumed = await openai.responses.retrieve(responseId, {
      stream: true,
      starting_after: first.at(-1)[0],
    });
    const rest = [];
    let last = "";
    for await (const event of resumed) {
      last = event.type;
      if (event.type === "response.output_text.delta") {
        rest.push([event.sequence_number, event.delta]);
      }
    }
    const final = await openai.responses.retrieve(responseId);
    return { first, rest, last, status: final.status, text: final.output_text };
  },

  async background_cancel({ baseUrl, model }) {
    const openai = client(baseUrl);
    const started = await openai.responses.create({ model, input: "x", background: true });
    const cancelled = await openai.responses.cancel(started.id);
    const events = [];
    for await (const event of await openai.responses.retrieve(started.id, { stream: true })) {
      events.push(event.type);
    }
    return { started: started.status, cancelled: cancelled.status, last: events.at(-1) };
  },

  async models_retrieve({ baseUrl, model }) {
    const found = await client(baseUrl).models.retrieve(model);
    return { id: found.id, object: found.object, owned_by: found.owned_by };
  },

  async input_items({ baseUrl, model }) {
    const openai = client(baseUrl);
    const response = await openai.responses.create({ model, input: "hello there" });
    const items = [];
    for await (const item of openai.responses.inputItems.list(response.id)) items.push(item);
    return { items };
  },

  // Delete a stored response; retrieving it afterwards must be a NotFoundError.
  async responses_delete({ baseUrl, model }) {
    const openai = client(baseUrl);
    const response = await openai.responses.create({ model, input: "hi" });
    await openai.responses.delete(response.id);
    try {
      await openai.responses.retrieve(response.id);
      return { deleted: true, afterwards: "found" };
    } catch (error) {
      return { deleted: true, afterwards: error.constructor.name, status: error.status };
    }
  },
};

await main(checks);
