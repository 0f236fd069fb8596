#!/usr/bin/env bash
# Start or stop a local Docker engine for mlbridge's integration tests and CI.
#
# Usage: scripts/docker-engine.sh up|down|status
#
#   up      If `docker info` already answers, use that engine and record that we
#           did not start it. Otherwise install docker.io and mmdebstrap with
#           apt-get when missing, start dockerd in the background (it starts its
#           own containerd when none runs), and wait until it answers.
#   down    Stop only the dockerd that `up` started (found by its pidfile) and
#           wait for it to exit. Does nothing for an engine we did not start.
#   status  Say whether an engine answers and whether we started it.
#
# Environment:
#   MLBRIDGE_ENGINE_STATE    state dir for pidfile and log
#                            (default /var/lib/mlbridge-engine)
#   MLBRIDGE_ENGINE_TIMEOUT  seconds to wait for dockerd to answer (default 60)
set -euo pipefail

STATE_DIR="${MLBRIDGE_ENGINE_STATE:-/var/lib/mlbridge-engine}"
TIMEOUT="${MLBRIDGE_ENGINE_TIMEOUT:-60}"
PIDFILE="$STATE_DIR/dockerd.pid"
LOGFILE="$STATE_DIR/dockerd.log"
EXTERNAL_MARK="$STATE_DIR/external"

log() { printf 'docker-engine: %s\n' "$*"; }
die() { printf 'docker-engine: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $*"
    fi
}

engine_answers() { docker info >/dev/null 2>&1; }

# The pid in our pidfile, if that process is still a live dockerd.
our_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    grep -q dockerd "/proc/$pid/comm" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

# ensure_packages [engine]: mmdebstrap always (the rootfs build needs it),
# docker.io too when we are to run the engine ourselves.
ensure_packages() {
    local missing=()
    if [ "${1:-}" = engine ]; then
        command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
        command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    fi
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    [ "${#missing[@]}" -eq 0 ] && return 0
    # Deduplicate docker.io when both binaries are missing.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
}

wait_for_engine() {
    local pid="$1" deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if engine_answers; then return 0; fi
        if ! [ -d "/proc/$pid" ]; then
            log "dockerd (pid $pid) exited during start-up; last log lines:" >&2
            tail -n 30 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "dockerd failed to start (full log: $LOGFILE)"
        fi
        sleep 0.5
    done
    log "dockerd (pid $pid) did not answer \`docker info\` within ${TIMEOUT}s; last log lines:" >&2
    tail -n 30 "$LOGFILE" >&2 || true
    die "dockerd start timed out (full log: $LOGFILE); stop it with: $0 down"
}

cmd_up() {
    as_root mkdir -p "$STATE_DIR"
    local pid
    if pid="$(our_pid)"; then
        if engine_answers; then
            log "engine already running (started by us, pid $pid)"
            return 0
        fi
        log "our dockerd (pid $pid) is running but not answering yet; waiting"
        wait_for_engine "$pid"
        log "engine ready (pid $pid)"
        return 0
    fi
    rm -f "$PIDFILE"
    if engine_answers; then
        log "using the Docker engine that is already running (not started by us)"
        as_root touch "$EXTERNAL_MARK"
        ensure_packages
        return 0
    fi
    as_root rm -f "$EXTERNAL_MARK"
    ensure_packages engine
    log "starting dockerd (log: $LOGFILE)"
    # setsid: the daemon outlives this shell and its job-control signals. The
    # inner shell has no job control, so setsid execs dockerd and $! is its pid.
    as_root sh -c 'setsid dockerd >>"$1" 2>&1 </dev/null & echo $! >"$2"' \
        sh "$LOGFILE" "$PIDFILE"
    pid="$(cat "$PIDFILE")"
    sleep 0.2
    if [ -d "/proc/$pid" ] && ! grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
        # setsid forked after all; find the daemon it started.
        pid="$(pgrep -n -x dockerd || echo "$pid")"
        echo "$pid" | as_root tee "$PIDFILE" >/dev/null
    fi
    wait_for_engine "$pid"
    log "engine ready (dockerd pid $pid, $(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
}

cmd_down() {
    local pid
    if ! pid="$(our_pid)"; then
        if [ -f "$EXTERNAL_MARK" ]; then
            log "engine was not started by us; leaving it running"
        else
            log "no dockerd started by us is running; nothing to do"
        fi
        as_root rm -f "$PIDFILE"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    as_root kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while [ -d "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.3; done
    if [ -d "/proc/$pid" ]; then
        log "dockerd (pid $pid) still running after 30s; sending SIGKILL"
        as_root kill -KILL "$pid" || true
        sleep 1
    fi
    as_root rm -f "$PIDFILE"
    log "engine stopped"
}

cmd_status() {
    local pid
    if pid="$(our_pid)"; then
        log "dockerd started by us, pid $pid"
    elif [ -f "$EXTERNAL_MARK" ]; then
        log "using an engine we did not start"
    fi
    if engine_answers; then log "engine answers"; else log "engine not answering"; return 1; fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
