#!/usr/bin/env bash
# A shared MLflow tracking server on 127.0.0.1: a PostgreSQL backend store and an artifact root (docs/tracking.md).
#
#   bash scripts/mlflow_server.sh          start PostgreSQL (if not running) and run `mlflow server` in the foreground
#   bash scripts/mlflow_server.sh stop     stop the PostgreSQL it started
#
# Settings (environment):
#   DIMO_SERVER_DIR   state folder: PostgreSQL's data dir, logs, default artifacts (default: .cache/mlflow-server)
#   PORT              the MLflow server's port (default 5000); PG_PORT: PostgreSQL's (default: a free one)
#   ARTIFACTS         artifact root: a local folder (default $DIMO_SERVER_DIR/artifacts) or an object-store URL
#                     (s3://bucket/dimo, gs://..., wasbs://...: needs that store's client library and credentials)
#   BACKEND_STORE_URI an existing database (postgresql+psycopg://user:pw@host/db): no local PostgreSQL is started
#   WORKERS           server worker processes (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DIR=$(mkdir -p "${DIMO_SERVER_DIR:-.cache/mlflow-server}" && cd "${DIMO_SERVER_DIR:-.cache/mlflow-server}" && pwd)
PGDATA="$DIR/pgdata"
PGBIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)  # Debian's layout, the newest version
[ -x "$PGBIN/pg_ctl" ] || PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")

die() { echo "scripts/mlflow_server.sh: $*" >&2; exit 2; }

# PostgreSQL refuses to run as root: run its tools as the `postgres` user Debian's package creates.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_postgres() {
  [ -x "$PGBIN/pg_ctl" ] || die "no PostgreSQL found (expected /usr/lib/postgresql/<ver>/bin): run scripts/setup.sh"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$DIR"
    runuser -u postgres -- test -w "$DIR" || die "$DIR: not reachable by the postgres user (a parent folder is private); choose another DIMO_SERVER_DIR"
  fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    # trust on loopback only: the cluster listens on 127.0.0.1 and its socket sits in its own data dir
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U dimo --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
      || die "initdb failed: see $DIR/initdb.log"
  fi
  if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    local port=${PG_PORT:-$(cat "$DIR/pg_port" 2>/dev/null || free_port)}
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -w -t 60 -l "$DIR/postgres.log" \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$PGDATA" start >/dev/null \
      || die "PostgreSQL did not start on 127.0.0.1:$port: see $DIR/postgres.log"
    echo "$port" > "$DIR/pg_port"
  fi
  PG_PORT=$(cat "$DIR/pg_port")
  if [ -z "$(as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U dimo -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" ]; then
    as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U dimo mlflow
  fi
  BACKEND_STORE_URI="postgresql+psycopg://dimo@127.0.0.1:$PG_PORT/mlflow"
}

if [ "${1:-start}" = "stop" ]; then
  [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
  exit 0
fi

[ -n "${BACKEND_STORE_URI:-}" ] || start_postgres
ARTIFACTS=${ARTIFACTS:-$DIR/artifacts}
case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS"; ARTIFACTS=$(cd "$ARTIFACTS" && pwd) ;; esac
PORT=${PORT:-5000}
echo "MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT (backend ${BACKEND_STORE_URI%%@*}@..., artifacts $ARTIFACTS)"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # no job runner: ~10 fewer processes
# exec: the caller's PID is the server's, so stopping it by PID stops the server (PostgreSQL keeps running).
exec mlflow server --backend-store-uri "$BACKEND_STORE_URI" --artifacts-destination "$ARTIFACTS" \
  --host 127.0.0.1 --port "$PORT" --workers "${WORKERS:-1}"
