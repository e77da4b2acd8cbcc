/**
 * A small markdown renderer that builds DOM nodes and sets only `textContent`: model
 * text can never become markup, whatever it holds (`<script>`, `<img onerror>`). It
 * knows paragraphs, headings, emphasis, inline code, fenced code blocks, lists, block
 * quotes and links (http and https only). Unfinished input (an answer still streaming)
 * renders as far as it goes: an open fence is a code block until it closes.
 */

const FENCE = /^\s{0,3}(```|~~~)\s*([\w+.#-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

/**
 * Render `text` into a fresh fragment.
 * @param {string} text
 * @param {Document} [doc]
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text, doc = document) {
  const out = doc.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (!line.trim()) {
      i += 1;
    } else if ((match = FENCE.exec(line))) {
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(match[1]) && !lines[i].trim().slice(3).trim())) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence, if any
      out.append(codeBlock(body.join("\n"), match[2], doc));
    } else if ((match = HEADING.exec(line))) {
      out.append(element(doc, `h${match[1].length}`, inline(match[2], doc)));
      i += 1;
    } else if (RULE.test(line)) {
      out.append(doc.createElement("hr"));
      i += 1;
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      i = list(lines, i, out, doc);
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        quoted.push(match[1]);
        i += 1;
      }
      const quote = doc.createElement("blockquote");
      quote.append(renderMarkdown(quoted.join("\n"), doc));
      out.append(quote);
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
        paragraph.push(lines[i].trim());
        i += 1;
      }
      out.append(element(doc, "p", inline(paragraph.join("\n"), doc)));
    }
  }
  return out;
}

function startsBlock(line) {
  return [FENCE, HEADING, BULLET, NUMBERED, QUOTE, RULE].some((pattern) => pattern.test(line));
}

function list(lines, i, out, doc) {
  const ordered = NUMBERED.test(lines[i]);
  const pattern = ordered ? NUMBERED : BULLET;
  const node = doc.createElement(ordered ? "ol" : "ul");
  if (ordered) {
    const first = Number(NUMBERED.exec(lines[i])[1]);
    if (first !== 1) node.start = first;
  }
  let item = null;
  while (i < lines.length) {
    const match = pattern.exec(lines[i]);
    if (match) {
      item = element(doc, "li", inline(ordered ? match[2] : match[1], doc));
      node.append(item);
    } else if (item && lines[i].trim() && /^\s{2,}/.test(lines[i]) && !startsBlock(lines[i])) {
      item.append("\n", ...inline(lines[i].trim(), doc)); // a continued item
    } else {
      break;
    }
    i += 1;
  }
  out.append(node);
  return i;
}

function codeBlock(text, language, doc) {
  const pre = doc.createElement("pre");
  const code = doc.createElement("code");
  if (language) code.dataset.language = language;
  code.textContent = text;
  pre.append(code);
  return pre;
}

// Inline: code spans first (nothing inside them is markdown), then links, strong, emphasis.
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\[([^\]\n]+)\]\(\s*(\S+?)\s*\)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<![\w])_(?=\S)([\s\S]*?\S)_(?![\w])|~~(?=\S)([\s\S]*?\S)~~/g;

/**
 * The nodes of one line or paragraph of inline markdown.
 * @returns {Node[]}
 */
export function inline(text, doc = document) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(lineBreaks(text.slice(last, match.index), doc));
    const [, ticks, code, label, href, strong1, strong2, em1, em2, struck] = match;
    if (ticks) {
      nodes.push(textElement(doc, "code", code.length > 2 && code.startsWith(" ") && code.endsWith(" ") ? code.slice(1, -1) : code));
    } else if (label !== undefined) {
      nodes.push(link(label, href, doc));
    } else if (strong1 !== undefined || strong2 !== undefined) {
      nodes.push(element(doc, "strong", inline(strong1 ?? strong2, doc)));
    } else if (em1 !== undefined || em2 !== undefined) {
      nodes.push(element(doc, "em", inline(em1 ?? em2, doc)));
    } else {
      nodes.push(element(doc, "del", inline(struck, doc)));
    }
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(lineBreaks(text.slice(last), doc));
  return nodes;
}

/** A link only to http(s); anything else (`javascript:`, `data:`) stays plain text. */
function link(label, href, doc) {
  let url = null;
  try {
    url = new URL(href);
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    return doc.createTextNode(`[${label}](${href})`);
  }
  const anchor = element(doc, "a", inline(label, doc));
  anchor.href = url.href;
  anchor.rel = "noopener noreferrer";
  anchor.target = "_blank";
  return anchor;
}

function lineBreaks(text, doc) {
  const parts = text.split("\n");
  const fragment = doc.createDocumentFragment();
  parts.forEach((part, index) => {
    if (index) fragment.append(doc.createElement("br"));
    fragment.append(doc.createTextNode(part));
  });
  return fragment;
}

function element(doc, name, children) {
  const node = doc.createElement(name);
  node.append(...children);
  return node;
}

function textElement(doc, name, text) {
  const node = doc.createElement(name);
  node.textContent = text;
  return node;
}
