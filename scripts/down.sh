#!/usr/bin/env bash
# Stops the all-in-one controller and agent started by `make up`. VPSes keep
# running (the node survives its agent) and their state is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
HOME_DIR=${PADDOCK_HOME:-/var/lib/paddock}
for daemon in agent controller; do
    pidfile=$HOME_DIR/$daemon.pid
    exe=""
    if [[ -f $pidfile ]] && pid=$(<"$pidfile") && [[ -d /proc/$pid ]]; then
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    fi
    if [[ -n $exe && ${exe% (deleted)} == "$(readlink -f "$PWD/target/release/paddock-$daemon")" ]]; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            [[ -d /proc/$pid ]] || break
            sleep 0.1
        done
        echo "stopped $daemon"
    else
        echo "$daemon not running"
    fi
    rm -f "$pidfile"
done
