#!/usr/bin/env bash
# A CRIU that works on this kernel, for live migration (`runtime/checkpoint.rs`): 4.2 or later
# and `criu check` passing, else built here. Debian 12's CRIU 3.17 fails its check on kernels
# 6.13 and later (the vDSO data page became two mappings, [vvar] and [vvar_vclock]: CRIU 4.1),
# and 4.1 still fails to dump a TCP socket on 6.16 and later (SO_PASSCRED/SO_PASSSEC are
# refused on non-unix sockets: CRIU 4.2). The source of Debian forky's CRIU package (4.2.1
# when written) is fetched through apt from deb.debian.org (apt checks its hash against the
# signed index), built, and installed as /usr/local/sbin/criu, which comes before /usr/sbin
# on root's PATH. About a minute and a half on two cores, once.
set -euo pipefail

# "Version: 4.2.1" -> 4002
criu_version() {
    criu --version 2>/dev/null | awk -F'[ .]' '/^Version:/ { print $2 * 1000 + $3 }'
}
if command -v criu >/dev/null && (($(criu_version || echo 0) >= 4002)) && criu check >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: no working criu (4.2 or later, \`criu check\` passing); run as root to build one" >&2
    exit 1
fi
echo "criu: $(criu --version 2>/dev/null | head -1 || echo none) is not 4.2+ or fails its check here; building Debian forky's"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends build-essential pkg-config libprotobuf-c-dev \
    protobuf-c-compiler libprotobuf-dev protobuf-compiler libnl-3-dev libnet1-dev libcap-dev \
    libbsd-dev libgnutls28-dev libnftables-dev uuid-dev libaio-dev python3-protobuf iptables \
    >/dev/null

work=$(mktemp -d /tmp/paddock-criu-XXXXXX)
trap 'rm -rf "$work"' EXIT
# A private apt configuration naming only forky's sources: the host's own lists and
# sources stay as they are.
mkdir -p "$work/lists/partial"
# apt downloads as its unprivileged user where it can.
chmod 0755 "$work"
if id _apt >/dev/null 2>&1; then chown -R _apt "$work/lists"; fi
echo "deb-src http://deb.debian.org/debian forky main" >"$work/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o APT::Get::List-Cleanup=0)
apt-get "${apt_private[@]}" update -qq
# Only the upstream tarball is needed (Debian's packaging is not used); apt checks its hash.
(cd "$work" && apt-get "${apt_private[@]}" source --download-only -qq criu >/dev/null 2>&1 || true)
tarball=$(ls "$work"/criu_*.orig.tar.* 2>/dev/null | head -1)
if [[ -z $tarball ]]; then
    echo "error: could not download criu's source from deb.debian.org (forky)" >&2
    exit 1
fi
tar -C "$work" -xf "$tarball"
make -C "$work"/criu-* -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
    tail -30 "$work/build.log" >&2
    exit 1
}
install -m 0755 "$work"/criu-*/criu/criu /usr/local/sbin/criu
hash -r
/usr/local/sbin/criu check
echo "criu: installed $(/usr/local/sbin/criu --version | head -1) as /usr/local/sbin/criu"
