// @openfeature/server-sdk with @openfeature/ofrep-provider (one OFREP request per evaluation)
// against the running service. The provider set-up is the one docs/openfeature.md shows.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { OpenFeature, ErrorCode, StandardResolutionReasons } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import { FLAGS_URL, admin, required, runId } from './admin.mjs';

const environment = `of-node-${runId}`;
const key = (name) => `of-node-${name}-${runId}`;
let client;

before(async () => {
  await admin.createFlag(environment, key('full'), { enabled: true, rollout: 100 });
  await admin.createFlag(environment, key('partial'), { enabled: true, rollout: 50 });
  await admin.createFlag(environment, key('disabled'), { enabled: false, rollout: 100 });
  await admin.override(environment, key('partial'), 'node-included', 'include');

  await OpenFeature.setProviderAndWait(
    new OFREPProvider({
      baseUrl: FLAGS_URL, // http://127.0.0.1:3000 under `make run`
      headers: [['X-Environment', environment]],
    }),
  );
  client = OpenFeature.getClient();
});

after(async () => {
  await OpenFeature.close();
  await admin.deleteCreated();
});

test('a 100 % flag is on for everyone: STATIC', async () => {
  const details = await client.getBooleanDetails(key('full'), false, { targetingKey: 'user-123' });
  assert.equal(details.value, true);
  assert.equal(details.variant, 'on');
  assert.equal(details.reason, StandardResolutionReasons.STATIC);
  assert.equal(details.errorCode, undefined);
  assert.equal(details.flagMetadata.environment, environment);
});

test('an include override turns a partial rollout on: TARGETING_MATCH', async () => {
  const details = await client.getBooleanDetails(key('partial'), false, { targetingKey: 'node-included' });
  assert.equal(details.value, true);
  assert.equal(details.variant, 'on');
  assert.equal(details.reason, StandardResolutionReasons.TARGETING_MATCH);
});

test("a user's bucket decides a partial rollout: SPLIT, as GET /config/flags answers", async () => {
  const tokens = JSON.parse(required('FLAGS_USER_TOKENS'));
  for (const [user, token] of Object.entries(tokens)) {
    const response = await fetch(`${FLAGS_URL}/config/flags?environment=${environment}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(response.status, 200);
    const expected = (await response.json())[key('partial')];
    const details = await client.getBooleanDetails(key('partial'), !expected, { targetingKey: user });
    assert.equal(details.value, expected, user);
    assert.equal(details.variant, expected ? 'on' : 'off');
    assert.equal(details.reason, StandardResolutionReasons.SPLIT);
  }
});

test('an anonymous caller at a partial rollout: off, DEFAULT', async () => {
  const details = await client.getBooleanDetails(key('partial'), true);
  assert.equal(details.value, false);
  assert.equal(details.variant, 'off');
  assert.equal(details.reason, StandardResolutionReasons.DEFAULT);
});

test('a disabled flag: off, DISABLED', async () => {
  const details = await client.getBooleanDetails(key('disabled'), true, { targetingKey: 'node-included' });
  assert.equal(details.value, false);
  assert.equal(details.variant, 'off');
  assert.equal(details.reason, StandardResolutionReasons.DISABLED);
});

test("a missing flag: the caller's default, FLAG_NOT_FOUND", async () => {
  for (const fallback of [true, false]) {
    const details = await client.getBooleanDetails(key('missing'), fallback, { targetingKey: 'user-123' });
    assert.equal(details.value, fallback);
    assert.equal(details.errorCode, ErrorCode.FLAG_NOT_FOUND);
    assert.equal(details.reason, StandardResolutionReasons.ERROR);
  }
});
