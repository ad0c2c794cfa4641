//! Closing counters on the real kernel, as root: what a run used between the meter's last
//! round and its stop (CPU in its cgroup, bytes on its veth) is reported once, under the run's
//! incarnation, by the next round, also when the VPS was started again in between; and the
//! veth held open for that is gone afterwards. With `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root
//! run fails instead of skipping.

mod common;
mod net_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use net_support::{network, port, unique_names};
use paddock_agent::metering::{Meter, Sample, STOPPED_INCARNATION};
use paddock_agent::network::host_ifname;
use paddock_agent::runtime::{Power, Runtime, VpsSpec};

/// Burns CPU inside the VPS until its cgroup has counted `seconds` more of it: an amount of
/// work, not of wall time, so a loaded machine makes it slower, never smaller.
fn burn(runtime: &Runtime, vps_id: &str, seconds: u32) {
    let target = host_cpu_ns(runtime, vps_id) + u64::from(seconds) * 1_000_000_000;
    sh_ok(
        runtime,
        vps_id,
        "yes >/dev/null </dev/null 2>&1 & echo $! >/tmp/burner",
    );
    wait_until("the burn's CPU time", Duration::from_secs(120), || {
        host_cpu_ns(runtime, vps_id) >= target
    });
    sh_ok(runtime, vps_id, "kill $(cat /tmp/burner); rm /tmp/burner");
}

/// The run's cumulative CPU time as the host counts it (the cgroup outlives a stopped run
/// until the next start).
fn host_cpu_ns(runtime: &Runtime, vps_id: &str) -> u64 {
    let paths = runtime.cgroup_paths(vps_id);
    let read = |file: &str| {
        paths
            .iter()
            .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
    };
    if let Some(ns) = read("cpuacct.usage") {
        return ns.trim().parse().expect("cpuacct.usage");
    }
    read("cpu.stat")
        .and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
                .and_then(|usec| usec.trim().parse::<u64>().ok())
        })
        .map(|usec| usec * 1000)
        .expect("cpu usage of the cgroup")
}

fn meter(
    runtime: &Runtime,
    state_dir: &Path,
    network: Option<Arc<paddock_agent::network::Network>>,
) -> Meter {
    // Interval 0: every call is a round.
    Meter::new(
        Arc::new(runtime.clone()),
        network,
        state_dir,
        Duration::ZERO,
    )
    .expect("meter")
}

fn round(meter: &Meter, runtime: &Runtime, vps_id: &str) -> Vec<Sample> {
    let listed = runtime.list().expect("list");
    meter
        .due_samples(&listed)
        .expect("round")
        .into_iter()
        .filter(|sample| sample.vps_id == vps_id)
        .collect()
}

fn with_power(spec: &VpsSpec, power: Power) -> VpsSpec {
    VpsSpec {
        power,
        ..spec.clone()
    }
}

#[test]
fn the_cpu_a_run_used_after_the_last_round_is_reported_once_after_its_stop() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let running = spec(&vps_id, small_limits());
    let runtime = fixture.runtime.clone();
    let meter = meter(&runtime, fixture.state_dir.path(), None);

    let first_pid = running_pid(&runtime.apply(&running).expect("start"));
    let first = round(&meter, &runtime, &vps_id);
    assert_eq!(first.len(), 1, "{first:?}");
    let run = first[0].incarnation.clone();
    assert_ne!(run, STOPPED_INCARNATION);

    // Burn, and stop right away: no round sees the burn while the VPS runs.
    burn(&runtime, &vps_id, 2);
    runtime
        .apply(&with_power(&running, Power::Stopped))
        .expect("stop");
    let host_total = host_cpu_ns(&runtime, &vps_id);
    assert!(
        host_total > first[0].cpu_usage_ns + 1_500_000_000,
        "the burn is on the host's counter: {host_total} ns"
    );

    // The closing counters, under the run's incarnation, exactly the host's final counter.
    let closing = round(&meter, &runtime, &vps_id);
    assert_eq!(closing.len(), 1, "{closing:?}");
    assert_eq!(closing[0].incarnation, run);
    assert_eq!(closing[0].sequence, first[0].sequence + 1);
    assert_eq!(closing[0].cpu_usage_ns, host_total);
    assert_eq!(
        closing[0].memory_bytes, 0,
        "nothing of a stopped VPS is in memory"
    );
    assert!(closing[0].disk_used_bytes > 0);
    // Unchanged while it stays stopped: the controller adds nothing more.
    let again = round(&meter, &runtime, &vps_id);
    assert_eq!(
        (again[0].incarnation.as_str(), again[0].cpu_usage_ns),
        (run.as_str(), host_total)
    );

    // Started again: the new run only (its closing counters were sent already).
    let second_pid = running_pid(&runtime.apply(&running).expect("start again"));
    let started = round(&meter, &runtime, &vps_id);
    assert_eq!(started.len(), 1, "{started:?}");
    let second_run = started[0].incarnation.clone();
    assert_ne!(second_run, run);

    // A restart between two rounds: the second run's closing counters, then the third run.
    burn(&runtime, &vps_id, 1);
    runtime
        .apply(&with_power(&running, Power::Stopped))
        .expect("stop for restart");
    let second_total = host_cpu_ns(&runtime, &vps_id);
    let third_pid = running_pid(&runtime.apply(&running).expect("restart"));
    let restarted = round(&meter, &runtime, &vps_id);
    assert_eq!(restarted.len(), 2, "{restarted:?}");
    assert_eq!(restarted[0].incarnation, second_run);
    assert_eq!(restarted[0].cpu_usage_ns, second_total);
    assert!(second_total > started[0].cpu_usage_ns + 500_000_000);
    assert_ne!(restarted[1].incarnation, second_run);
    assert_ne!(restarted[1].incarnation, STOPPED_INCARNATION);
    assert_eq!(restarted[1].sequence, restarted[0].sequence + 1);
    assert!(restarted[0].sampled_at_unix_ms <= restarted[1].sampled_at_unix_ms);
    // Never again after the newer run.
    let next = round(&meter, &runtime, &vps_id);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].incarnation, restarted[1].incarnation);

    runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid, second_pid, third_pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_a_run_moved_after_the_last_round_are_reported_and_its_veth_goes() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let (bridge, subnet) = unique_names('m');
    let network_state = tempfile::tempdir().expect("tempdir");
    let (network, _bridge_guard) = network(&bridge, &network_state).await;
    let network = Arc::new(network);
    let port_spec = port(&vps_id, &subnet, 10, 0, 0);
    let running = spec(&vps_id, small_limits());
    let runtime = fixture.runtime.clone();
    let meter = meter(&runtime, fixture.state_dir.path(), Some(network.clone()));
    let blocking = |work: &dyn Fn() -> Vec<Sample>| tokio::task::block_in_place(work);

    let pid = running_pid(&tokio::task::block_in_place(|| runtime.apply(&running)).expect("start"));
    network.ensure_port(&port_spec, pid).await.expect("port");
    let host = host_ifname(&vps_id);
    let first = blocking(&|| round(&meter, &runtime, &vps_id));
    assert_eq!(first.len(), 1, "{first:?}");

    // Traffic after the round, then a stop right away.
    let gateway = format!("{subnet}.1");
    tokio::task::block_in_place(|| {
        sh_ok(
            &runtime,
            &vps_id,
            &format!("ping -c 3 -i 0.2 -s 16000 -W 1 {gateway} >/dev/null"),
        )
    });
    let statistic = |name: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{host}/statistics/{name}"))
            .expect("veth counter")
            .trim()
            .parse()
            .expect("number")
    };
    // As the VPS sees it: it received what the host end transmitted.
    let (rx_before_stop, tx_before_stop) = (statistic("tx_bytes"), statistic("rx_bytes"));
    assert!(
        rx_before_stop > first[0].net_rx_bytes + 40_000,
        "pings came back: {rx_before_stop}"
    );
    tokio::task::block_in_place(|| runtime.apply(&with_power(&running, Power::Stopped)))
        .expect("stop");

    let closing = blocking(&|| round(&meter, &runtime, &vps_id));
    assert_eq!(closing.len(), 1, "{closing:?}");
    assert_eq!(closing[0].incarnation, first[0].incarnation);
    // What moved during the shutdown itself is a few packets at most.
    for (what, recorded, before) in [
        ("rx", closing[0].net_rx_bytes, rx_before_stop),
        ("tx", closing[0].net_tx_bytes, tx_before_stop),
    ] {
        assert!(
            recorded >= before && recorded - before < 2_000,
            "{what}: closing {recorded}, before the stop {before}"
        );
    }

    // The namespace held for the counters is let go: the veth goes with it.
    let veth = Path::new("/sys/class/net").join(&host);
    wait_until("veth gone", Duration::from_secs(10), || !veth.exists());
    network.remove_port(&vps_id).await.expect("remove port");
    tokio::task::block_in_place(|| runtime.delete(&vps_id)).expect("delete");
    fixture.assert_gone(&vps_id, &[pid]);
}

#[test]
fn a_run_whose_init_exited_by_itself_is_closed_when_it_is_started_again() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let running = spec(&vps_id, small_limits());
    let runtime = fixture.runtime.clone();
    let meter = meter(&runtime, fixture.state_dir.path(), None);

    let first_pid = running_pid(&runtime.apply(&running).expect("start"));
    let first = round(&meter, &runtime, &vps_id);
    assert_eq!(first.len(), 1, "{first:?}");
    let run = first[0].incarnation.clone();

    // Burn, then power off from inside: no stop of the agent's ends this run.
    burn(&runtime, &vps_id, 2);
    let _ = exec(&runtime, &vps_id, &["sh", "-c", "kill -USR2 1"]);
    wait_until(
        "the init to exit by itself",
        Duration::from_secs(30),
        || !pid_running(first_pid),
    );
    // The rest of the VPS dies with its init's pid namespace; what it used counts too.
    wait_until("the run's cgroup to empty", Duration::from_secs(30), || {
        runtime.cgroup_paths(&vps_id).iter().all(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .map_or(true, |procs| procs.trim().is_empty())
        })
    });
    let host_total = host_cpu_ns(&runtime, &vps_id);
    assert!(
        host_total > first[0].cpu_usage_ns + 1_500_000_000,
        "the burn is on the host's counter: {host_total} ns"
    );

    // Started again (as the reconciler does): the exited run is closed first, and the next
    // round sends it under its own incarnation, then the new run.
    let second_pid = running_pid(&runtime.apply(&running).expect("start again"));
    let closed = runtime
        .closed_run(&vps_id)
        .expect("state")
        .expect("a closed run");
    assert_eq!(closed.incarnation, run);
    assert_eq!(closed.cpu_usage_ns, host_total);
    let next = round(&meter, &runtime, &vps_id);
    assert_eq!(next.len(), 2, "{next:?}");
    assert_eq!(next[0].incarnation, run);
    assert_eq!(next[0].cpu_usage_ns, host_total);
    assert_ne!(next[1].incarnation, run);
    assert!(next[1].sequence > next[0].sequence);

    runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid, second_pid]);
}
