// The Vercel AI SDK (`ai`) with its OpenAI, OpenAI-compatible and Anthropic providers,
// against tokenwire's dialects. Each check is `FLAVOUR_WHAT`: the flavour picks the
// provider and API (chat, responses, compatible, anthropic).
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";

import { main, PNG_BYTES, readThenAbort } from "./checks.mjs";

// The SDK warns on stderr about model names it does not know (all of tokenwire's).
globalThis.AI_SDK_LOG_WARNINGS = false;

const settings = (baseUrl) => ({ baseURL: `${baseUrl}/v1`, apiKey: "unused" });

const FLAVOURS = {
  chat: (baseUrl, model) => createOpenAI(settings(baseUrl)).chat(model),
  responses: (baseUrl, model) => createOpenAI(settings(baseUrl)).responses(model),
  // `includeUsage` asks for the usage chunk, as the package's docs tell its users to.
  compatible: (baseUrl, model) =>
    createOpenAICompatible({ name: "tokenwire", includeUsage: true, ...settings(baseUrl) })
      .chatModel(model),
  anthropic: (baseUrl, model) => createAnthropic(settings(baseUrl))(model),
};

const IMAGE_PROMPT = [
  {
    role: "user",
    content: [
      { type: "text", text: "What is in this picture?" },
      { type: "image", image: PNG_BYTES, mediaType: "image/png" },
    ],
  },
];

function usageOf(usage) {
  const { inputTokens, outputTokens, totalTokens } = usage;
  return { inputTokens, outputTokens, totalTokens };
}

// streamText hands errors to `onError` (by default, console.error) and ends the text
// stream quietly; collect them so that a check fails as it should.
async function streamed(model, call) {
  const errors = [];
  const result = streamText({ model, maxRetries: 0, onError: ({ error }) => errors.push(error), ...call });
  let text = "";
  let parts = 0;
  for await (const delta of result.textStream) {
    text += delta;
    parts += 1;
  }
  if (errors.length) throw errors[0];
  return {
    text,
    parts,
    finishReason: await result.finishReason,
    usage: usageOf(await result.usage),
  };
}

function checksOf(flavour, makeModel) {
  return {
    async [`${flavour}_plain`]({ baseUrl, model }) {
      const result = await generateText({ model: makeModel(baseUrl, model), prompt: "hi", maxRetries: 0 });
      return { text: result.text, finishReason: result.finishReason, usage: usageOf(result.usage) };
    },

    async [`${flavour}_stream`]({ baseUrl, model }) {
      return streamed(makeModel(baseUrl, model), { prompt: "hi" });
    },

    async [`${flavour}_abort`]({ baseUrl, model }) {
      const controller = new AbortController();
      const result = streamText({
        model: makeModel(baseUrl, model),
        prompt: "hi",
        maxRetries: 0,
        abortSignal: controller.signal,
        onError: () => {},
      });
      return readThenAbort(result.textStream, () => controller.abort());
    },

    async [`${flavour}_image`]({ baseUrl, model }) {
      return streamed(makeModel(baseUrl, model), { messages: IMAGE_PROMPT });
    },
  };
}

const checks = Object.assign(
  {},
  ...Object.entries(FLAVOURS).map(([flavour, makeModel]) => checksOf(flavour, makeModel)),
  {
    // @ai-sdk/openai puts `user` in a Responses body when the caller sets it.
    async responses_user({ baseUrl, model }) {
      const result = await generateText({
        model: FLAVOURS.responses(baseUrl, model),
        prompt: "hi",
        maxRetries: 0,
        providerOptions: { openai: { user: "user-1234" } },
      });
      return { text: result.text, finishReason: result.finishReason };
    },

    // A tool round trip on the Responses model, streamed: the SDK runs the tool and sends
    // its history (text, function_call, function_call_output) back for a second step.
    async responses_tools({ baseUrl, model }) {
      const getWeather = tool({
        description: "The weather now in a city",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        }),
        execute: async ({ city }) => `18 C in ${city}`,
      });
      const errors = [];
      const result = streamText({
        model: FLAVOURS.responses(baseUrl, model),
        prompt: "Weather in Paris?",
        tools: { get_weather: getWeather },
        stopWhen: stepCountIs(2),
        maxRetries: 0,
        onError: ({ error }) => errors.push(error),
      });
      const kinds = [];
      for await (const part of result.fullStream) kinds.push(part.type);
      if (errors.length) throw errors[0];
      const steps = await result.steps;
      return {
        text: await result.text,
        kinds: [...new Set(kinds)],
        steps: steps.map((step) => ({
          finishReason: step.finishReason,
          calls: step.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
          results: step.toolResults.map((r) => r.output),
        })),
      };
    },
  },
);

await main(checks);
