#!/usr/bin/env bash
# Installs Paddock as a system service: the binaries, the systemd units of both daemons, their
# configs in /etc/paddock (kept if already there) and the state dir. `make install` builds the
# release binaries and runs this; packagers set DESTDIR (a staging root) and PREFIX.
#
#   BIN      where the built binaries are        [target/release]
#   DESTDIR  staging root, empty for this system []
#   PREFIX   binaries go to $PREFIX/bin          [/usr/local]
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
ETC=/etc/paddock
UNITS=/etc/systemd/system
STATE=/var/lib/paddock

if [[ -z $DESTDIR && $(id -u) -ne 0 ]]; then
    echo "error: make install must run as root (or set DESTDIR to stage the files)" >&2
    exit 1
fi
for binary in paddock paddock-controller paddock-agent; do
    if [[ ! -x $BIN/$binary ]]; then
        echo "error: $BIN/$binary is missing; build it first (cargo build --release --bins)" >&2
        exit 1
    fi
done

install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$UNITS" "$DESTDIR$PREFIX/share/doc/paddock"
for binary in paddock paddock-controller paddock-agent; do
    # Replace, never write through: `make up` leaves symlinks into target/release here.
    rm -f "$DESTDIR$PREFIX/bin/$binary"
    install -m 0755 "$BIN/$binary" "$DESTDIR$PREFIX/bin/$binary"
done
for unit in paddock-controller.service paddock-agent.service; do
    sed -e "s|/usr/local/|$PREFIX/|g" "dist/systemd/$unit" >"$DESTDIR$UNITS/$unit.tmp"
    chmod 0644 "$DESTDIR$UNITS/$unit.tmp"
    mv "$DESTDIR$UNITS/$unit.tmp" "$DESTDIR$UNITS/$unit"
done
install -m 0644 README.md docs/ARCHITECTURE.md docs/SECURITY.md "$DESTDIR$PREFIX/share/doc/paddock/"

# Configs hold the operator's choices: installed once, never overwritten.
install -d -m 0750 "$DESTDIR$ETC"
for config in controller.toml agent.toml; do
    if [[ -e $DESTDIR$ETC/$config ]]; then
        echo "kept $ETC/$config (yours; the shipped one is config/$config)"
    else
        install -m 0640 "config/$config" "$DESTDIR$ETC/$config"
        echo "installed $ETC/$config"
    fi
done
install -d -m 0700 "$DESTDIR$STATE"
echo "installed paddock, paddock-controller, paddock-agent in $PREFIX/bin and their units in $UNITS"

if [[ -n $DESTDIR ]]; then
    exit 0
fi
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
else
    echo "note: systemd is not running here; the units take effect on a systemd host"
fi
cat <<MSG

Next, on the controller's machine (once; init prints the admin token, keep it):
  paddock-controller --config $ETC/controller.toml init
  systemctl enable --now paddock-controller
and on every node (join_token_file and controller in $ETC/agent.toml point at the controller):
  systemctl enable --now paddock-agent
Stopping or restarting paddock-agent leaves the VPSes running; it re-adopts them.
Do not run these units and \`make up\` at once: both use $STATE and the same ports.
MSG
