// The service's admin API for the Node tests (scripts/test-clients.sh exports FLAGS_URL and
// FLAGS_ADMIN_TOKEN). A missing variable is an error, never a skip.
import { randomBytes } from 'node:crypto';

export function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests with scripts/test-clients.sh`);
  return value;
}

export const FLAGS_URL = required('FLAGS_URL').replace(/\/$/, '');
const ADMIN_TOKEN = required('FLAGS_ADMIN_TOKEN');

/** A suffix that makes this run's flag keys and environments its own. */
export const runId = randomBytes(3).toString('hex');

// The unwrapped fetch, so that the admin calls are not among the requests a test records.
const plainFetch = globalThis.fetch.bind(globalThis);

async function call(method, path, environment, body, expected) {
  const url = `${FLAGS_URL}${path}?environment=${encodeURIComponent(environment)}`;
  const response = await plainFetch(url, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!expected.includes(response.status)) {
    throw new Error(`${method} ${path}?environment=${environment}: ${response.status} ${text}`);
  }
}

export const admin = {
  created: [],
  async createFlag(environment, flagKey, { enabled, rollout }) {
    await call('POST', '/admin/flags', environment,
      { flagKey, enabled, rolloutPercentage: rollout, description: 'tests/openfeature' }, [201]);
    this.created.push([environment, flagKey]);
  },
  async updateFlag(environment, flagKey, fields) {
    await call('POST', `/admin/flags/${flagKey}`, environment, fields, [200]);
  },
  async override(environment, flagKey, userId, overrideType) {
    await call('POST', `/admin/flags/${flagKey}/users`, environment,
      { userId, overrideType, reason: 'tests/openfeature' }, [200, 201]);
  },
  async deleteCreated() {
    for (const [environment, flagKey] of this.created.reverse()) {
      await call('DELETE', `/admin/flags/${flagKey}`, environment, undefined, [204, 404]);
    }
    this.created = [];
  },
};
