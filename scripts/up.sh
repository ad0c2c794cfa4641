#!/usr/bin/env bash
# Brings up an all-in-one Paddock node: controller + local agent + busybox
# template + demo tenant and CLI contexts. Idempotent: starts only what is
# not running and keeps all state. `--status` only reports.
set -euo pipefail

cd "$(dirname "$0")/.."
HOME_DIR=$(realpath -m "${PADDOCK_HOME:-/var/lib/paddock}")
BIN=$PWD/target/release
# The shipped configs keep everything under /var/lib/paddock; another PADDOCK_HOME gets
# copies of them with that path replaced, written to $PADDOCK_HOME/config (ports stay).
CONFIG_DIR=$PWD/config
if [[ $HOME_DIR != /var/lib/paddock ]]; then
    CONFIG_DIR=$HOME_DIR/config
fi
CONTROLLER_CONFIG=$CONFIG_DIR/controller.toml
AGENT_CONFIG=$CONFIG_DIR/agent.toml
CONTROLLER_URL=https://127.0.0.1:7443
CA_CERT=$HOME_DIR/controller/tls/ca.crt
LOGS=$HOME_DIR/logs
PADDOCK="$BIN/paddock"

running() { # pidfile binary
    local pid
    [[ -f $1 ]] || return 1
    pid=$(<"$1")
    [[ -n $pid && -d /proc/$pid ]] || return 1
    local exe
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    # A rebuilt binary shows as "<path> (deleted)" in the running process.
    [[ ${exe% (deleted)} == "$(readlink -f "$2")" ]]
}

status() {
    for daemon in controller agent; do
        if running "$HOME_DIR/$daemon.pid" "$BIN/paddock-$daemon"; then
            echo "$daemon: running (pid $(<"$HOME_DIR/$daemon.pid"))"
        else
            echo "$daemon: stopped"
        fi
    done
}

if [[ ${1:-} == --status ]]; then
    status
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: make up must run as root (it creates namespaces, cgroups and mounts)" >&2
    exit 1
fi

wait_port() { # port what log
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "error: $2 did not start listening on port $1; see $3" >&2
    tail -n 20 "$3" >&2 || true
    exit 1
}

start() { # daemon port
    local daemon=$1 port=$2 config
    config=$CONFIG_DIR/$daemon.toml
    if running "$HOME_DIR/$daemon.pid" "$BIN/paddock-$daemon"; then
        echo "$daemon already running (pid $(<"$HOME_DIR/$daemon.pid"))"
        return
    fi
    setsid "$BIN/paddock-$daemon" --config "$config" run \
        >>"$LOGS/$daemon.log" 2>&1 </dev/null &
    echo $! >"$HOME_DIR/$daemon.pid"
    wait_port "$port" "$daemon" "$LOGS/$daemon.log"
    echo "started $daemon (pid $(<"$HOME_DIR/$daemon.pid"), log $LOGS/$daemon.log)"
}

# Tenant data and node state are root-only: the controller's data dir and the
# agent's state dir are 0700 (the daemons make them so), logs 0640 in a 0750
# dir, and nothing here is listable by other local users.
umask 027
mkdir -p "$HOME_DIR" "$LOGS"
chmod 700 "$HOME_DIR"
chmod 750 "$LOGS"
find "$LOGS" -maxdepth 1 -type f -exec chmod 640 {} +
if [[ $CONFIG_DIR != "$PWD/config" ]]; then
    mkdir -p "$CONFIG_DIR"
    for daemon in controller agent; do
        sed "s#/var/lib/paddock/#$HOME_DIR/#g" "$PWD/config/$daemon.toml" >"$CONFIG_DIR/$daemon.toml"
    done
fi

# The CLI and daemons on PATH, as an installed package would put them.
for binary in paddock paddock-controller paddock-agent; do
    ln -sf "$BIN/$binary" "/usr/local/bin/$binary"
done

admin_token=""
if [[ ! -d $HOME_DIR/controller/store ]]; then
    admin_token=$("$BIN/paddock-controller" --config "$CONTROLLER_CONFIG" init)
fi
start controller 7443

if [[ -n $admin_token ]]; then
    "$PADDOCK" context add local-admin --controller "$CONTROLLER_URL" --ca-cert "$CA_CERT" \
        --token "$admin_token" >/dev/null
elif ! "$PADDOCK" context list -o json | grep -q '"local-admin"'; then
    echo "warning: the controller was initialized earlier but the CLI has no local-admin context;" >&2
    echo "         its admin token was shown only at init. Re-create with: paddock context add local-admin ..." >&2
fi

"$BIN/paddock-agent" --config "$AGENT_CONFIG" template build busybox >/dev/null
start agent 7444

admin=("$PADDOCK" --context local-admin)
for _ in $(seq 1 100); do
    if "${admin[@]}" admin node list -o json 2>/dev/null | grep -q '"online"'; then
        break
    fi
    sleep 0.2
done

# A private NAT pool for the local node, so VPSes get an address out of the box.
node_name=$("${admin[@]}" admin node list -o json | grep -o '"name": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/')
if [[ -n $node_name ]] && ! "${admin[@]}" admin pool show local >/dev/null 2>&1; then
    "${admin[@]}" admin pool create local --node "$node_name" \
        --cidr 10.77.0.0/24 --gateway 10.77.0.1 --nat >/dev/null
    echo "created pool local (10.77.0.0/24, NAT) on node $node_name"
fi

if ! "${admin[@]}" admin tenant show demo >/dev/null 2>&1; then
    "${admin[@]}" admin tenant create demo >/dev/null
    echo "created tenant demo"
fi
# A demo context left by an earlier controller (another PADDOCK_HOME, a wiped state dir)
# names a token or CA this one does not know: it is replaced, not kept.
if ! "$PADDOCK" --context demo list >/dev/null 2>&1; then
    demo_token=$("${admin[@]}" admin token create --tenant demo)
    "$PADDOCK" context add demo --controller "$CONTROLLER_URL" --ca-cert "$CA_CERT" \
        --token "$demo_token" >/dev/null
fi
"$PADDOCK" context use demo >/dev/null

cat <<MSG

Paddock is up: controller on $CONTROLLER_URL, agent on this node, busybox template built.
State and logs are in $HOME_DIR. The CLI context is "demo" (a tenant); "local-admin" is the provider.

Try:
  paddock create web1 --plan nano --wait     # a real system container
  paddock list
  paddock exec web1 -- ps                    # its own process tree, PID 1 is init
  paddock exec web1 -- hostname
  paddock stop web1 && paddock start web1
  paddock delete web1 --yes
  paddock plans                              # sizes, pids and IO limits per plan
  paddock --context local-admin admin node list

Stop the daemons with: make down   (VPSes keep running and are re-adopted by make up)
MSG
