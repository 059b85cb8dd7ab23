#!/bin/bash
# The deployment end to end on this host: build what is missing, start deploy/compose.yml under a
# project name and ports of its own, wait for every service to be healthy, walk the README's
# quick start with a calc worker killed in the middle (deploy/stack_check.py), and remove every
# container and volume it started, also when a step fails.
#
#   deploy/stack-test.sh        (as root: the base images need debootstrap; `make stack-test`)
#
# STACK_PROJECT (flespi-stack-test) names the compose project; STACK_PORT_BASE (20000) moves
# every port: PostgreSQL base+5432, Redis base+6379, the brokers base+1883 (eu) and base+1884
# (ru), web base+8000, the roles' health ports base+8101... STACK_KEEP=1 leaves the stack running at the end (the command
# that removes it is printed). Exits 0 when every step passed; prints a table of the phases.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD="$HERE/build"
PROJECT=${STACK_PROJECT:-flespi-stack-test}
BASE=${STACK_PORT_BASE:-20000}
IMAGE=flespi/platform:latest
ENV_FILE="$BUILD/stack-test.env"
PHASES="$BUILD/stack-test.phases"
CHECK_PYTHON=${CHECK_PYTHON:-$REPO/.venv/bin/python}
COMPOSE=(docker-compose --project-name "$PROJECT" --file "$HERE/compose.yml" --env-file "$ENV_FILE")
JOBS="migrate"
ONE_OFF="$JOBS manage"

START=$SECONDS
say() { printf '[stack-test %4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }

mkdir -p "$BUILD"
: >"$PHASES"
phase_began=0 phase_name=""
phase() {  # phase NAME: ends the phase running (its time into the table), starts NAME
    phase_end
    phase_name=$1 phase_began=$SECONDS
    say "== $phase_name"
}
phase_end() {
    if [ -n "$phase_name" ]; then
        printf '%s\t%s\n' "$phase_name" "$((SECONDS - phase_began))" >>"$PHASES"
        phase_name=""
    fi
}

started=0
finish() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "$phase_name" ] && [ "$status" != 0 ] && phase_name="$phase_name (FAILED)"
    phase_end
    if [ "$started" = 1 ]; then
        if [ "$status" != 0 ]; then
            say "the stack when it failed:"
            "${COMPOSE[@]}" ps 2>/dev/null || true
            for service in $("${COMPOSE[@]}" config --services 2>/dev/null); do
                container=$("${COMPOSE[@]}" ps -q "$service" 2>/dev/null || true)
                [ -n "$container" ] || continue
                health=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} exit={{.State.ExitCode}}' "$container" 2>/dev/null || true)
                case "$health" in
                    "running healthy"*|"exited  exit=0") continue ;;
                esac
                say "--- $service ($health), its last lines:"
                docker logs --tail 40 "$container" 2>&1 | sed 's/^/    /' || true
            done
        fi
        if [ "${STACK_KEEP:-0}" = 1 ]; then
            say "STACK_KEEP=1: the stack is left running; remove it with: ${COMPOSE[*]} down --volumes --remove-orphans"
        else
            local began=$SECONDS
            say "removing the stack: containers and volumes of project $PROJECT"
            "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 30 >"$BUILD/stack-test-down.log" 2>&1 ||
                { say "docker-compose down failed:"; tail -n 20 "$BUILD/stack-test-down.log"; }
            printf '%s\t%s\n' "teardown" "$((SECONDS - began))" >>"$PHASES"
        fi
    fi
    echo
    printf '%-62s %8s\n' "phase" "seconds"
    printf '%-62s %8s\n' "-----" "-------"
    awk -F'\t' '{ printf "%-62s %8s\n", $1, $2 }' "$PHASES"
    printf '%-62s %8s\n' "total" "$((SECONDS - START))"
    echo
    if [ "$status" = 0 ]; then say "PASSED"; else say "FAILED (exit $status): see the lines above"; fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM
trap 'say "error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

[ -x "$CHECK_PYTHON" ] || fail "no $CHECK_PYTHON to run the check with (make venv, or CHECK_PYTHON=...)"
"$CHECK_PYTHON" -c 'import paho.mqtt, requests, redis' 2>/dev/null ||
    fail "$CHECK_PYTHON lacks requests, paho-mqtt or redis (pip install -r requirements.txt)"
command -v docker-compose >/dev/null || fail "docker-compose (1.29) is not installed"
docker info >/dev/null 2>&1 || fail "docker does not answer: start dockerd (docs/deployment.md, 'Docker on this machine')"

phase "base images (deploy/base-image.sh)"
"$HERE/base-image.sh"

phase "wheels (deploy/build.sh)"
"$HERE/build.sh" --wheels-only

phase "image (docker build)"
IMAGE=$IMAGE "$HERE/build.sh" --image-only

phase "stack start (docker-compose up)"
# this run's settings: the example's, its own ports and fresh secrets
secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=' | cut -c1-32; }
declare -A settings=(
    [SECRET_KEY]=$(secret) [POSTGRES_PASSWORD]=$(secret) [MQTT_PLATFORM_PASSWORD]=$(secret) [ADMIN_PASSWORD]=""
    [FLESPI_IMAGE]=$IMAGE [PG_PORT]=$((BASE + 5432)) [REDIS_PORT]=$((BASE + 6379)) [MQTT_EU_PORT]=$((BASE + 1883)) [MQTT_RU_PORT]=$((BASE + 1884))
    [MQTT_EU_WS_PORT]=$((BASE + 1893)) [MQTT_RU_WS_PORT]=$((BASE + 1894))
    [WEB_PORT]=$((BASE + 8000)) [MQTT_BIND]=127.0.0.1 [NODE_NAME]=stack
    [ALLOWED_HOSTS]="localhost,eu.localhost,ru.localhost,127.0.0.1"
    [CSRF_TRUSTED_ORIGINS]="http://localhost:$((BASE + 8000))"
    [RELAY_HEALTH_PORT]=$((BASE + 8101)) [INGEST_HEALTH_PORT]=$((BASE + 8102)) [PURGE_HEALTH_PORT]=$((BASE + 8103))
    [BROKER_EU_HEALTH_PORT]=$((BASE + 8107)) [BROKER_RU_HEALTH_PORT]=$((BASE + 8108)) [PUMP_EU_HEALTH_PORT]=$((BASE + 8105)) [PUMP_RU_HEALTH_PORT]=$((BASE + 8106))
    [CALC_EU_1_HEALTH_PORT]=$((BASE + 8111)) [CALC_EU_2_HEALTH_PORT]=$((BASE + 8112))
    [CALC_RU_1_HEALTH_PORT]=$((BASE + 8113)) [CALC_RU_2_HEALTH_PORT]=$((BASE + 8114))
)
grep -v -E "^($(IFS='|'; echo "${!settings[*]}"))=" "$HERE/example.env" >"$ENV_FILE"
for name in "${!settings[@]}"; do printf '%s=%s\n' "$name" "${settings[$name]}" >>"$ENV_FILE"; done
chmod 600 "$ENV_FILE"
busy=()
for name in PG_PORT REDIS_PORT MQTT_EU_PORT MQTT_RU_PORT MQTT_EU_WS_PORT MQTT_RU_WS_PORT WEB_PORT RELAY_HEALTH_PORT \
            INGEST_HEALTH_PORT PURGE_HEALTH_PORT BROKER_EU_HEALTH_PORT BROKER_RU_HEALTH_PORT PUMP_EU_HEALTH_PORT PUMP_RU_HEALTH_PORT CALC_EU_1_HEALTH_PORT \
            CALC_EU_2_HEALTH_PORT CALC_RU_1_HEALTH_PORT CALC_RU_2_HEALTH_PORT; do
    port=${settings[$name]}
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port ($name)"); fi
done
if [ -n "$("${COMPOSE[@]}" ps -q 2>/dev/null)" ]; then
    say "a stack of project $PROJECT is left from an earlier run: removing it first"
    "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    busy=()
fi
[ ${#busy[@]} = 0 ] || fail "ports in use on this host: ${busy[*]}; choose others with STACK_PORT_BASE=30000"
started=1
# up waits for each condition of depends_on: postgres and the others healthy, the jobs done
if ! "${COMPOSE[@]}" up --detach --no-color >"$BUILD/stack-test-up.log" 2>&1; then
    tail -n 30 "$BUILD/stack-test-up.log"
    fail "docker-compose up failed (the whole log: $BUILD/stack-test-up.log)"
fi

phase "stack healthy"
services=()
for service in $("${COMPOSE[@]}" config --services); do
    case " $ONE_OFF " in *" $service "*) continue ;; esac
    services+=("$service")
done
health_of() {  # "service:health" of every long-running service
    local service container
    for service in "${services[@]}"; do
        container=$("${COMPOSE[@]}" ps -q "$service")
        echo "$service:$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container" 2>/dev/null || echo missing)"
    done
}
wait_healthy() {  # wait_healthy SECONDS: every long-running service healthy, or fail
    local deadline=$((SECONDS + $1)) states waiting last=""
    while :; do
        states=$(health_of)
        waiting=$(echo "$states" | grep -v ':healthy$' | tr '\n' ' ' || true)
        [ -z "$waiting" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then fail "not healthy after $1 s: $waiting"; fi
        if [ "$waiting" != "$last" ]; then
            say "healthy: $(echo "$states" | grep -c ':healthy$') of ${#services[@]}; waiting for $waiting"
            last=$waiting
        fi
        sleep 2
    done
    say "all ${#services[@]} services healthy"
}
wait_healthy 240
for job in $JOBS; do
    container=$("${COMPOSE[@]}" ps -q "$job")
    code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
    [ "$code" = 0 ] || fail "the $job job exited $code"
done
"${COMPOSE[@]}" logs --no-color migrate | grep -E "migrating|topology|superuser" | sed 's/^/    /' || true
state_volume="${PROJECT}_state"
password_file=$(docker run --rm --network none --volume "$state_volume:/state:ro" flespi/base:bookworm \
                    stat --format '%a, owner %u:%g, %s bytes' /state/admin-password 2>/dev/null || true)
case "$password_file" in
    "600, owner 10001:10001"*) say "the first admin's password is in the state volume, mode 600 ($password_file)" ;;
    *) fail "no admin-password of mode 600 and owner flespi (10001) in volume $state_volume (found: ${password_file:-nothing})" ;;
esac

phase_end
say "== the quick start (deploy/stack_check.py)"
if ! STACK_WEB_URL="http://127.0.0.1:${settings[WEB_PORT]}" STACK_MQTT_HOST=127.0.0.1 \
     STACK_MQTT_PORT="${settings[MQTT_EU_PORT]}" STACK_REDIS_URL="redis://127.0.0.1:${settings[REDIS_PORT]}/0" \
     STACK_COMPOSE="$(printf '%s\n' "${COMPOSE[@]}" | "$CHECK_PYTHON" -c 'import json, sys; print(json.dumps(sys.stdin.read().split("\n")[:-1]))')" \
     STACK_NODE_NAME="${settings[NODE_NAME]}" STACK_CALC_SHARDS=256 STACK_PHASES="$PHASES" \
     "$CHECK_PYTHON" "$HERE/stack_check.py"; then
    fail "the quick start check failed (above)"
fi

phase "every service healthy again after the kill"
wait_healthy 120
restarts=$(for service in "${services[@]}"; do
    container=$("${COMPOSE[@]}" ps -q "$service")
    count=$(docker inspect --format '{{.RestartCount}}' "$container")
    [ "$count" = 0 ] || echo "$service restarted $count time(s)"
done)
[ -z "$restarts" ] || say "restarts by docker: $restarts"
tracebacks=$("${COMPOSE[@]}" logs --no-color 2>/dev/null | grep -c 'Traceback' || true)
say "tracebacks in the logs of the stack: $tracebacks"
phase_end
