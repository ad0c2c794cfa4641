#!/usr/bin/env python3
"""Example Paddock billing integration.

Prints an invoice-style usage summary per tenant for a period
(BillingService.TenantUsageSummary), then follows the lifecycle event stream
(BillingService.WatchEvents), saving the last cursor to a file after every
event so a restarted client resumes exactly where it left off.

The gRPC code is generated from ../../proto on first run (grpcio-tools).
"""

import argparse
import datetime as dt
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
GEN_DIR = os.path.join(HERE, "gen")


def generate():
    """Generates the Python gRPC modules from proto/ into gen/ (once)."""
    marker = os.path.join(GEN_DIR, "paddock", "v1", "billing_pb2_grpc.py")
    protos = [
        os.path.join(PROTO_DIR, "paddock", "v1", name)
        for name in sorted(os.listdir(os.path.join(PROTO_DIR, "paddock", "v1")))
        if name.endswith(".proto")
    ]
    if os.path.exists(marker) and all(
        os.path.getmtime(p) <= os.path.getmtime(marker) for p in protos
    ):
        return
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(GEN_DIR, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={GEN_DIR}",
            f"--grpc_python_out={GEN_DIR}",
            *protos,
        ],
        check=True,
    )
    for package in ("paddock", os.path.join("paddock", "v1")):
        open(os.path.join(GEN_DIR, package, "__init__.py"), "a").close()


def parse_day(text):
    return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)


def timestamp(when):
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return f"{n} B"


def print_invoice(stub, billing_pb2, tenant, start, end, metadata):
    summary = stub.TenantUsageSummary(
        billing_pb2.TenantUsageSummaryRequest(
            tenant=tenant, **{"from": timestamp(start)}, to=timestamp(end)
        ),
        metadata=metadata,
    )
    print(f"INVOICE tenant={summary.tenant} period={start:%Y-%m-%d}..{end:%Y-%m-%d}")
    header = f"{'vps':<16}{'plan':<10}{'cpu_h':>10}{'mem_GiB_h':>12}{'disk_GiB_h':>12}{'io':>12}{'net':>12}"
    print(header)
    rows = list(summary.per_vps) + [summary.total]
    for index, row in enumerate(rows):
        name = row.vps if index < len(rows) - 1 else "TOTAL"
        gib_hours = lambda byte_seconds: byte_seconds / (1 << 30) / 3600.0
        print(
            f"{name:<16}{row.plan:<10}{row.cpu_seconds / 3600.0:>10.4f}"
            f"{gib_hours(row.memory_byte_seconds):>12.4f}{gib_hours(row.disk_byte_seconds):>12.4f}"
            f"{human_bytes(row.io_read_bytes + row.io_write_bytes):>12}"
            f"{human_bytes(row.net_rx_bytes + row.net_tx_bytes):>12}"
        )


def read_cursor(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def save_cursor(path, cursor):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(cursor))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def follow_events(stub, billing_pb2, cursor_file, metadata, idle_timeout):
    """Prints events after the saved cursor; with idle_timeout, stops after that many idle seconds."""
    import grpc

    cursor = read_cursor(cursor_file)
    request = billing_pb2.WatchEventsRequest(after_cursor=cursor)
    stream = stub.WatchEvents(request, metadata=metadata)
    import threading

    idle = threading.Timer(idle_timeout, stream.cancel) if idle_timeout else None
    try:
        if idle:
            idle.start()
        for event in stream:
            if idle:
                idle.cancel()
                idle = threading.Timer(idle_timeout, stream.cancel)
                idle.start()
            kind = billing_pb2.EventKind.Name(event.kind).removeprefix("EVENT_KIND_").lower()
            at = event.at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
            detail = f' detail="{event.detail}"' if event.detail else ""
            print(f"EVENT cursor={event.cursor} {kind} tenant={event.tenant} vps={event.vps} plan={event.plan} at={at}{detail}", flush=True)
            save_cursor(cursor_file, event.cursor)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        if idle:
            idle.cancel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", default="127.0.0.1:7443", help="host:port of the controller")
    parser.add_argument("--ca", required=True, help="the controller's CA certificate (tls/ca.crt)")
    parser.add_argument("--token", default=os.environ.get("PADDOCK_TOKEN"), help="billing token (or $PADDOCK_TOKEN)")
    parser.add_argument("--tenant", action="append", default=[], help="tenant to invoice (repeatable)")
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    parser.add_argument("--from", dest="start", type=parse_day, default=today.replace(day=1), help="YYYY-MM-DD (UTC)")
    parser.add_argument("--to", dest="end", type=parse_day, default=today + dt.timedelta(days=1), help="YYYY-MM-DD (UTC), exclusive")
    parser.add_argument("--cursor-file", default=os.path.join(HERE, "cursor"), help="where the last event cursor is kept")
    parser.add_argument("--idle-exit", type=float, default=0, help="stop following after this many idle seconds (0 = follow forever)")
    args = parser.parse_args()
    if not args.token:
        parser.error("--token or $PADDOCK_TOKEN is required")

    generate()
    sys.path.insert(0, GEN_DIR)
    import grpc
    from paddock.v1 import billing_pb2, billing_pb2_grpc

    with open(args.ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(args.controller, credentials)
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    metadata = [("authorization", f"Bearer {args.token}")]
    for tenant in args.tenant:
        print_invoice(stub, billing_pb2, tenant, args.start, args.end, metadata)
    follow_events(stub, billing_pb2, args.cursor_file, metadata, args.idle_exit)


if __name__ == "__main__":
    main()
