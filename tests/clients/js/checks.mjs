// Runs named checks of one client against a tokenwire server and prints one JSON line
// per check, so that the pytest side asserts on what the client itself saw.
//
//   node SCRIPT.mjs BASE_URL MODEL CHECK [CHECK ...]
//
// BASE_URL is the server's root (http://127.0.0.1:PORT); MODEL the `model` each call names.
//
// A check that throws is reported with the error as the client library shaped it
// (its class name, HTTP status, body): that is what an application would see.

/** A 1x1 transparent PNG: the smallest real image an SDK will send as one. */
export const PNG_BASE64 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
export const PNG_DATA_URL = `data:image/png;base64,${PNG_BASE64}`;
export const PNG_BYTES = Uint8Array.from(Buffer.from(PNG_BASE64, "base64"));

/** How many text deltas an abort check reads before it aborts. */
export const DELTAS_BEFORE_ABORT = 3;

function describe(error) {
  return {
    name: error?.constructor?.name ?? typeof error,
    status: error?.status ?? error?.statusCode ?? null,
    message: String(error?.message ?? error),
    body: error?.error ?? error?.responseBody ?? null,
  };
}

/** Run `checks[name]({baseUrl, model})` for each name on the command line, in order. */
export async function main(checks) {
  const [baseUrl, model, ...names] = process.argv.slice(2);
  if (!baseUrl || !model || names.length === 0) {
    console.error(`usage: node SCRIPT.mjs BASE_URL MODEL CHECK...; checks: ${Object.keys(checks)}`);
    process.exit(2);
  }
  for (const name of names) {
    const check = checks[name];
    if (!check) {
      console.error(`unknown check ${name}; checks: ${Object.keys(checks)}`);
      process.exit(2);
    }
    let line;
    try {
      line = { check: name, ok: true, result: await check({ baseUrl, model }) };
    } catch (error) {
      line = { check: name, ok: false, error: describe(error) };
    }
    process.stdout.write(JSON.stringify(line) + "\n");
  }
}

/** Read text from an async iterable of deltas until `count` arrived, then `abort()` and
 * read on to the iteration's end; return the deltas before the abort, how many the client
 * still handed over after it (already buffered), and how the iteration ended. */
export async function readThenAbort(deltas, abort, count = DELTAS_BEFORE_ABORT) {
  const before = [];
  let after = 0;
  let ended = "quietly";
  try {
    for await (const delta of deltas) {
      if (!delta) continue;
      if (before.length < count) {
        before.push(delta);
        if (before.length === count) abort();
      } else {
        after += 1;
      }
    }
  } catch (error) {
    ended = error?.constructor?.name ?? String(error);
  }
  return { deltas: before, after, ended };
}
