// End-to-end test of the gateway's web page (GET /) in headless Chromium.
//
//   node tests/browser/e2e.mjs GATEWAY_URL ARTIFACTS_DIR
//
// tests/browser.rs starts the gateway and the ComfyUI simulator and runs this script; it can also
// be pointed by hand at `make demo`. With E2E_API_KEY set, the gateway is expected to require that
// key (API_KEYS) and the script checks the key flow instead of the full tour; with
// E2E_FIRST_JOB_FAILS=1 as well, ComfyUI is expected to fail that run's first job (the Rust test
// arranges it) and the page must show the terminal error event. It prints one line per check,
// saves screenshots in ARTIFACTS_DIR, and exits non-zero on the first failure.
//
// Chromium is Debian's /usr/bin/chromium (or CHROMIUM_PATH): playwright-core never downloads one.

import { chromium } from 'playwright-core';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node e2e.mjs GATEWAY_URL ARTIFACTS_DIR');
  process.exit(2);
}
const API_KEY = process.env.E2E_API_KEY || '';
const FIRST_JOB_FAILS = process.env.E2E_FIRST_JOB_FAILS === '1';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const DEADLINE_MS = 90_000;
const MAX_U64 = '18446744073709551615';

let passed = 0;
function check(condition, what, detail) {
  if (!condition) throw new Error(what + (detail === undefined ? '' : ': ' + detail));
  passed += 1;
  console.log('ok - ' + what);
}

const deadline = setTimeout(() => {
  console.error(`not ok - the whole run took longer than ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS);

const text = (page, selector) => page.locator(selector).textContent();

/** Presses Generate and waits until the page follows the new job; returns its id. */
async function submit(page) {
  const before = await text(page, '#job-id');
  await page.click('#generate');
  await page.waitForFunction((old) => {
    const id = document.querySelector('#job-id').textContent;
    return id !== old && /^[0-9a-f-]{36}$/.test(id);
  }, before, { timeout: 15_000 });
  return text(page, '#job-id');
}

/** Waits for the job shown on the page to end; returns its final state. */
async function waitForEnd(page) {
  await page.waitForFunction(
    () => ['completed', 'failed', 'cancelled'].includes(document.querySelector('#state').textContent),
    null, { timeout: 30_000 });
  return text(page, '#state');
}

/** What the page shows about its job, for failure messages. */
async function shown(page) {
  const error = await page.isVisible('#error') ? ' error: ' + (await text(page, '#error')).replace(/\s+/g, ' ') : '';
  return `state ${await text(page, '#state')}, job ${await text(page, '#job-id')}${error}`;
}

/** Records every change of the progress card (state, percent, node) in window.__seen. */
async function recordProgress(page) {
  await page.evaluate(() => {
    window.__seen = [];
    const record = () => window.__seen.push({
      state: document.querySelector('#state').textContent,
      percent: Number(document.querySelector('#progress').getAttribute('aria-valuenow')),
      node: document.querySelector('#node').textContent,
    });
    new MutationObserver(record).observe(document.querySelector('#job'),
      { subtree: true, attributes: true, childList: true, characterData: true });
  });
}

async function imagesLoaded(page) {
  await page.waitForSelector('#result:not([hidden]) img[data-testid=result-image]');
  await page.waitForFunction(() => [...document.querySelectorAll('img[data-testid=result-image]')]
    .every((img) => img.complete && img.naturalWidth > 0), null, { timeout: 10_000 });
  return page.$$eval('img[data-testid=result-image]',
    (imgs) => imgs.map((img) => ({ src: img.src, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight })));
}

/** GET on the gateway from Node, as raw text (seeds must be compared as text, not as floats). */
async function gatewayText(urlPath) {
  const headers = API_KEY ? { Authorization: 'Bearer ' + API_KEY } : {};
  const response = await fetch(new URL(urlPath, base), { headers });
  return { status: response.status, body: await response.text() };
}

async function fillTxt2img(page, { prompt, steps, seed, size = '512' }) {
  await page.selectOption('#workflow', 'txt2img');
  await page.fill('#param-prompt', prompt);
  await page.fill('#param-steps', String(steps));
  await page.fill('#param-width', size);
  await page.fill('#param-height', size);
  await page.fill('#param-seed', seed === undefined ? '' : String(seed));
}

// ---- The pieces of the page's script that can be checked on their own. ----

async function checkParsers(page) {
  const sse = await page.evaluate(() => {
    const stream = 'retry: 1500\r\n\r\n: a comment\r\nid: 1\r\nevent: queued\r\ndata: {"a":1}\r\n\r\n'
      + 'id: 2\nevent: progress\ndata: line one\ndata:line two\n\n'
      + 'id: 3\revent: complete\rdata: {"seed":18446744073709551615}\r\r'
      + 'id: 4\nevent: progress\ndata: cut off';
    const run = (chunks) => {
      const events = [];
      let retry = null;
      const parser = new SseParser((e) => events.push(e), (ms) => { retry = ms; });
      for (const chunk of chunks) parser.push(chunk);
      return JSON.stringify({ events, retry, last: parser.lastEventId });
    };
    const whole = run([stream]);
    // Every way of cutting the stream in two, and one character at a time, gives the same events.
    const splits = [];
    for (let i = 1; i < stream.length; i++) splits.push(run([stream.slice(0, i), stream.slice(i)]));
    splits.push(run([...stream]));
    return { whole: JSON.parse(whole), same: splits.every((s) => s === whole) };
  });
  check(sse.whole.events.length === 3, 'SSE parser: three complete events, the cut-off fourth is dropped',
    JSON.stringify(sse.whole.events));
  check(sse.whole.events[1].event === 'progress' && sse.whole.events[1].data === 'line one\nline two',
    'SSE parser: event names and multi-line data', JSON.stringify(sse.whole.events[1]));
  check(sse.whole.retry === 1500 && sse.whole.last === '4', 'SSE parser: retry: and id: fields',
    JSON.stringify(sse.whole));
  check(sse.same, 'SSE parser: same events however the stream is chunked (CR, LF and CRLF lines)');

  const json = await page.evaluate((max) => {
    const parsed = parseJson(`{"seed": ${max}, "text": "id: 12345678901234567890, \\"q\\" 9", "f": -1.5e3, "n": [7, -9007199254740993]}`);
    return { seed: parsed.seed, text: parsed.text, f: parsed.f, n: parsed.n };
  }, MAX_U64);
  check(json.seed === MAX_U64 && json.n[1] === '-9007199254740993' && json.n[0] === 7 && json.f === -1500
    && json.text === 'id: 12345678901234567890, "q" 9',
  'JSON reader keeps 64-bit integers exact and leaves strings alone', JSON.stringify(json));
}

/** Outputs of every kind and live previews, shown from synthetic events (the simulator makes PNGs only). */
async function checkOutputsAndPreviews(page) {
  const shownOutputs = await page.evaluate(() => {
    showResult({
      images: [
        { url: '/images/j/0.png', kind: 'image', content_type: 'image/png', width: 64, height: 48, bytes: 2048 },
        { url: '/images/j/1.mp4', kind: 'video', content_type: 'video/mp4', width: 832, height: 480, bytes: 3145728 },
        { url: '/images/j/2.flac', kind: 'audio', content_type: 'audio/flac', width: null, height: null, bytes: 4096 },
        { url: '/images/j/3.glb', kind: 'model', content_type: 'model/gltf-binary', width: null, height: null, bytes: 1024 },
      ],
      warnings: [{ code: 'output_dropped', node: '12', message: 'output node 12 (SaveAudio) will not run: node 10 (KSampler): Value not in list' }],
      params: {},
    });
    const figures = [...document.querySelectorAll('#images figure')].map((f) => ({
      kind: f.dataset.kind,
      media: f.firstElementChild.tagName,
      controls: f.firstElementChild.hasAttribute('controls'),
      caption: f.querySelector('figcaption').textContent,
    }));
    const warnings = document.querySelector('#warnings');
    const result = { figures, warnings: warnings.hidden ? '' : warnings.textContent };
    resetJobView();
    return result;
  });
  const [image, video, audio, model] = shownOutputs.figures;
  check(image.media === 'IMG' && video.media === 'VIDEO' && video.controls && audio.media === 'AUDIO'
    && audio.controls && model.media === 'FIGCAPTION' && model.caption.includes('model/gltf-binary · 1 KB · download'),
  'the result shows images, <video> and <audio> with controls, and other files as a link', JSON.stringify(shownOutputs.figures));
  check(video.caption.startsWith('832×480 · video/mp4 · 3.0 MB') && !audio.caption.includes('×'),
    'captions give sizes only where known', JSON.stringify(shownOutputs.figures));
  check(shownOutputs.warnings.includes('output node 12 (SaveAudio) will not run'),
    'warnings (outputs a partial graph dropped) are shown with the result', shownOutputs.warnings);

  const preview = await page.evaluate(() => {
    const png = 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';
    const running = { done: false };
    const img = document.querySelector('#live-preview');
    showPreview(running, { job_id: 'j', node: '3', content_type: 'image/png', image: png });
    const whileRunning = { hidden: img.hidden, src: img.getAttribute('src'), alt: img.alt };
    showPreview(running, { image: 'javascript:alert(1)' });
    const afterBad = img.getAttribute('src');
    showPreview({ done: true }, { image: png.replace('iVBOR', 'iVBOX') });
    const afterDone = img.getAttribute('src');
    hidePreview();
    document.querySelector('#previews').checked = true;
    const body = requestBody(selectedWorkflow()).text;
    document.querySelector('#previews').checked = false;
    const without = requestBody(selectedWorkflow()).text;
    return { whileRunning, afterBad, afterDone, png, hiddenAfter: img.hidden, body, without };
  });
  check(!preview.whileRunning.hidden && preview.whileRunning.src === preview.png
    && preview.whileRunning.alt === 'Live preview from node 3',
  'a preview event shows its picture while the job runs', JSON.stringify(preview.whileRunning));
  check(preview.afterBad === preview.png && preview.afterDone === preview.png && preview.hiddenAfter,
    'only data:image URLs are shown, none after the job ended, and the preview hides at the end');
  check(preview.body.includes('"previews":true') && !preview.without.includes('previews'),
    'the live-previews checkbox asks for "previews": true', preview.body);
}

// ---- The tour without an API key. ----

async function tour(browser) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  const response = await page.goto(base + '/');
  check(response.status() === 200 && response.headers()['content-type'] === 'text/html; charset=utf-8',
    'GET / serves the page as text/html');
  await page.waitForSelector('#param-prompt');
  const names = await page.$$eval('#workflow option', (options) => options.map((o) => o.value));
  check(['img2img', 'invert', 'txt2img'].every((n) => names.includes(n)), 'the workflow list comes from GET /workflows', names.join(', '));
  check(await page.inputValue('#workflow') === 'txt2img', 'the default workflow is preselected');
  check(await page.$eval('#param-prompt', (el) => el.tagName) === 'TEXTAREA'
    && await page.$eval('#param-sampler', (el) => el.tagName) === 'SELECT'
    && await page.$eval('#param-steps', (el) => [el.type, el.min, el.max].join()) === 'number,1,150'
    && await page.$eval('#param-width', (el) => el.step) === '8'
    && await page.$eval('#param-seed', (el) => el.placeholder) === 'random',
  'the form follows the schema (textarea, select, number with min/max/step, random seed)');
  await page.selectOption('#workflow', 'img2img');
  check(await page.$eval('#param-image', (el) => el.type) === 'file', 'an image parameter is a file input');
  await page.selectOption('#workflow', 'txt2img');

  await checkParsers(page);
  await checkOutputsAndPreviews(page);

  // Bad input: the gateway's invalid_params details are shown per field.
  await fillTxt2img(page, { prompt: '', steps: 500 });
  await page.click('#generate');
  await page.waitForSelector('#error:not([hidden])');
  check(await text(page, '#error-title') === 'Some parameters are not right'
    && await page.getAttribute('#param-steps', 'aria-invalid') === 'true'
    && (await text(page, '[data-param=steps] .field-error')).includes('at most 150')
    && (await text(page, '#error-list')).includes('prompt: required'),
  'invalid_params: each bad field is named beside its input');

  // Installed models: the checkpoint is a drop-down of what ComfyUI has (its /object_info); a
  // value that is not installed (forced into the list here) is refused beside the field.
  const checkpoints = await page.$$eval('#param-checkpoint option', (options) => options.map((o) => o.textContent));
  check(await page.$eval('#param-checkpoint', (el) => el.tagName) === 'SELECT'
    && checkpoints.join(',') === 'v1-5-pruned-emaonly.safetensors,sd_xl_base_1.0.safetensors',
  'the checkpoint is a drop-down of the installed checkpoints', checkpoints.join(','));
  await fillTxt2img(page, { prompt: 'a fox', steps: 3 });
  await page.$eval('#param-checkpoint', (select) => {
    const option = document.createElement('option');
    option.value = JSON.stringify('missing.safetensors');
    option.textContent = 'missing.safetensors';
    select.append(option);
    select.value = option.value;
  });
  await page.click('#generate');
  await page.waitForSelector('[data-param=checkpoint] .field-error');
  check((await text(page, '[data-param=checkpoint] .field-error')).includes('installed: v1-5-pruned-emaonly.safetensors'),
    'a checkpoint that is not installed is refused, naming the installed ones',
    await text(page, '[data-param=checkpoint] .field-error'));
  await page.selectOption('#param-checkpoint', JSON.stringify('v1-5-pruned-emaonly.safetensors'));

  // A whole job: progress moves, the image loads, the resolved seed is exact.
  await fillTxt2img(page, { prompt: 'a red fox in the snow', steps: 10, seed: MAX_U64 });
  await recordProgress(page);
  const jobId = await submit(page);
  check(await waitForEnd(page) === 'completed', 'the job completes', await shown(page));
  const seen = await page.evaluate(() => window.__seen);
  const running = seen.filter((s) => s.state === 'running').map((s) => s.percent);
  check(running.some((p, i) => i > 0 && p > running[i - 1]),
    'the progress bar moves while the job runs', JSON.stringify([...new Set(running)]));
  check(seen.some((s) => /KSampler \(node 3\) · step \d+ of 10/.test(s.node)),
    'the current node and step are shown', [...new Set(seen.map((s) => s.node))].join(' | '));
  check(await page.getAttribute('#progress', 'aria-valuenow') === '100', 'the bar ends full');
  check(/^\d+\.\d s$/.test(await text(page, '#elapsed')), 'the elapsed time is shown', await text(page, '#elapsed'));
  const images = await imagesLoaded(page);
  check(images.length === 1 && images[0].naturalWidth === 512 && images[0].naturalHeight === 512,
    'the stored image loads in the page (naturalWidth > 0)', JSON.stringify(images));
  check(await text(page, '#seed') === MAX_U64 && await text(page, '#params-used [data-param=seed]') === MAX_U64,
    'the resolved seed is shown exactly (2^64-1, no float rounding)');
  const stored = await gatewayText('/jobs/' + jobId);
  check(stored.body.includes(`"seed":${MAX_U64}`), 'GET /jobs/{id} agrees on the seed');
  check(pageErrors.length === 0, 'no script errors', pageErrors.join('; '));
  await page.screenshot({ path: path.join(artifacts, 'page.png'), fullPage: true, animations: 'disabled' });
  console.log('   screenshot: ' + path.join(artifacts, 'page.png'));

  // "Use this seed" puts it back in the form.
  await page.click('#reuse-seed');
  check(await page.inputValue('#param-seed') === MAX_U64, '"Use this seed" fills the seed field');

  await reconnects(page);
  await cancels(page);
  await savedWorkflowFile(page);

  // A narrow screen: one column, nothing wider than the viewport.
  await page.setViewportSize({ width: 380, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, 'on a narrow screen nothing overflows sideways', `${overflow}px too wide`);
  await page.screenshot({ path: path.join(artifacts, 'page-narrow.png'), fullPage: true, animations: 'disabled' });
  check(pageErrors.length === 0, 'still no script errors', pageErrors.join('; '));
  await page.close();
}

/** Cuts the first event stream after three events: the page must resume with Last-Event-ID. */
async function reconnects(page) {
  await page.evaluate(() => {
    const realFetch = window.fetch;
    window.__streams = [];
    window.__notices = [];
    new MutationObserver(() => window.__notices.push(document.querySelector('#connection').textContent))
      .observe(document.querySelector('#connection'), { childList: true, characterData: true, subtree: true });
    window.fetch = async (input, init) => {
      if (!String(input).endsWith('/events')) return realFetch(input, init);
      const record = { lastEventId: (init.headers && init.headers['Last-Event-ID']) || null, ids: [], kinds: [] };
      const cut = window.__streams.length === 0;
      window.__streams.push(record);
      const response = await realFetch(input, init);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const encoder = new TextEncoder();
      const body = new ReadableStream({
        async pull(controller) {
          const { value, done } = await reader.read();
          if (done) return controller.close();
          // A shorter retry: keeps the test quick, and shows the page honours `retry:`.
          const chunk = decoder.decode(value, { stream: true }).replace(/^retry: \d+$/m, 'retry: 300');
          for (const m of chunk.matchAll(/^id: (\d+)\r?\nevent: (\w+)$/gm)) {
            record.ids.push(Number(m[1]));
            record.kinds.push(m[2]);
          }
          controller.enqueue(encoder.encode(chunk));
          if (cut && record.ids.length >= 3) {
            reader.cancel().catch(() => {});
            controller.close();
          }
        },
      });
      return new Response(body, { status: response.status, headers: response.headers });
    };
  });
  await fillTxt2img(page, { prompt: 'a fox, reconnecting', steps: 8, seed: 7 });
  await submit(page);
  check(await waitForEnd(page) === 'completed', 'a job whose stream drops still completes', await shown(page));
  const streams = await page.evaluate(() => window.__streams);
  const notices = await page.evaluate(() => window.__notices);
  // A job's log keeps only its newest progress tick, so the replay may skip the ids of ticks
  // it replaced; it then starts with that newest tick (kept events are replayed in id order).
  const [first, second] = streams;
  const last = first && first.ids.at(-1);
  check(streams.length === 2 && first.lastEventId === null
    && second.lastEventId === String(last)
    && second.ids[0] > last
    && (second.ids[0] === last + 1 || second.kinds[0] === 'progress')
    && second.ids.every((id, i) => i === 0 || id > second.ids[i - 1]),
  'after a drop the page reconnects with Last-Event-ID and resumes after it: no repeat, nothing but replaced ticks skipped',
  JSON.stringify(streams));
  check(notices.some((n) => n.includes('reconnecting in 0.3 s')), 'the drop is shown, with the server\'s retry: delay',
    JSON.stringify(notices));
  check(await page.isHidden('#connection'), 'the notice goes away once events flow again');
  await imagesLoaded(page);
  await page.reload();
  await page.waitForSelector('#param-prompt');
}

// ---- A saved workflow file (the UI format), run as a raw graph. ----

/** A workflow as ComfyUI saves it, on the simulator's nodes: a solid image, a reroute, inverted. */
function savedWorkflow(width, height, extraNodes = []) {
  const node = (id, type, inputs, outputs, widgets) => ({ id, type, pos: [0, 0], size: [200, 100], flags: {},
    order: id, mode: 0, inputs, outputs, properties: {}, widgets_values: widgets });
  return {
    last_node_id: 9, last_link_id: 3, version: 0.4, groups: [], config: {}, extra: {},
    nodes: [
      node(1, 'EmptyImage', [], [{ name: 'IMAGE', type: 'IMAGE', links: [1] }], [width, height, 1, 255]),
      node(2, 'Reroute', [{ name: '', type: '*', link: 1 }], [{ name: '', type: 'IMAGE', links: [2] }]),
      node(3, 'ImageInvert', [{ name: 'image', type: 'IMAGE', link: 2 }], [{ name: 'IMAGE', type: 'IMAGE', links: [3] }]),
      node(4, 'SaveImage', [{ name: 'images', type: 'IMAGE', link: 3 }], [], ['from-a-file']),
      node(5, 'Note', [], [], ['notes are not sent']),
      ...extraNodes,
    ],
    links: [[1, 1, 0, 2, 0, 'IMAGE'], [2, 2, 0, 3, 0, 'IMAGE'], [3, 3, 0, 4, 0, 'IMAGE']],
  };
}

/** A 1×1 PNG carrying `workflow` in a tEXt chunk, as ComfyUI writes its outputs. */
function pngWithWorkflow(workflow) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
  const idat = Buffer.from([0x78, 0x01, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01]);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('tEXt', Buffer.from('workflow\0' + JSON.stringify(workflow), 'latin1')), chunk('IDAT', idat),
    chunk('IEND', Buffer.alloc(0))]);
}

/** A WebP whose EXIF carries `workflow:JSON`, as ComfyUI's WebP savers write it. */
function webpWithWorkflow(workflow) {
  const exif = Buffer.concat([Buffer.from('MM\0*\0\0\0\x08', 'latin1'),
    Buffer.from('workflow:' + JSON.stringify(workflow) + '\0', 'latin1')]);
  const chunk = Buffer.alloc(8);
  chunk.write('EXIF', 0, 'latin1');
  chunk.writeUInt32LE(exif.length, 4);
  const body = Buffer.concat([Buffer.from('WEBP', 'latin1'), chunk, exif, Buffer.alloc(exif.length % 2)]);
  const head = Buffer.alloc(8);
  head.write('RIFF', 0, 'latin1');
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}

async function savedWorkflowFile(page) {
  await page.selectOption('#workflow', ':file');
  check(await page.$eval('#workflow-file', (el) => el.type) === 'file' && await page.$$eval('#params input', (l) => l.length) === 1,
    'a saved workflow file is picked with a file input, and has no parameters');
  await page.setInputFiles('#workflow-file', { name: 'inverted.json', mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify(savedWorkflow(48, 40))) });
  await page.waitForFunction(() => savedFile !== null);
  await submit(page);
  check(await waitForEnd(page) === 'completed', 'a workflow file as ComfyUI saves it runs', await shown(page));
  const images = await imagesLoaded(page);
  check(images.length === 1 && images[0].naturalWidth === 48 && images[0].naturalHeight === 40,
    'its image is the one the file describes', JSON.stringify(images));

  await page.setInputFiles('#workflow-file', { name: 'ComfyUI_00001_.png', mimeType: 'image/png',
    buffer: pngWithWorkflow(savedWorkflow(24, 16)) });
  await page.waitForFunction(() => savedFile && savedFile.name.endsWith('.png'));
  await submit(page);
  check(await waitForEnd(page) === 'completed', 'a PNG from ComfyUI runs the workflow it carries', await shown(page));
  const fromPng = await imagesLoaded(page);
  check(fromPng.length === 1 && fromPng[0].naturalWidth === 24, 'the PNG\'s workflow made the image', JSON.stringify(fromPng));

  // A big workflow (300 kB) is read too: the page once spread every byte into one call.
  const big = { ...savedWorkflow(24, 16), extra: { note: 'x'.repeat(300000) } };
  await page.setInputFiles('#workflow-file', { name: 'big.png', mimeType: 'image/png', buffer: pngWithWorkflow(big) });
  await page.waitForFunction(() => savedFile && savedFile.name === 'big.png');
  check(await page.evaluate(() => JSON.parse(savedFile.text).extra.note.length) === 300000,
    'a PNG carrying a 300 kB workflow is read whole');

  await page.setInputFiles('#workflow-file', { name: 'ComfyUI_00002_.webp', mimeType: 'image/webp',
    buffer: webpWithWorkflow(savedWorkflow(20, 12)) });
  await page.waitForFunction(() => savedFile && savedFile.name.endsWith('.webp'));
  await submit(page);
  check(await waitForEnd(page) === 'completed', 'a WebP from ComfyUI runs the workflow it carries', await shown(page));
  const fromWebp = await imagesLoaded(page);
  check(fromWebp.length === 1 && fromWebp[0].naturalWidth === 20, 'the WebP\'s workflow made the image', JSON.stringify(fromWebp));

  const broken = savedWorkflow(8, 8, [{ id: 9, type: 'NotInstalledNode', mode: 0, title: 'Magic', inputs: [], outputs: [] }]);
  await page.setInputFiles('#workflow-file', { name: 'broken.json', mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify(broken)) });
  await page.waitForFunction(() => savedFile && savedFile.name === 'broken.json');
  await page.click('#generate');
  await page.waitForSelector('#error:not([hidden])');
  check(await text(page, '#error-title') === 'The workflow cannot be converted'
    && (await text(page, '#error-list')).includes('node 9 (NotInstalledNode, "Magic"): node type "NotInstalledNode" is not installed'),
  'a workflow that cannot be converted names each node and what to install', await text(page, '#error'));
  await page.selectOption('#workflow', 'txt2img');
}

async function cancels(page) {
  await fillTxt2img(page, { prompt: 'a very slow fox', steps: 80 });
  const jobId = await submit(page);
  await page.waitForFunction(() => document.querySelector('#state').textContent === 'running'
    && Number(document.querySelector('#progress').getAttribute('aria-valuenow')) > 0);
  check(await page.isEnabled('#cancel'), 'Cancel is offered while the job runs');
  await page.click('#cancel');
  check(await waitForEnd(page) === 'cancelled', 'Cancel ends the job as "cancelled"', await shown(page));
  const percent = Number(await page.getAttribute('#progress', 'aria-valuenow'));
  check(percent < 100 && await page.isDisabled('#cancel') && await page.isEnabled('#generate'),
    'after cancelling the bar stops short and a new job can start', String(percent));
  const stored = await gatewayText('/jobs/' + jobId);
  check(JSON.parse(stored.body).state === 'cancelled', 'GET /jobs/{id} says cancelled too');
  await page.screenshot({ path: path.join(artifacts, 'page-cancelled.png'), fullPage: true, animations: 'disabled' });
}

// ---- With API_KEYS set. ----

async function withKey(browser) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const requests = [];
  page.on('request', (r) => requests.push({ url: r.url(), auth: r.headers().authorization || null }));

  const response = await page.goto(base + '/');
  check(response.status() === 200, 'the page itself loads without a key');
  await page.waitForSelector('#auth:not([hidden])');
  check(await page.isVisible('#api-key') && await text(page, '#gateway-status') === 'Not connected',
    'a 401 from GET /workflows asks for the API key');

  await page.fill('#api-key', 'not-the-key');
  await page.click('#api-key-submit');
  await page.waitForFunction(() => document.querySelector('#auth-error').textContent.includes('not valid'));
  check(true, 'a wrong key is refused with a readable message');

  await page.fill('#api-key', API_KEY);
  const from = requests.length;
  await page.click('#api-key-submit');
  await page.waitForSelector('#param-prompt');
  check(await text(page, '#auth-error') === '', 'the right key loads the workflows');

  if (FIRST_JOB_FAILS) {
    await fillTxt2img(page, { prompt: 'a fox that breaks ComfyUI', steps: 4, size: '256' });
    await submit(page);
    check(await waitForEnd(page) === 'failed' && await text(page, '#error-title') === 'ComfyUI failed to run it'
      && (await text(page, '#error-message')).includes('KSampler'),
    'a terminal error event is shown as a readable message', await shown(page));
    check(await page.isEnabled('#generate') && await page.isDisabled('#cancel'), 'after a failure a new job can start');
  }
  await fillTxt2img(page, { prompt: 'a fox behind a key', steps: 4, size: '256' });
  await submit(page);
  check(await waitForEnd(page) === 'completed', 'a job runs with the key', await shown(page));
  const images = await imagesLoaded(page);
  check(images.length === 1 && images[0].naturalWidth === 256 && images[0].src.startsWith('blob:'),
    'the image (which needs the key too) is fetched with it and shown', JSON.stringify(images));

  const calls = requests.slice(from).filter((r) => r.url.startsWith(base));
  check(calls.length >= 4 && calls.every((r) => r.auth === 'Bearer ' + API_KEY),
    'every call to the gateway carries Authorization: Bearer KEY', JSON.stringify(calls.map((r) => [r.url, !!r.auth])));
  check(requests.every((r) => !r.url.includes(API_KEY)) && !page.url().includes(API_KEY),
    'the key never appears in a URL');
  const stored = await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie]);
  check(stored[0] === 0 && stored[1] === 0 && stored[2] === '', 'the key is not stored (no storage, no cookie)');
  check(pageErrors.length === 0, 'no script errors', pageErrors.join('; '));
  await page.screenshot({ path: path.join(artifacts, 'page-api-key.png'), fullPage: true, animations: 'disabled' });
  await page.close();
}

// ---- Main. ----

await mkdir(artifacts, { recursive: true });
const started = Date.now();
let browser;
let failed = false;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // playwright gives the browser a fresh, empty --user-data-dir of its own.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  console.log(`# ${CHROMIUM} ${browser.version()} against ${base}${API_KEY ? ' (with an API key)' : ''}`);
  if (API_KEY) await withKey(browser);
  else await tour(browser);
} catch (error) {
  failed = true;
  console.log('not ok - ' + (error && error.message ? error.message : error));
  if (browser) {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages.length) {
      const shot = path.join(artifacts, API_KEY ? 'failure-api-key.png' : 'failure.png');
      await pages[0].screenshot({ path: shot, fullPage: true, animations: 'disabled' }).catch(() => {});
      console.log('   screenshot of the failure: ' + shot);
    }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(deadline);
}
console.log(`${passed} passed, ${failed ? 1 : 0} failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
process.exit(failed ? 1 : 0);
