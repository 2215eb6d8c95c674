#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis servers the tests use are up, starting them when they are
# installed but stopped, installing them (Debian packages) when missing. Fails loudly otherwise:
# tests that need a real server are never skipped.
set -euo pipefail

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "ensure-services: installing $*" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "ensure-services: please install: $*" >&2
    exit 1
  fi
}

redis_up() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -d "$DATABASE_URL" 2>/dev/null; }

have redis-server && have redis-cli || apt_install redis-server redis-tools
if ! redis_up; then
  case "$REDIS_URL" in
    redis://127.0.0.1:6379*|redis://localhost:6379*)
      echo "ensure-services: starting redis-server on 127.0.0.1:6379" >&2
      mkdir -p /var/lib/redis /var/log/redis
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
      for _ in $(seq 50); do redis_up && break; sleep 0.1; done ;;
  esac
fi
redis_up || { echo "ensure-services: Redis is NOT reachable at $REDIS_URL" >&2; exit 1; }

have pg_isready && have psql || apt_install postgresql-client
if ! pg_up; then
  if have pg_ctlcluster && ls /etc/postgresql >/dev/null 2>&1; then
    echo "ensure-services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 100); do pg_up && break; sleep 0.1; done
  fi
fi
pg_up || { echo "ensure-services: PostgreSQL is NOT reachable at $DATABASE_URL" >&2; exit 1; }
echo "ensure-services: PostgreSQL and Redis are up" >&2
