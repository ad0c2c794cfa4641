#!/usr/bin/env bash
# The controller's API suites again, on the etcd store backend (a private etcd per test).
#
# Runs the test binaries `cargo test --workspace` already built. `cargo test -p
# paddock-controller` would resolve dependency features for that one package (the CLI's
# tonic and tokio features drop out), rebuild the whole stack a second time and double
# target/ on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

suites=(api authz watch metering limits events migrate)

mapfile -t binaries < <(
	${CARGO:-cargo} test --workspace --no-run --message-format=json |
		python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    if msg["manifest_path"].endswith("/controller/Cargo.toml") and "test" in target["kind"] \
            and target["name"] in wanted:
        print(msg["executable"])
' "${suites[@]}"
)

if [ "${#binaries[@]}" -ne "${#suites[@]}" ]; then
	echo "test-etcd-suites: found ${#binaries[@]} of ${#suites[@]} suites (${suites[*]}): ${binaries[*]}" >&2
	exit 1
fi

status=0
for binary in "${binaries[@]}"; do
	echo "== etcd store: $(basename "$binary")"
	# cargo runs a test binary in its package's directory.
	(cd controller && PADDOCK_TEST_STORE=etcd "$binary" --test-threads=2) || status=1
done
exit $status
