#!/usr/bin/env bash
# What `make test` needs beyond scripts/deps.sh: moto's S3-compatible server (PyPI
# `moto[server]`) for the S3 backup store tests, in a venv under target/ (PADDOCK_MOTO_VENV
# overrides where). Idempotent: an existing venv whose moto_server runs is kept; one that
# does not (a venv names its interpreter by absolute path, so a moved checkout breaks it)
# is made again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PADDOCK_MOTO_VENV:-$PWD/target/moto-venv}
if "$venv/bin/moto_server" --help >/dev/null 2>&1; then
    exit 0
fi
if ! /usr/bin/python3 -m venv --help >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
    echo "installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
fi
echo "installing moto[server] into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
