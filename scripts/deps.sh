#!/usr/bin/env bash
# Installs the OS packages Paddock needs, only those that are missing.
set -euo pipefail

# gcc + libc6-dev: the runtime tests build a static in-VPS isolation probe.
# debootstrap: the debian-12 template (its boot test builds one).
# runc, crun: the baselines of the bench's start-latency scenario (OCI bundles of the same busybox
# rootfs; crun only where the host's cgroup mode allows it).
# lxcfs: each VPS's own /proc/meminfo, cpuinfo, stat, uptime, loadavg, swaps (the agent starts
# it, or reuses a running one; see proc_view in config/agent.toml).
# systemd: `systemd-analyze verify` checks the units `make install` ships.
# etcd-server: the store conformance suite and the etcd controller test start a private etcd.
# protobuf-compiler, libprotobuf-dev: the etcd-client crate's build script compiles etcd's protos
# with protoc, which needs the well-known types (google/protobuf/*.proto) from libprotobuf-dev.
# xfsprogs: the snapshot test makes a reflink-capable xfs (mkfs.xfs -m reflink=1) to test the
# copy-on-write path for real.
# criu: live migration (CheckpointVps / RestoreCheckpoint). Debian 12's CRIU 3.17 cannot run on
# current kernels; scripts/criu.sh (run by `make deps` after this) builds a 4.2 where needed.
# iptables: CRIU locks a VPS's network with iptables-restore while it dumps and
# restores its TCP connections.
packages=(criu iptables busybox-static iproute2 nftables e2fsprogs xfsprogs util-linux kmod gcc libc6-dev debootstrap lxcfs runc crun systemd etcd-server protobuf-compiler libprotobuf-dev)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Under systemd, Debian starts lxcfs.service as `lxcfs /var/lib/lxcfs` right after install;
# the agent reuses a running lxcfs, so give the service the flags the agent would start it with
# (per-VPS CPU counts and load averages). Only at install time: restarting a lxcfs that
# containers use would break their /proc views.
if [[ " ${missing[*]} " == *" lxcfs "* && -d /run/systemd/system ]]; then
    mkdir -p /etc/systemd/system/lxcfs.service.d
    cat >/etc/systemd/system/lxcfs.service.d/paddock.conf <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/bin/lxcfs --enable-cfs --enable-loadavg --enable-pidfd /var/lib/lxcfs
UNIT
    systemctl daemon-reload
    systemctl restart lxcfs.service
fi

# Debian enables and starts etcd.service (a single member on 127.0.0.1:2379) right after
# install. Paddock's tests start a private etcd on ports of their own, and a controller with
# `store = "etcd"` is pointed at the provider's own cluster: installing the package for them
# must not leave a database running on the host.
if [[ " ${missing[*]} " == *" etcd-server "* && -d /run/systemd/system ]]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi
