#!/bin/bash
# The entrypoint of flespi/services:bookworm: runs one of the platform's servers from Debian's
# packages, configured by the environment, its data in /data (a volume). Started by tini as root;
# each server runs as its own system user.
#
#   flespi-services postgres    PostgreSQL 15; initdb on the first start; databases created
#   flespi-services redis       Redis, append-only file
#   flespi-services check <name>  exits 0 when that server answers (a container healthcheck)
#
# The variables of each are listed at its function. See docs/deployment.md.
set -euo pipefail

DATA=${DATA_DIR:-/data}

log() { echo "flespi-services $ROLE: $*" >&2; }
die() { log "$*"; exit 1; }

as_user() {  # run a command as a system user, keeping the environment; exec'd, so signals reach it
    local user=$1; shift
    exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
}

own() {  # the server's user owns its data directory
    mkdir -p "$2"
    chown -R "$1:$1" "$2"
    chmod 0700 "$2"
}

# --- PostgreSQL -----------------------------------------------------------------------------
# PG_PORT (5432), PG_LISTEN (127.0.0.1; a comma-separated list, '*' for every address),
# POSTGRES_PASSWORD (required: the password of the role postgres over TCP, set again at every
# start), PG_DATABASES (space-separated names created when missing), PG_HBA_ALLOW (space-separated
# networks allowed besides loopback, with the password), PG_SETTINGS (space-separated name=value
# server settings, e.g. "max_connections=400 shared_buffers=1GB").
postgres_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [ -x "$dir/postgres" ] || die "no PostgreSQL server in /usr/lib/postgresql"
    echo "$dir"
}

run_postgres() {
    local bin pgdata port listen settings network pwfile
    bin=$(postgres_bin)
    pgdata="$DATA/pgdata"
    port=${PG_PORT:-5432}
    listen=${PG_LISTEN:-127.0.0.1}
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "POSTGRES_PASSWORD is not set"
    mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
    own postgres "$pgdata"

    if [ ! -s "$pgdata/PG_VERSION" ]; then
        log "first start: initdb in $pgdata"
        pwfile=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile" && chown postgres "$pwfile"
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/initdb" -D "$pgdata" \
            --username=postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
    fi

    # Access follows the environment at every start: the socket for the postgres user of this
    # container, TCP from loopback and PG_HBA_ALLOW with the password.
    {
        echo "# written by flespi-services at every start; edit PG_HBA_ALLOW instead"
        echo "local all all peer"
        echo "host all all 127.0.0.1/32 scram-sha-256"
        echo "host all all ::1/128 scram-sha-256"
        for network in ${PG_HBA_ALLOW:-}; do
            echo "host all all $network scram-sha-256"
        done
    } >"$pgdata/pg_hba.conf"
    chown postgres:postgres "$pgdata/pg_hba.conf"

    # On the socket only, set the password and create the missing databases, then start for real.
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/pg_ctl" -D "$pgdata" -w -s \
        -o "-c listen_addresses='' -p $port" start
    PGPASSWORD_SQL=$(printf "%s" "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    psql_local() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/psql" -X -q -p "$port" -v ON_ERROR_STOP=1 "$@"; }
    psql_local -d postgres -c "ALTER ROLE postgres PASSWORD '$PGPASSWORD_SQL'" >/dev/null
    for name in ${PG_DATABASES:-}; do
        if [ -z "$(psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
            log "creating database $name"
            psql_local -d postgres -c "CREATE DATABASE \"$name\"" >/dev/null
        fi
    done
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/pg_ctl" -D "$pgdata" -w -s -m fast stop

    settings=()
    for setting in ${PG_SETTINGS:-}; do settings+=(-c "$setting"); done
    log "PostgreSQL on $listen:$port"
    as_user postgres "$bin/postgres" -D "$pgdata" -c "listen_addresses=$listen" -p "$port" \
        -c log_line_prefix='%m [%p] %q%u@%d ' "${settings[@]}"
}

# --- Redis ----------------------------------------------------------------------------------
# REDIS_PORT (6379), REDIS_BIND (127.0.0.1; space-separated addresses), REDIS_PASSWORD (none:
# no AUTH; else put it in REDIS_URL as redis://:<password>@host:port/0), REDIS_MAXMEMORY (none).
run_redis() {
    local port args
    port=${REDIS_PORT:-6379}
    own redis "$DATA/redis"
    # appendonly: the Celery queues and debounce timers survive a restart (reconciliation
    # repairs what is lost anyway: docs/running.md); noeviction: Celery's messages are never dropped
    args=(--port "$port" --bind ${REDIS_BIND:-127.0.0.1} --dir "$DATA/redis" --daemonize no
          --appendonly yes --appendfsync everysec --save "3600 1 300 100 60 10000"
          --maxmemory-policy noeviction --protected-mode no --logfile "")
    [ -n "${REDIS_PASSWORD:-}" ] && args+=(--requirepass "$REDIS_PASSWORD")
    [ -n "${REDIS_MAXMEMORY:-}" ] && args+=(--maxmemory "$REDIS_MAXMEMORY")
    log "Redis on ${REDIS_BIND:-127.0.0.1}:$port"
    as_user redis redis-server "${args[@]}"
}

# --- healthchecks ---------------------------------------------------------------------------
check() {
    case "${1:-}" in
        postgres) setpriv --reuid=postgres --regid=postgres --init-groups -- "$(postgres_bin)/pg_isready" -q \
                      -h /run/postgresql -p "${PG_PORT:-5432}" ;;
        redis) redis-cli -h "$(set -- ${REDIS_BIND:-127.0.0.1}; echo "$1")" -p "${REDIS_PORT:-6379}" ${REDIS_PASSWORD:+--no-auth-warning -a "$REDIS_PASSWORD"} ping \
                   | grep -q PONG ;;
        *) die "check what? postgres or redis" ;;
    esac
}

ROLE=${1:-}
case "$ROLE" in
    postgres) run_postgres ;;
    redis) run_redis ;;
    check) shift; check "$@" ;;
    *) ROLE=usage; die "usage: flespi-services postgres|redis|check <name>" ;;
esac
