// @openfeature/web-sdk with @openfeature/ofrep-web-provider against the running service: the
// provider fetches every flag in one bulk request (POST /ofrep/v1/evaluate/flags), evaluates
// from that answer, and re-fetches every `pollInterval` ms with If-None-Match: the service
// answers 304 while nothing changed and 200 with the new values after a write.
//
// Node 20 has what the provider needs except browser storage: `fetch`, `Request`, `Headers` and
// `crypto.subtle` are built in; it checks for `document` and `EventSource` before using them
// (and the service announces no event stream), and `localStorage`, which Node 20 lacks, is only
// used by its persistent cache, turned off here with `cacheMode: 'disabled'` (in a browser the
// default, 'local-cache-first', keeps the last answer across page loads). No browser global is
// faked.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { OpenFeature, ProviderEvents, StandardResolutionReasons } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';
import { FLAGS_URL, admin, runId } from './admin.mjs';

const environment = `of-web-${runId}`;
const key = (name) => `of-web-${name}-${runId}`;
const POLL_MS = 200;

// Every bulk request the provider makes: its If-None-Match header and the service's status. The
// wrapper records and passes everything through; it must be installed before the provider is
// created (the provider binds globalThis.fetch then).
const bulkRequests = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const request = new Request(input, init);
  const response = await realFetch(request);
  if (request.url.startsWith(`${FLAGS_URL}/ofrep/v1/evaluate/flags`)) {
    bulkRequests.push({ ifNoneMatch: request.headers.get('if-none-match'), status: response.status, etag: response.headers.get('etag') });
  }
  return response;
};

let client;

async function waitFor(what, condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(bulkRequests)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

before(async () => {
  await admin.createFlag(environment, key('banner'), { enabled: true, rollout: 100 });
  await admin.createFlag(environment, key('beta'), { enabled: true, rollout: 50 });
  await admin.override(environment, key('beta'), 'web-user', 'include');
  await admin.createFlag(environment, key('legacy'), { enabled: false, rollout: 100 });

  await OpenFeature.setContext({ targetingKey: 'web-user' });
  await OpenFeature.setProviderAndWait(
    new OFREPWebProvider({
      baseUrl: FLAGS_URL, // http://127.0.0.1:3000 under `make run`
      headers: [['X-Environment', environment]],
      pollInterval: POLL_MS, // re-fetch (If-None-Match) every 200 ms; 0, the default, never polls
      cacheMode: 'disabled', // Node has no localStorage; leave the default in a browser
    }),
  );
  client = OpenFeature.getClient();
});

after(async () => {
  await OpenFeature.close();
  globalThis.fetch = realFetch;
  await admin.deleteCreated();
});

test('the first bulk fetch: 200, and every flag evaluates from it', () => {
  assert.equal(bulkRequests[0].status, 200);
  assert.equal(bulkRequests[0].ifNoneMatch, null);
  assert.match(bulkRequests[0].etag, /^"[0-9a-f]+"$/);

  const banner = client.getBooleanDetails(key('banner'), false);
  assert.deepEqual([banner.value, banner.variant, banner.reason], [true, 'on', StandardResolutionReasons.STATIC]);
  const beta = client.getBooleanDetails(key('beta'), false);
  assert.deepEqual([beta.value, beta.variant, beta.reason], [true, 'on', StandardResolutionReasons.TARGETING_MATCH]);
  const legacy = client.getBooleanDetails(key('legacy'), true);
  assert.deepEqual([legacy.value, legacy.variant, legacy.reason], [false, 'off', StandardResolutionReasons.DISABLED]);
  const missing = client.getBooleanDetails(key('missing'), true);
  assert.deepEqual([missing.value, missing.errorCode], [true, 'FLAG_NOT_FOUND']);
});

test('a re-fetch with nothing changed: If-None-Match sent, 304 answered', async () => {
  await waitFor('a polled 304', () => bulkRequests.length >= 2);
  const [first, second] = bulkRequests;
  assert.equal(second.ifNoneMatch, first.etag);
  assert.equal(second.status, 304);
  const banner = client.getBooleanDetails(key('banner'), false);
  assert.equal(banner.value, true);
});

test('after an admin change the re-fetch gets 200 and the new value', async () => {
  const changed = new Promise((resolve) => {
    client.addHandler(ProviderEvents.ConfigurationChanged, (details) => resolve(details));
  });
  const before = bulkRequests.length;
  await admin.updateFlag(environment, key('banner'), { enabled: false });
  const details = await changed;
  assert.deepEqual(details.flagsChanged, [key('banner')]);

  const refetch = bulkRequests.slice(before).find((request) => request.status === 200);
  assert.ok(refetch, JSON.stringify(bulkRequests.slice(before)));
  assert.notEqual(refetch.ifNoneMatch, null); // conditional, but the ETag changed with the write
  assert.notEqual(refetch.etag, refetch.ifNoneMatch);

  const banner = client.getBooleanDetails(key('banner'), true);
  assert.deepEqual([banner.value, banner.variant, banner.reason], [false, 'off', StandardResolutionReasons.DISABLED]);
});
