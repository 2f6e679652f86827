#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1: start them when down, install them
# from Debian's packages when missing; install the tools the tests run (Prometheus and promtool; Chromium and
# its driver for the Flower browser test).
# Used by `make test`, `make chaos` and `make bench`.
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

rabbitmq_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1
}

ensure_rabbitmq() {
  # The tests that run on both brokers use vhosts of their own as guest/guest, which RabbitMQ allows on loopback.
  if rabbitmq_answers; then return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    echo "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  echo "starting RabbitMQ"
  if $SUDO rabbitmqctl -q ping >/dev/null 2>&1; then
    $SUDO rabbitmqctl -q start_app  # the node runs, its application was stopped (rabbitmqctl stop_app)
  else
    $SUDO rabbitmq-server -detached
  fi
  for _ in $(seq 1 60); do rabbitmq_answers && return; sleep 1; done
  echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1
}

ensure_chromium() {
  # Debian's own builds: tests/integration/test_flower_browser.py drives them, and nothing is downloaded at run time.
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
  echo "installing Chromium and chromedriver from Debian's packages"
  apt_install chromium chromium-driver
}

ensure_openssl() {
  # The TLS tests make their certificates with it.
  command -v openssl >/dev/null || apt_install openssl
}

ensure_prometheus() {
  # The alert rules' tests run promtool and a real Prometheus server (tests/integration/test_alerts.py). The
  # package's own service is never started: the tests run the binary on a port and a data folder of their own.
  if command -v promtool >/dev/null && [ -x /usr/bin/prometheus ]; then return; fi
  echo "installing Prometheus (and promtool) from Debian's packages"
  apt_install prometheus
}

ensure_iproute2() {
  # The two-host chaos scenario builds its hosts with `ip netns` (it skips, saying why, without root).
  if command -v ip >/dev/null 2>&1; then return; fi
  echo "installing iproute2 from Debian's packages"
  apt_install iproute2
}

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_openssl
ensure_prometheus
ensure_chromium
ensure_iproute2
echo "PostgreSQL, Redis and RabbitMQ are up"
