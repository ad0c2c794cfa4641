//! The control plane at scale: the real `paddock-controller` binary with its real sled store
//! (every acknowledged create flushed to disk), many simulated nodes (`crate::simulator`: the
//! real agent protocol with enrolment and mutual TLS per node, no containers), and many
//! concurrent API clients creating VPSes across tenants. Measures placements per second
//! (CreateVps acknowledged per second), CreateVps latency under that load beside GetVps latency
//! on the same controller and load, and how many ApplyVps an idle fleet costs per second.
//! It runs once per store backend: sled (embedded) and etcd (a private single-member etcd
//! started for the run), and reports both placements/s side by side.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use paddock_proto::v1;
use paddock_proto::v1::tenant_service_client::TenantServiceClient;
use paddock_proto::v1::vps_service_client::VpsServiceClient;
use tonic::transport::Channel;

use crate::report::{Row, ScenarioReport};
use crate::simulator::{self, ControllerAccess, Simulator};
use crate::stats::Samples;
use crate::Options;

/// How the run is sized.
#[derive(Clone)]
struct Size {
    nodes: usize,
    /// The fleet asked for (`nodes` may be fewer: what the descriptor limit allows).
    target_nodes: usize,
    creates: usize,
    /// Concurrent API clients.
    clients: usize,
    tenants: usize,
    /// Creating stops here even if fewer than `creates` were made (full mode's time bound).
    create_budget: Duration,
    /// The GetVps baseline stops here even if fewer reads were made.
    read_budget: Duration,
    heartbeat_secs: u32,
    reconcile_secs: u32,
    /// The controller's `max_agent_connections` (0: its default).
    agent_connections: usize,
    /// After the idle window, wait this long more and measure a quiet fleet: the controller
    /// has closed its agent channels unused for a minute (`IDLE_CLOSE` in its agents.rs).
    quiet_after: Option<Duration>,
}

const PLAN: &str = "sim";
/// Descriptors kept free of simulated nodes in each process: the store's files, listeners,
/// API client connections, enrolments in flight.
const FD_RESERVE: u64 = 512;

#[path = "../../../controller/src/store/etcd_server.rs"]
mod etcd_server;

/// Which store the controller runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sled,
    Etcd,
}

impl Backend {
    /// The metric name of a row measured on this backend (sled keeps the historical names).
    fn label(self, metric: &str) -> String {
        match self {
            Backend::Sled => metric.to_owned(),
            Backend::Etcd => format!("{metric} [etcd store]"),
        }
    }
}

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let mut size = if options.quick {
        Size {
            nodes: 20,
            target_nodes: 20,
            creates: 100,
            clients: 16,
            tenants: 4,
            create_budget: Duration::from_secs(60),
            read_budget: Duration::from_secs(30),
            heartbeat_secs: 2,
            reconcile_secs: 2,
            agent_connections: 0,
            quiet_after: None,
        }
    } else {
        Size {
            nodes: 10_000,
            target_nodes: 10_000,
            creates: 100_000,
            clients: 128,
            tenants: 100,
            create_budget: Duration::from_secs(120),
            read_budget: Duration::from_secs(30),
            heartbeat_secs: 10,
            reconcile_secs: 10,
            agent_connections: 0,
            quiet_after: Some(Duration::from_secs(62)),
        }
    };
    if let Some(nodes) = options.control_plane.nodes {
        size.nodes = nodes.max(1);
        size.target_nodes = size.nodes;
    }
    if let Some(budget) = options.control_plane.budget {
        size.create_budget = budget;
    }
    // Per simulated node the bench holds its own connection to the controller (heartbeats;
    // one shared listening socket serves every node) and the controller (a child: it inherits
    // the limit) the other end. The controller's connections to the nodes cost one descriptor
    // in each process too, but it keeps at most `max_agent_connections` of them (the least
    // recently used close and dial again when needed). Fit the nodes and those connections
    // into the limit, with room for the store's files, API clients and enrolments.
    let wanted = 2 * size.nodes as u64 + FD_RESERVE;
    let limit = simulator::raise_fd_limit(4 * size.nodes as u64 + 4096)?;
    let budget = limit.saturating_sub(FD_RESERVE) as usize;
    // At least a quarter of the nodes keep their connection; fewer nodes if that is all that fits.
    let fitting = (budget * 4 / 5).max(1);
    if fitting < size.nodes {
        let why = if simulator::has_cap_sys_resource() {
            "fs.nr_open caps it".to_owned()
        } else {
            "raising the hard limit needs CAP_SYS_RESOURCE, which this process's capability \
             bounding set lacks"
                .to_owned()
        };
        report.note(format!(
            "RLIMIT_NOFILE is {limit}, {wanted} wanted ({why}): {fitting} of {} nodes fit",
            size.nodes
        ));
        size.nodes = fitting;
    }
    size.agent_connections = budget.saturating_sub(size.nodes).min(size.nodes).max(1);
    if size.agent_connections < size.nodes {
        report.note(format!(
            "RLIMIT_NOFILE is {limit}: the controller keeps at most {} connections to the {} \
             nodes open (max_agent_connections; connections picked at random close and are \
             dialled again when needed), each node keeps its own connection to the controller",
            size.agent_connections, size.nodes
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let on_sled = runtime.block_on(measure(options, &size, report, Store::Sled, Rows::All))?;
    if options.control_plane.sled_only {
        return Ok(());
    }
    let Some(etcd) = etcd_server::EtcdServer::start() else {
        bail!("etcd is not installed (scripts/deps.sh installs etcd-server): the etcd half of control-plane cannot run");
    };
    // Every heartbeat is a store write: a fleet of 10,000 nodes (1,000 writes/s) swamps one
    // etcd member on a small machine, so the side by side runs a smaller fleet on both.
    let fleet = Size {
        nodes: size.nodes.min(ETCD_NODES),
        target_nodes: size.target_nodes.min(ETCD_NODES),
        ..size.clone()
    };
    let sled_same_fleet = if fleet.nodes == size.nodes {
        on_sled
    } else {
        runtime.block_on(measure(
            options,
            &fleet,
            report,
            Store::Sled,
            Rows::PlacementsOnly,
        ))?
    };
    let on_etcd = runtime.block_on(measure(
        options,
        &fleet,
        report,
        Store::Etcd(&etcd),
        Rows::All,
    ))?;
    report.note(format!(
        "etcd store: a private single-member etcd on loopback (fsync on, the controller's \
         Txns with revision compares, a witness key per write); {} simulated nodes, same \
         clients, plan and create budget as the sled run at that fleet size it is compared with",
        fleet.nodes
    ));
    report.row(
        single("placements/s, etcd store beside sled", "1/s", on_etcd, 1).against(
            &format!("placements/s, sled store, same {} nodes", fleet.nodes),
            sled_same_fleet,
        ),
    );
    runtime.block_on(failover(options, &etcd, report, options.iterations(3, 1)))?;
    drop(etcd);
    Ok(())
}

/// Simulated nodes of the etcd run (and of the sled run it is compared with).
const ETCD_NODES: usize = 2_000;

/// Which rows a run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    /// Only its placements/s, for a side by side (in a note; the caller makes the row).
    PlacementsOnly,
}

/// Runs the scenario on one backend; returns its placements per second.
async fn measure(
    options: &Options,
    size: &Size,
    report: &mut ScenarioReport,
    store: Store<'_>,
    rows: Rows,
) -> Result<f64> {
    let backend = store.backend();
    let dir = tempfile::Builder::new()
        .prefix("paddock-bench-cp-")
        .tempdir()?;
    let controller = ControllerProcess::start(options, dir.path(), size, &store.config_lines())?;
    let access = controller.access()?;
    let admin = format!("Bearer {}", controller.admin_token);

    let setup = Instant::now();
    let simulator = Simulator::start(
        &access,
        size.nodes,
        32,
        Duration::from_secs(u64::from(size.heartbeat_secs)),
    )
    .await?;
    let setup_secs = setup.elapsed().as_secs_f64();
    if rows == Rows::All {
        report.note(format!(
        "simulated nodes: {} (each enrolled with the join token, own key and certificate, \
         NodeAgent over mutual TLS on its own 127.64.x.y address, heartbeat every {} s); they \
         create no containers. Controller: the real binary (paddock-bench's binary dir), {backend:?} store, \
         durability on (each create flushed, group commit), reconcile tick {} s. Enrol + \
         register of all nodes took {setup_secs:.1} s",
        simulator.nodes, size.heartbeat_secs, size.reconcile_secs
    ));
    }

    let channel = simulator::controller_channel(&access).await?;
    setup_tenants(&channel, &admin, size).await?;

    // Placements: `clients` concurrent callers, each VPS in one of `tenants` tenants.
    let channels = connect_many(&access, 8).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + size.create_budget;
    let cpu_before_creates = controller.cpu_secs()?;
    let bench_cpu_before_creates = process_cpu_secs("self")?;
    let lists_before_creates = simulator.counters.lists.load(Ordering::Relaxed);
    let started = Instant::now();
    let creates = run_clients(size.clients, &channels, |client, _| {
        let next = next.clone();
        let admin = admin.clone();
        let total = size.creates;
        let tenants = size.tenants;
        async move {
            let mut samples = Samples::new();
            let mut failed = 0usize;
            let mut first_error = None;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total || Instant::now() >= deadline {
                    break;
                }
                let request = authorized(
                    &admin,
                    v1::CreateVpsRequest {
                        tenant: format!("t{}", index % tenants),
                        name: format!("v{index}"),
                        plan: PLAN.to_owned(),
                        template: String::new(),
                        overrides: None,
                        start: true,
                        node_selector: Default::default(),
                    },
                )?;
                let mut client = client.clone();
                let began = Instant::now();
                let result = client.create_vps(request).await;
                samples.push_ms(began.elapsed());
                if let Err(status) = result {
                    failed += 1;
                    first_error.get_or_insert(status);
                }
            }
            Ok((samples, failed, first_error))
        }
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut create = Samples::new();
    let mut failed = 0;
    let mut first_error = None;
    for (samples, f, error) in creates {
        for value in samples.values() {
            create.push(*value);
        }
        failed += f;
        if first_error.is_none() {
            first_error = error;
        }
    }
    let attempted = create.len();
    let made = attempted - failed;
    ensure!(
        made > 0,
        "no create succeeded; first error: {:?}",
        first_error.map(|status| status.message().to_owned())
    );
    if failed > 0 {
        report.note(format!(
            "{failed} of {attempted} creates failed; first error: {:?}",
            first_error.map(|status| status.message().to_owned())
        ));
    }
    if made < size.creates {
        report.note(format!(
            "{made} of {} creates made within the {} s budget",
            size.creates,
            size.create_budget.as_secs()
        ));
    }
    let placements_per_sec = made as f64 / elapsed;
    if rows == Rows::PlacementsOnly {
        report.note(format!(
            "{backend:?} store with the etcd run's fleet: {made} creates acknowledged in \
             {elapsed:.1} s on {} nodes (enrolled in {setup_secs:.1} s): \
             {placements_per_sec:.0} placements/s",
            simulator.nodes
        ));
        return Ok(placements_per_sec);
    }
    let cpu_before_reads = controller.cpu_secs()?;
    let create_cpu_ms = (cpu_before_reads - cpu_before_creates) * 1000.0 / made as f64;
    let bench_cpu_ms =
        (process_cpu_secs("self")? - bench_cpu_before_creates) * 1000.0 / made as f64;
    let create_lists = simulator.counters.lists.load(Ordering::Relaxed) - lists_before_creates;

    // The baseline: GetVps of the VPSes just made, same clients, same controller and fleet.
    let reads = made.min(size.creates.min(20_000));
    let next = Arc::new(AtomicUsize::new(0));
    let read_deadline = Instant::now() + size.read_budget;
    let reads_started = Instant::now();
    let gets = run_clients(size.clients, &channels, |client, _| {
        let next = next.clone();
        let admin = admin.clone();
        let tenants = size.tenants;
        async move {
            let mut samples = Samples::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= reads || Instant::now() >= read_deadline {
                    break;
                }
                // Spread over everything created (a failed create's name is NotFound: still an answer).
                let target = (index * 7919) % attempted.max(1);
                let request = authorized(
                    &admin,
                    v1::VpsRef {
                        tenant: format!("t{}", target % tenants),
                        name: format!("v{target}"),
                    },
                )?;
                let mut client = client.clone();
                let began = Instant::now();
                let _ = client.get_vps(request).await;
                samples.push_ms(began.elapsed());
            }
            Ok((samples, 0, None))
        }
    })
    .await?;
    let mut get = Samples::new();
    for (samples, _, _) in gets {
        for value in samples.values() {
            get.push(*value);
        }
    }
    let gets_per_sec = get.len() as f64 / reads_started.elapsed().as_secs_f64();
    let read_cpu_ms =
        (controller.cpu_secs()? - cpu_before_reads) * 1000.0 / get.len().max(1) as f64;

    // Every VPS applied once, then an idle window of two reconcile ticks.
    let settle = Instant::now() + Duration::from_secs(120);
    while simulator.counters.applies.load(Ordering::Relaxed) < made as u64
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = simulator.counters.applies.load(Ordering::Relaxed);
    let window = Duration::from_secs(u64::from(size.reconcile_secs) * 2 + 1);
    let lists_before = simulator.counters.lists.load(Ordering::Relaxed);
    let cpu_before_idle = controller.cpu_secs()?;
    tokio::time::sleep(window).await;
    let idle_cores = (controller.cpu_secs()? - cpu_before_idle) / window.as_secs_f64();
    let idle_applies = simulator.counters.applies.load(Ordering::Relaxed) - applied;
    let idle_lists = simulator.counters.lists.load(Ordering::Relaxed) - lists_before;
    // Metering: each heartbeat carries a usage sample per VPS, as an agent's does every 10 s
    // (its default `usage_interval_secs`). Each VPS's first sample only sets its counters'
    // start (one heartbeat interval for those), then a window like the idle one.
    let beat = Duration::from_secs(u64::from(size.heartbeat_secs));
    simulator.metering.store(true, Ordering::Relaxed);
    tokio::time::sleep(beat + Duration::from_secs(1)).await;
    let samples_before = simulator.counters.samples.load(Ordering::Relaxed);
    let beats_before = simulator.counters.heartbeats.load(Ordering::Relaxed);
    let cpu_before_metering = controller.cpu_secs()?;
    tokio::time::sleep(window).await;
    let metering_cores = (controller.cpu_secs()? - cpu_before_metering) / window.as_secs_f64();
    let samples = simulator.counters.samples.load(Ordering::Relaxed) - samples_before;
    let metered_beats = simulator.counters.heartbeats.load(Ordering::Relaxed) - beats_before;
    simulator.metering.store(false, Ordering::Relaxed);
    let sample_cpu_ms = (metering_cores - idle_cores).max(0.0) * window.as_secs_f64() * 1000.0
        / samples.max(1) as f64;
    // The idle window's ListVps (a node's one listing after its creates) used the channels;
    // a minute later the controller has closed them.
    let quiet = match size.quiet_after {
        Some(wait) => {
            tokio::time::sleep(wait).await;
            let before = controller.cpu_secs()?;
            tokio::time::sleep(window).await;
            Some((controller.cpu_secs()? - before) / window.as_secs_f64())
        }
        None => None,
    };
    report.note(format!(
        "{made} VPSes on {} nodes; {attempted} creates by {} concurrent clients (8 HTTP/2 \
         connections) over {} tenants in {elapsed:.1} s, plan without IPv4 addresses (no \
         pools); GetVps baseline: {} reads by the same clients after the creates. Idle window \
         {} s: {idle_applies} ApplyVps and {idle_lists} ListVps; the baseline is what \
         re-applying every VPS every tick (the reconciler before issue 12) would send",
        simulator.nodes,
        size.clients,
        size.tenants,
        get.len(),
        window.as_secs()
    ));

    report.row(
        single(
            &backend.label("placements/s (CreateVps acknowledged, durable)"),
            "1/s",
            placements_per_sec,
            made,
        )
        .against("Nomad C1M anchor", 3750.0),
    );
    report.row(
        single(
            &backend.label("placements/s, vs reads"),
            "1/s",
            placements_per_sec,
            made,
        )
        .against("GetVps/s, same clients and fleet", gets_per_sec),
    );
    report.note(format!(
        "{}: a GetVps is one API round trip that writes nothing and calls no agent, made by \
         the same clients on the same connections right after the creates: what API calls \
         alone reach on this machine ({gets_per_sec:.0}/s). A create is that round trip plus \
         a durable write, an ApplyVps round trip to its node and the write of its result",
        backend.label("reads")
    ));
    report.row(
        Row::median(
            &backend.label("CreateVps latency under load"),
            "ms",
            &create,
        )?
        .against_median("GetVps latency, same load", &get)?,
    );
    report.row(
        single(
            &backend.label("nodes reached"),
            "nodes",
            simulator.nodes as f64,
            simulator.nodes,
        )
        .against("target", size.target_nodes as f64),
    );
    report.row(
        single(
            &backend.label("idle ApplyVps/s after convergence"),
            "1/s",
            idle_applies as f64 / window.as_secs_f64(),
            1,
        )
        .against(
            "re-apply every VPS every tick",
            made as f64 / f64::from(size.reconcile_secs),
        ),
    );
    report.row(
        single(
            &backend.label("idle ListVps/s after convergence"),
            "1/s",
            idle_lists as f64 / window.as_secs_f64(),
            1,
        )
        .against(
            "one ListVps per node per tick",
            simulator.nodes as f64 / f64::from(size.reconcile_secs),
        ),
    );
    // CPU time of the controller process: what a create costs it, whatever else the shared
    // machine runs (its wall-clock figures above move with that load).
    report.row(
        single(
            &backend.label("controller CPU per acknowledged create"),
            "ms",
            create_cpu_ms,
            made,
        )
        .against("controller CPU per GetVps, same fleet", read_cpu_ms),
    );
    report.row(
        single(
            &backend.label("bench CPU per acknowledged create (API clients + simulated nodes)"),
            "ms",
            bench_cpu_ms,
            made,
        )
        .against("controller CPU per acknowledged create", create_cpu_ms),
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    report.note(format!(
        "{}: the bench (its API clients and the simulated nodes answering ApplyVps and sending \
         heartbeats, one process) spent {bench_cpu_ms:.3} ms of CPU per create on the same \
         {cores:.0} CPUs as the controller: even a controller that cost nothing would place at \
         most {:.0}/s here ({cores:.0} CPUs / the bench's CPU per create), and with both at \
         their measured costs at most {:.0}/s",
        backend.label("machine"),
        cores * 1000.0 / bench_cpu_ms,
        cores * 1000.0 / (bench_cpu_ms + create_cpu_ms),
    ));
    report.row(
        single(
            &backend.label("controller CPU while idle"),
            "cores",
            idle_cores,
            1,
        )
        .against("one core", 1.0),
    );
    report.row(
        single(
            &backend.label("controller CPU while idle, usage samples on"),
            "cores",
            metering_cores,
            1,
        )
        .against("controller CPU while idle", idle_cores),
    );
    report.row(
        single(
            &backend.label("controller CPU per usage sample"),
            "ms",
            sample_cpu_ms,
            samples as usize,
        )
        .against("controller CPU per GetVps, same fleet", read_cpu_ms),
    );
    report.note(format!(
        "{}: usage samples on = a window of {} s in which every heartbeat carried a usage \
         sample for each VPS of its node (cumulative counters, as an agent sends every \
         `usage_interval_secs`, default 10 s), after one heartbeat interval for each VPS's \
         first sample: {samples} samples in {metered_beats} heartbeats the controller took \
         ({:.0}/s); CPU per sample = the window's CPU above the idle window's, per sample",
        backend.label("metering"),
        window.as_secs(),
        samples as f64 / window.as_secs_f64(),
    ));
    if let Some(quiet_cores) = quiet {
        report.row(
            single(
                &backend.label("controller CPU once quiet (idle agent channels closed)"),
                "cores",
                quiet_cores,
                1,
            )
            .against("controller CPU while idle", idle_cores),
        );
        report.note(format!(
            "{}: once quiet = a second idle window of {} s, starting {} s after the first \
             ended, when the controller has closed its agent channels unused for a minute \
             (an open channel pings its agent every 5 s, idle or not); the simulated nodes \
             still heartbeat",
            backend.label("quiet"),
            window.as_secs(),
            size.quiet_after.map_or(0, |wait| wait.as_secs()),
        ));
    }
    report.note(format!(
        "{}: controller CPU (utime + stime of its process): {create_cpu_ms:.3} ms per create over \
         the create phase, {read_cpu_ms:.3} ms per GetVps over the read phase, both including \
         the fleet's heartbeats and reconcile passes meanwhile (ListVps during the creates: \
         {create_lists}, {:.2} per create); {idle_cores:.3} cores over the idle window",
        backend.label("store"),
        create_lists as f64 / made as f64
    ));
    drop(simulator);
    drop(controller);
    Ok(placements_per_sec)
}

/// A row of one measured value.
fn single(metric: &str, unit: &str, value: f64, samples: usize) -> Row {
    Row {
        metric: metric.to_owned(),
        unit: unit.to_owned(),
        value,
        p95: None,
        p99: None,
        samples,
        baseline: None,
    }
}

fn authorized<T>(bearer: &str, message: T) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse()?);
    request.set_timeout(Duration::from_secs(120));
    Ok(request)
}

async fn connect_many(access: &ControllerAccess, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(simulator::controller_channel(access).await?);
    }
    Ok(channels)
}

type ClientOutcome = (Samples, usize, Option<tonic::Status>);

/// Runs `clients` concurrent callers, each on one of `channels`, and collects what they return.
async fn run_clients<F, Fut>(
    clients: usize,
    channels: &[Channel],
    make: F,
) -> Result<Vec<ClientOutcome>>
where
    F: Fn(VpsServiceClient<Channel>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<ClientOutcome>> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let client = VpsServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(make(client, i))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(clients);
    for task in tasks {
        outcomes.push(task.await.context("client task")??);
    }
    Ok(outcomes)
}

async fn setup_tenants(channel: &Channel, admin: &str, size: &Size) -> Result<()> {
    use paddock_proto::v1::plan_service_client::PlanServiceClient;
    PlanServiceClient::new(channel.clone())
        .create_plan(authorized(
            admin,
            v1::CreatePlanRequest {
                plan: Some(v1::Plan {
                    name: PLAN.to_owned(),
                    resources: Some(v1::Resources {
                        vcpus: 0.25,
                        cpu_weight: 100,
                        memory_bytes: 256 << 20,
                        disk_bytes: 1 << 30,
                        pids_max: 128,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        )?)
        .await
        .context("creating the plan")?;
    let mut tenants = TenantServiceClient::new(channel.clone());
    for t in 0..size.tenants {
        tenants
            .create_tenant(authorized(
                admin,
                v1::CreateTenantRequest {
                    name: format!("t{t}"),
                    quota: Some(v1::Quota {
                        max_vps: 1_000_000,
                        vcpus: 1e7,
                        memory_bytes: u64::MAX / 4,
                        disk_bytes: u64::MAX / 4,
                        ipv4_count: 0,
                    }),
                },
            )?)
            .await
            .with_context(|| format!("creating tenant t{t}"))?;
    }
    Ok(())
}

/// The store of one run: sled in the controller's data dir, or a running etcd.
#[derive(Clone, Copy)]
enum Store<'a> {
    Sled,
    Etcd(&'a etcd_server::EtcdServer),
}

impl Store<'_> {
    fn backend(self) -> Backend {
        match self {
            Store::Sled => Backend::Sled,
            Store::Etcd(_) => Backend::Etcd,
        }
    }

    /// What controller.toml says about the store.
    fn config_lines(self) -> String {
        match self {
            Store::Sled => String::new(),
            Store::Etcd(etcd) => format!(
                "store = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"/paddock-bench/\"\n",
                etcd.endpoint
            ),
        }
    }
}

/// CPU seconds (user + system) process `pid` (or `self`) has used so far, all its threads.
fn process_cpu_secs(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at `state`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> Result<f64> {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .with_context(|| format!("parsing /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 counted from `state`.
    // SAFETY: sysconf reads a constant of the system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / per_sec.max(1.0))
}

/// The real controller binary, killed and reaped on drop.
struct ControllerProcess {
    child: Child,
    port: u16,
    data_dir: std::path::PathBuf,
    admin_token: String,
}

impl ControllerProcess {
    /// CPU seconds (user + system) the controller process has used so far.
    fn cpu_secs(&self) -> Result<f64> {
        process_cpu_secs(&self.child.id().to_string())
    }

    fn start(options: &Options, dir: &Path, size: &Size, store_lines: &str) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data_dir = dir.join("controller");
        let config = dir.join("controller.toml");
        // The controller's default unless the descriptor limit asks for fewer connections.
        let connections = if size.agent_connections > 0 && size.agent_connections < size.nodes {
            format!("max_agent_connections = {}\n", size.agent_connections)
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"off\"\ndata_dir = \"{}\"\n\
                 heartbeat_interval_secs = {}\nnode_offline_after_secs = {}\n\
                 reconcile_interval_secs = {}\n{connections}{store_lines}",
                data_dir.display(),
                size.heartbeat_secs,
                size.heartbeat_secs * 12,
                size.reconcile_secs,
            ),
        )?;
        let binary = options.bin_dir.join("paddock-controller");
        let init = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .arg("init")
            .output()
            .with_context(|| format!("running {} init", binary.display()))?;
        if !init.status.success() {
            bail!("controller init: {}", String::from_utf8_lossy(&init.stderr));
        }
        let admin_token = String::from_utf8(init.stdout)?.trim().to_owned();
        let log = std::fs::File::create(dir.join("controller.log"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the controller")?;
        let process = Self {
            child,
            port,
            data_dir,
            admin_token,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "the controller did not listen within 30 s: {}",
                    std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    fn access(&self) -> Result<ControllerAccess> {
        Ok(ControllerAccess {
            url: format!("https://127.0.0.1:{}", self.port),
            ca_pem: std::fs::read_to_string(self.data_dir.join("tls/ca.crt"))
                .context("reading the controller CA")?,
            join_token: std::fs::read_to_string(self.data_dir.join("join-token"))
                .context("reading the join token")?
                .trim()
                .to_owned(),
        })
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lease of the failover measurement: the controller's default `leader_lease_secs`.
const LEASE_SECS: u64 = 4;

/// How long one failover step may take before the measurement gives up.
const FAILOVER_LIMIT: Duration = Duration::from_secs(90);

/// One of the controllers of the failover measurement: its config and, while it runs, its
/// process (killed and reaped on drop).
struct Replica {
    config: std::path::PathBuf,
    port: u16,
    metrics_port: u16,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(&mut self, options: &Options) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(options.bin_dir.join("paddock-controller"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a controller")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "a controller did not listen within 30 s: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn leads(&self) -> bool {
        self.child.is_some()
            && paddock_tests::scrape_metrics(self.metrics_port)
                .is_ok_and(|text| text.contains("\npaddock_leader 1\n"))
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies a directory tree, keeping file modes (the controller's keys are 0600).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The index of the one controller that says it leads, waiting up to `limit`.
async fn leader_of(replicas: &[Replica], limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let leading: Vec<usize> = (0..replicas.len())
            .filter(|index| replicas[*index].leads())
            .collect();
        if let [one] = leading[..] {
            return Ok(one);
        }
        ensure!(
            Instant::now() < deadline,
            "no single leader among the controllers within {limit:?} (leading: {leading:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Failover: three controllers on the etcd, a few simulated nodes; `kills` times the leader
/// is killed (-9) and the scenario measures from the kill until (a) a survivor leads, (b) a
/// create through a survivor is acknowledged (the client retrying until it is), (c) the node
/// got that VPS (ApplyVps from the new leader's reconcile). The killed controller is started
/// again (a follower now) before the next kill.
async fn failover(
    options: &Options,
    etcd: &etcd_server::EtcdServer,
    report: &mut ScenarioReport,
    kills: usize,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("paddock-bench-failover-")
        .tempdir()?;
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let mut replicas = Vec::new();
    for index in 0..3 {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let data_dir = dir.path().join(format!("c{index}"));
        let config = dir.path().join(format!("controller-{index}.toml"));
        // Nodes stay online through the measurement (their heartbeats go to the first
        // controller, which may be the one killed): what is measured is the controllers.
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 data_dir = \"{}\"\nheartbeat_interval_secs = 2\nnode_offline_after_secs = 600\n\
                 reconcile_interval_secs = 10\nstore = \"etcd\"\netcd_endpoints = [\"{}\"]\n\
                 etcd_prefix = \"/paddock-failover/\"\nleader_lease_secs = {LEASE_SECS}\n",
                data_dir.display(),
                etcd.endpoint
            ),
        )?;
        replicas.push(Replica {
            config,
            port,
            metrics_port,
            log: dir.path().join(format!("controller-{index}.log")),
            child: None,
        });
    }
    let binary = options.bin_dir.join("paddock-controller");
    let init = Command::new(&binary)
        .arg("--config")
        .arg(&replicas[0].config)
        .arg("init")
        .output()
        .with_context(|| format!("running {} init", binary.display()))?;
    if !init.status.success() {
        bail!("controller init: {}", String::from_utf8_lossy(&init.stderr));
    }
    let admin = format!("Bearer {}", String::from_utf8(init.stdout)?.trim());
    // One installation: the others get a copy of the first one's CA, certificates and join
    // token; the state is in the shared etcd prefix.
    for index in 1..3 {
        copy_dir(
            &dir.path().join("c0"),
            &dir.path().join(format!("c{index}")),
        )?;
    }
    for replica in &mut replicas {
        replica.spawn(options)?;
    }
    let data = dir.path().join("c0");
    let access = |replica: &Replica| -> Result<ControllerAccess> {
        Ok(ControllerAccess {
            url: replica.url(),
            ca_pem: std::fs::read_to_string(data.join("tls/ca.crt"))?,
            join_token: std::fs::read_to_string(data.join("join-token"))?
                .trim()
                .to_owned(),
        })
    };
    let simulator = Simulator::start(&access(&replicas[0])?, 4, 4, Duration::from_secs(2)).await?;
    let tenants = Size {
        nodes: 4,
        target_nodes: 4,
        creates: 0,
        clients: 1,
        tenants: 1,
        create_budget: Duration::ZERO,
        read_budget: Duration::ZERO,
        heartbeat_secs: 2,
        reconcile_secs: 10,
        agent_connections: 0,
        quiet_after: None,
    };
    setup_tenants(
        &simulator::controller_channel(&access(&replicas[0])?).await?,
        &admin,
        &tenants,
    )
    .await?;

    let (mut led, mut acknowledged, mut reconciled) =
        (Samples::new(), Samples::new(), Samples::new());
    for kill in 0..kills {
        let old = leader_of(&replicas, FAILOVER_LIMIT).await?;
        let survivor = (old + 1) % replicas.len();
        let channel = simulator::controller_channel(&access(&replicas[survivor])?).await?;
        let applies_before = simulator.counters.applies.load(Ordering::Relaxed);
        let survivors: Vec<(u16, usize)> = (0..replicas.len())
            .filter(|index| *index != old)
            .map(|index| (replicas[index].metrics_port, index))
            .collect();
        replicas[old].kill();
        let killed = Instant::now();
        // (a) polled beside (b) and (c), on a thread of its own (blocking scrapes).
        let led_at = tokio::task::spawn_blocking(move || {
            while killed.elapsed() < FAILOVER_LIMIT {
                let leads = |(port, _): &(u16, usize)| {
                    paddock_tests::scrape_metrics(*port)
                        .is_ok_and(|text| text.contains("\npaddock_leader 1\n"))
                };
                if survivors.iter().any(leads) {
                    return Some(killed.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        let mut client = VpsServiceClient::new(channel);
        let acked = loop {
            let request = authorized(
                &admin,
                v1::CreateVpsRequest {
                    tenant: "t0".to_owned(),
                    name: format!("after-kill-{kill}"),
                    plan: PLAN.to_owned(),
                    start: true,
                    ..Default::default()
                },
            )?;
            match client.create_vps(request).await {
                Ok(_) => break killed.elapsed(),
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    break killed.elapsed()
                }
                Err(status) => {
                    ensure!(
                        killed.elapsed() < FAILOVER_LIMIT,
                        "no create acknowledged within {FAILOVER_LIMIT:?} of the kill: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        while simulator.counters.applies.load(Ordering::Relaxed) <= applies_before {
            ensure!(
                killed.elapsed() < FAILOVER_LIMIT,
                "the VPS created after the kill reached no node within {FAILOVER_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let applied = killed.elapsed();
        let led_after = led_at
            .await
            .context("leader poll")?
            .with_context(|| format!("no survivor led within {FAILOVER_LIMIT:?} of the kill"))?;
        led.push_ms(led_after);
        acknowledged.push_ms(acked);
        reconciled.push_ms(applied);
        // Back to three controllers for the next kill.
        replicas[old].spawn(options)?;
    }
    let lease_ms = Duration::from_secs(LEASE_SECS).as_secs_f64() * 1000.0;
    report.row(
        Row::median(
            "failover [etcd store]: kill -9 of the leader until a survivor leads",
            "ms",
            &led,
        )?
        .against("leader_lease_secs", lease_ms),
    );
    report.row(
        Row::median(
            "failover [etcd store]: kill -9 of the leader until a create through a survivor is acknowledged",
            "ms",
            &acknowledged,
        )?
        .against("leader_lease_secs", lease_ms),
    );
    report.row(
        Row::median(
            "failover [etcd store]: kill -9 of the leader until the new leader applied that VPS on its node",
            "ms",
            &reconciled,
        )?
        .against("leader_lease_secs", lease_ms),
    );
    report.note(format!(
        "failover: 3 controllers (the real binary) on the same private etcd member, \
         leader_lease_secs = {LEASE_SECS} (the default), 4 simulated nodes; {kills} kill(s) -9 \
         of the leader, each time started again before the next. Leadership from each \
         survivor's paddock_leader metric polled every 10 ms; the create retried every 10 ms \
         through one survivor from the moment of the kill; applied = the simulated node \
         received the ApplyVps"
    ));
    drop(simulator);
    Ok(())
}
