#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1: start them when down, install them
# from Debian's packages when missing. Used by `make test`, `make chaos` and `make bench`.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "installing PostgreSQL from Debian's packages"
    apt_install postgresql postgresql-client
    trust_local_connections
  fi
  echo "starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 1; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1
}

trust_local_connections() {
  # A fresh Debian cluster asks for passwords on TCP; the test machine's contract is trust on loopback.
  local hba
  hba="$(ls /etc/postgresql/*/main/pg_hba.conf | tail -n 1)"
  $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  if ! command -v redis-server >/dev/null; then
    echo "installing Redis from Debian's packages"
    apt_install redis-server redis-tools
  fi
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 0.5; done
  echo "Redis did not come up on 127.0.0.1:6379" >&2; exit 1
}

ensure_iproute2() {
  # The two-host chaos scenario builds its hosts with `ip netns` (it skips, saying why, without root).
  if command -v ip >/dev/null 2>&1; then return; fi
  echo "installing iproute2 from Debian's packages"
  apt_install iproute2
}

ensure_postgres
ensure_redis
ensure_iproute2
echo "PostgreSQL and Redis are up"
