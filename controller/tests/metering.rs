//! Usage metering over the real API: a node heartbeats usage samples (with a
//! repeat, a VPS restart and a stale delivery), and billing reads them back
//! per hour, per day, page by page and as a tenant summary.

mod common;

use common::{start, start_with, with_token};
use paddock_proto::v1;
use paddock_proto::v1::billing_service_client::BillingServiceClient;
use tonic::Code;

/// 2026-01-01T00:00:00Z.
const DAY0: i64 = 1_767_225_600;

fn sample(
    vps_id: &str,
    incarnation: &str,
    sequence: u64,
    at: i64,
    cpu_secs: u64,
) -> v1::UsageSample {
    v1::UsageSample {
        vps_id: vps_id.into(),
        incarnation: incarnation.into(),
        sequence,
        sampled_at_unix_ms: at * 1000,
        interval_ms: 10_000,
        cpu_usage_ns: cpu_secs * 1_000_000_000,
        memory_bytes: 1 << 20,
        memory_peak_bytes: 1 << 21,
        io_read_bytes: cpu_secs * 10,
        io_write_bytes: cpu_secs * 20,
        net_rx_bytes: cpu_secs * 100,
        net_tx_bytes: cpu_secs * 200,
        disk_used_bytes: 1 << 30,
        ..Default::default()
    }
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_listed_paginated_and_summed_without_double_counting() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let other = api.tenant("other", 10).await;
    let billing = api.token(v1::Role::Billing, "").await;
    let web = api.create_vps(&acme, "", "web").await.expect("create web");
    let db = api.create_vps(&acme, "", "db").await.expect("create db");
    let node = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-a").await);

    // web: 3 hours on day 0 and one on day 1; a repeat, a stale sample and a
    // restart (new incarnation) along the way. db: one hour.
    let beats: Vec<Vec<v1::UsageSample>> = vec![
        vec![
            sample(&web.id, "i1", 1, DAY0 + 10, 5),
            sample(&db.id, "d1", 1, DAY0 + 10, 7),
        ],
        vec![sample(&web.id, "i1", 2, DAY0 + 3600 + 10, 15)],
        vec![sample(&web.id, "i1", 2, DAY0 + 3600 + 10, 15)],
        vec![sample(&web.id, "i1", 1, DAY0 + 10, 5)],
        vec![sample(&web.id, "i2", 3, DAY0 + 7200 + 10, 4)],
        vec![sample(&web.id, "i2", 4, DAY0 + 86_400 + 10, 10)],
    ];
    for usage in beats {
        node.clone()
            .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
                node_name: "node-a".into(),
                usage,
                ..Default::default()
            }))
            .await
            .expect("heartbeat");
    }

    let mut client = BillingServiceClient::new(api.channel.clone());
    let list =
        |tenant: &str, vps: &str, granularity: v1::Granularity, page_size: u32, token: &str| {
            v1::ListUsageRequest {
                tenant: tenant.into(),
                vps: vps.into(),
                from: ts(DAY0),
                to: ts(DAY0 + 2 * 86_400),
                granularity: granularity.into(),
                page: Some(v1::PageRequest {
                    page_size,
                    page_token: token.into(),
                }),
            }
        };

    // Hourly, paged two at a time: web 0h, db 0h, web 1h, web 2h, web 24h.
    let mut hours = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_usage(with_token(
                list("acme", "", v1::Granularity::Hour, 2, &token),
                &billing,
            ))
            .await
            .expect("list usage")
            .into_inner();
        pages += 1;
        assert!(page.records.len() <= 2);
        hours.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(hours.len(), 5, "{hours:#?}");
    let web_cpu: Vec<f64> = hours
        .iter()
        .filter(|r| r.vps_id == web.id)
        .map(|r| r.cpu_seconds)
        .collect();
    // 5, then 15-5, repeat and stale ignored, restart counts 4 from zero, then 10-4.
    assert_eq!(web_cpu, vec![5.0, 10.0, 4.0, 6.0]);
    // Rows sort by hour, then VPS id.
    assert!(hours
        .windows(2)
        .all(|w| (w[0].period_start.map(|t| t.seconds), &w[0].vps_id)
            < (w[1].period_start.map(|t| t.seconds), &w[1].vps_id)));
    let first = hours
        .iter()
        .find(|r| r.vps_id == web.id)
        .expect("web's first hour");
    assert_eq!(first.vps, "web");
    assert_eq!(first.plan, "nano");
    assert_eq!(first.tenant, "acme");
    assert_eq!(first.period_start, ts(DAY0));
    assert_eq!(first.period_end, ts(DAY0 + 3600));
    assert_eq!(first.net_tx_bytes, 1000);
    assert_eq!(first.memory_peak_bytes, 1 << 21);

    // Daily for one VPS by name: day 0 = 5 + 10 + 4, day 1 = 6.
    let days = client
        .list_usage(with_token(
            list("acme", "web", v1::Granularity::Day, 0, ""),
            &billing,
        ))
        .await
        .expect("daily")
        .into_inner()
        .records;
    assert_eq!(days.len(), 2);
    assert_eq!(days[0].cpu_seconds, 19.0);
    assert_eq!(days[0].period_end, ts(DAY0 + 86_400));
    assert_eq!(days[1].cpu_seconds, 6.0);

    // Summary of day 0 for the tenant, as the tenant itself.
    let summary = client
        .tenant_usage_summary(with_token(
            v1::TenantUsageSummaryRequest {
                tenant: String::new(),
                from: ts(DAY0),
                to: ts(DAY0 + 86_400),
            },
            &acme,
        ))
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.tenant, "acme");
    assert_eq!(summary.per_vps.len(), 2);
    let total = summary.total.clone().expect("total");
    assert_eq!(total.cpu_seconds, 19.0 + 7.0);
    assert_eq!(total.io_write_bytes, (19 + 7) * 20);

    // Another tenant sees nothing of acme's, and cannot name it.
    let denied = client
        .list_usage(with_token(
            list("acme", "", v1::Granularity::Hour, 0, ""),
            &other,
        ))
        .await
        .expect_err("other tenant");
    assert_eq!(denied.code(), Code::NotFound);
    let own = client
        .list_usage(with_token(
            list("", "", v1::Granularity::Hour, 0, ""),
            &other,
        ))
        .await
        .expect("own usage")
        .into_inner();
    assert!(own.records.is_empty());

    // Garbage token and inverted range are InvalidArgument.
    let bad = client
        .list_usage(with_token(
            list("acme", "", v1::Granularity::Hour, 0, "zz"),
            &billing,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut inverted = list("acme", "", v1::Granularity::Hour, 0, "");
    inverted.to = ts(DAY0 - 1);
    let bad = client
        .list_usage(with_token(inverted, &billing))
        .await
        .expect_err("inverted range");
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Billing must name the tenant of a summary.
    let bad = client
        .tenant_usage_summary(with_token(
            v1::TenantUsageSummaryRequest::default(),
            &billing,
        ))
        .await
        .expect_err("summary without tenant");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_allowance_raises_80_and_100_percent_events_once() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let billing = api.token(v1::Role::Billing, "").await;
    let mut plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone());
    let nano = plans
        .list_plans(with_token(v1::Empty {}, &acme))
        .await
        .expect("plans")
        .into_inner()
        .plans
        .into_iter()
        .find(|p| p.name == "nano")
        .expect("nano plan");
    plans
        .create_plan(with_token(
            v1::CreatePlanRequest {
                plan: Some(v1::Plan {
                    name: "metered".into(),
                    resources: nano.resources,
                    monthly_transfer_bytes: 10_000,
                    ..Default::default()
                }),
            },
            &api.admin,
        ))
        .await
        .expect("create plan");
    let vps = api
        .vps()
        .create_vps(with_token(
            v1::CreateVpsRequest {
                name: "m".into(),
                plan: "metered".into(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .expect("create")
        .into_inner();
    let node = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-a").await);
    let now = chrono::Utc::now().timestamp();
    // net rx + tx = 300 × cpu_secs: 27 → 8100 (80%), 40 → 12000 (100%), then more, and a repeat.
    for (sequence, cpu_secs) in [(1, 10), (2, 27), (2, 27), (3, 40), (4, 50)] {
        node.clone()
            .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
                node_name: "node-a".into(),
                usage: vec![sample(&vps.id, "i1", sequence, now, cpu_secs)],
                ..Default::default()
            }))
            .await
            .expect("heartbeat");
    }
    let mut stream = BillingServiceClient::new(api.channel.clone())
        .watch_events(with_token(
            v1::WatchEventsRequest {
                after_cursor: 0,
                tenant: "acme".into(),
            },
            &billing,
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut transfer = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await
    {
        if matches!(
            event.kind(),
            v1::EventKind::Transfer80Percent | v1::EventKind::Transfer100Percent
        ) {
            assert_eq!(event.vps_id, vps.id);
            assert_eq!(event.plan, "metered");
            transfer.push(event.kind());
        }
    }
    assert_eq!(
        transfer,
        vec![
            v1::EventKind::Transfer80Percent,
            v1::EventKind::Transfer100Percent
        ]
    );
}

async fn create_plan(
    api: &common::Api,
    name: &str,
    allowance: u64,
    overage: v1::TransferOverage,
    rate: u64,
) -> Result<v1::Plan, tonic::Status> {
    let mut plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone());
    plans
        .create_plan(with_token(
            v1::CreatePlanRequest {
                plan: Some(v1::Plan {
                    name: name.into(),
                    resources: Some(v1::Resources {
                        vcpus: 1.0,
                        memory_bytes: 256 << 20,
                        disk_bytes: 1 << 30,
                        net_ingress_bits_per_sec: 50_000_000,
                        ipv4_count: 1,
                        ..Default::default()
                    }),
                    monthly_transfer_bytes: allowance,
                    transfer_overage: overage.into(),
                    overage_rate_bits_per_sec: rate,
                    max_snapshots: 0,
                }),
            },
            &api.admin,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Collects the events of `tenant` after `after` until none arrives for 2 s.
async fn events_after(api: &common::Api, token: &str, after: u64) -> Vec<v1::Event> {
    let mut stream = BillingServiceClient::new(api.channel.clone())
        .watch_events(with_token(
            v1::WatchEventsRequest {
                after_cursor: after,
                tenant: "acme".into(),
            },
            token,
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await
    {
        events.push(event);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_allowance_throttles_or_suspends_until_lifted_or_the_month_ends() {
    // Limits are swept when a month begins and with every full resync: here each tick is one.
    let api = start_with(|config| {
        config.full_resync_interval_secs = config.reconcile_interval_secs;
    })
    .await;
    let acme = api.tenant("acme", 10).await;
    let billing = api.token(v1::Role::Billing, "").await;

    // Inconsistent overage settings are refused.
    for (allowance, overage, rate) in [
        (0, v1::TransferOverage::Suspend, 0),
        (10_000, v1::TransferOverage::Throttle, 0),
        (10_000, v1::TransferOverage::Suspend, 1_000_000),
    ] {
        let refused = create_plan(&api, "bad", allowance, overage, rate)
            .await
            .expect_err("inconsistent overage");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let capped = create_plan(
        &api,
        "capped",
        10_000,
        v1::TransferOverage::Throttle,
        1_000_000,
    )
    .await
    .expect("throttling plan");
    assert_eq!(capped.transfer_overage(), v1::TransferOverage::Throttle);
    assert_eq!(capped.overage_rate_bits_per_sec, 1_000_000);
    create_plan(&api, "strict", 10_000, v1::TransferOverage::Suspend, 0)
        .await
        .expect("suspending plan");

    let create = |name: &'static str, plan: &'static str| {
        let mut vps = api.vps();
        let acme = acme.clone();
        async move {
            vps.create_vps(with_token(
                v1::CreateVpsRequest {
                    name: name.into(),
                    plan: plan.into(),
                    start: true,
                    ..Default::default()
                },
                &acme,
            ))
            .await
            .expect("create")
            .into_inner()
        }
    };
    let throttled = create("t", "capped").await;
    let suspended = create("s", "strict").await;
    let start_cursor = events_after(&api, &billing, 0)
        .await
        .last()
        .map_or(0, |e| e.cursor);

    // net rx + tx = 300 × cpu_secs: 10 → 3000 (30%), 40 → 12000 (120%).
    let node = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-a").await);
    let now = chrono::Utc::now().timestamp();
    for (sequence, cpu_secs) in [(1, 10), (2, 40)] {
        node.clone()
            .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
                node_name: "node-a".into(),
                usage: vec![
                    sample(&throttled.id, "i1", sequence, now, cpu_secs),
                    sample(&suspended.id, "i1", sequence, now, cpu_secs),
                ],
                ..Default::default()
            }))
            .await
            .expect("heartbeat");
    }
    let next_month = metering_month_end(chrono::Utc::now());

    // The throttled VPS: its status says so, and its spec carries the cap.
    let get = |name: &'static str| {
        let mut vps = api.vps();
        let acme = acme.clone();
        async move {
            vps.get_vps(with_token(
                v1::VpsRef {
                    tenant: String::new(),
                    name: name.into(),
                },
                &acme,
            ))
            .await
            .expect("get")
            .into_inner()
        }
    };
    let t = get("t").await;
    let transfer = t.transfer.expect("transfer status");
    assert_eq!(transfer.used_bytes, 12_000);
    assert_eq!(transfer.allowance_bytes, 10_000);
    assert_eq!(transfer.limited(), v1::TransferOverage::Throttle);
    assert_eq!(transfer.limited_rate_bits_per_sec, 1_000_000);
    assert_eq!(transfer.limited_until.map(|t| t.seconds), Some(next_month));
    let record = api
        .store
        .get_vps(&throttled.id)
        .expect("read")
        .expect("record");
    let spec = paddock_controller::convert::vps_spec(&record, false, chrono::Utc::now());
    let network = spec.network.clone().expect("network");
    assert_eq!(
        network.ingress_bits_per_sec, 1_000_000,
        "capped below 50 Mbit/s"
    );
    assert_eq!(
        network.egress_bits_per_sec, 1_000_000,
        "unlimited capped too"
    );
    assert_eq!(spec.desired_power(), v1::PowerState::Running);

    // The suspended VPS: held stopped, starting it is refused with the reason.
    let s = get("s").await;
    assert_eq!(s.state(), v1::VpsState::Suspended);
    assert_eq!(
        s.transfer.expect("transfer").limited(),
        v1::TransferOverage::Suspend
    );
    let record = api
        .store
        .get_vps(&suspended.id)
        .expect("read")
        .expect("record");
    let spec = paddock_controller::convert::vps_spec(&record, false, chrono::Utc::now());
    assert_eq!(spec.desired_power(), v1::PowerState::Stopped);
    let refused = api
        .vps()
        .start_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "s".into(),
            },
            &acme,
        ))
        .await
        .expect_err("start while suspended");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("monthly transfer allowance"),
        "{}",
        refused.message()
    );

    // Events, in order, each once, in the transaction that crossed 100%.
    let events = events_after(&api, &billing, start_cursor).await;
    let of = |id: &str| -> Vec<(v1::EventKind, String)> {
        events
            .iter()
            .filter(|e| e.vps_id == id)
            .map(|e| (e.kind(), e.detail.clone()))
            .collect()
    };
    let until = chrono::DateTime::from_timestamp(next_month, 0)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        of(&throttled.id),
        vec![
            (v1::EventKind::Transfer80Percent, String::new()),
            (v1::EventKind::Transfer100Percent, String::new()),
            (
                v1::EventKind::TransferLimited,
                format!("throttled to 1000000 bit/s until {until}")
            ),
        ]
    );
    assert_eq!(
        of(&suspended.id).last(),
        Some(&(
            v1::EventKind::TransferLimited,
            format!("suspended until {until}")
        ))
    );
    let last_cursor = events.last().map_or(start_cursor, |e| e.cursor);

    // Billing lifts the suspension: the VPS may start again, once lifted is enough.
    let mut client = BillingServiceClient::new(api.channel.clone());
    let lift = v1::LiftTransferLimitRequest {
        tenant: "acme".into(),
        vps: "s".into(),
    };
    let lifted = client
        .lift_transfer_limit(with_token(lift.clone(), &billing))
        .await
        .expect("lift")
        .into_inner();
    assert!(lifted.lifted);
    let again = client
        .lift_transfer_limit(with_token(lift, &billing))
        .await
        .expect("lift again")
        .into_inner();
    assert!(!again.lifted);
    assert_eq!(
        get("s").await.transfer.expect("transfer").limited(),
        v1::TransferOverage::Unspecified
    );
    api.vps()
        .start_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "s".into(),
            },
            &acme,
        ))
        .await
        .expect("start after lift");
    // More traffic the same month does not bring the limit back.
    node.clone()
        .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
            node_name: "node-a".into(),
            usage: vec![sample(&suspended.id, "i1", 3, now, 60)],
            ..Default::default()
        }))
        .await
        .expect("heartbeat");
    assert_eq!(
        get("s").await.transfer.expect("transfer").limited(),
        v1::TransferOverage::Unspecified
    );

    // The month of the throttle ends (aged by hand: a month's first tick cannot be waited
    // for): it stops applying at once, and the controller's next sweep clears it with its
    // event.
    api.store
        .update_vps(&throttled.id, &|vps| {
            let limit = vps.transfer_limit.as_mut().expect("limit");
            limit.until = chrono::Utc::now() - chrono::Duration::seconds(1);
            Ok(())
        })
        .expect("age the limit");
    assert_eq!(
        get("t").await.transfer.expect("transfer").limited(),
        v1::TransferOverage::Unspecified
    );
    let mut ended = Vec::new();
    for _ in 0..15 {
        ended = events_after(&api, &billing, last_cursor)
            .await
            .into_iter()
            .filter(|e| e.kind() == v1::EventKind::TransferLimitEnded)
            .map(|e| (e.vps, e.detail))
            .collect();
        if ended.len() == 2 {
            break;
        }
    }
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    assert_eq!(
        ended,
        vec![
            (
                "s".to_owned(),
                format!(
                    "suspension for {month} ended: lifted by billing:{}",
                    token_id(&billing)
                )
            ),
            (
                "t".to_owned(),
                format!("throttling for {month} ended: its billing month ended")
            ),
        ]
    );
    let record = api
        .store
        .get_vps(&throttled.id)
        .expect("read")
        .expect("record");
    assert_eq!(record.transfer_limit, None);
}

/// Unix seconds of the start of the month after `now`'s.
fn metering_month_end(now: chrono::DateTime<chrono::Utc>) -> i64 {
    paddock_controller::model::metering::BillingMonth::of(now)
        .ends
        .timestamp()
}

/// The id part of a `pdk_<id>_<secret>` token.
fn token_id(token: &str) -> &str {
    token
        .strip_prefix("pdk_")
        .and_then(|rest| rest.split_once('_'))
        .map_or("", |(id, _)| id)
}

/// A cold migration's switch (`Store::switch_migration`) resets the VPS's usage cursor: the
/// destination's samples, with its own low sequence numbers and counters from zero, are
/// counted whole; the source's after the switch and the destination's before it are not.
/// The total is what both nodes' counters add up to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_continues_across_a_migration_without_double_count() {
    use paddock_controller::model::migration::{self, MigrationPhase, MigrationRecord};

    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let web = api.create_vps(&acme, "", "web").await.expect("create web");
    assert_eq!(web.node, "node-a");
    let node_a = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-a").await);
    let node_b = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-b").await);
    node_b
        .clone()
        .register(tonic::Request::new(v1::RegisterRequest {
            node_name: "node-b".into(),
            address: "http://127.0.0.1:9".into(),
            capacity: Some(v1::NodeCapacityReport {
                vcpus: 64.0,
                memory_bytes: 1 << 40,
                disk_bytes: 1 << 44,
            }),
            agent_version: "test".into(),
        }))
        .await
        .expect("register node-b");
    let beat = |node: &v1::agent_registry_client::AgentRegistryClient<_>,
                name: &str,
                usage: Vec<v1::UsageSample>| {
        let mut node = node.clone();
        let name = name.to_owned();
        async move {
            node.heartbeat(tonic::Request::new(v1::HeartbeatRequest {
                node_name: name,
                usage,
                ..Default::default()
            }))
            .await
            .expect("heartbeat");
        }
    };
    // The source has sent many samples: its sequence is far above the destination's.
    beat(
        &node_a,
        "node-a",
        vec![sample(&web.id, "a1", 100, DAY0 + 10, 5)],
    )
    .await;
    beat(
        &node_a,
        "node-a",
        vec![sample(&web.id, "a1", 101, DAY0 + 20, 15)],
    )
    .await;
    // The destination reports its stopped copy before the switch: not counted.
    beat(
        &node_b,
        "node-b",
        vec![sample(&web.id, "b1", 1, DAY0 + 25, 99)],
    )
    .await;

    let vps = api.store.get_vps(&web.id).expect("get").expect("web");
    let record = MigrationRecord {
        id: "m-test".into(),
        vps_id: vps.vps_id.clone(),
        tenant: vps.tenant.clone(),
        vps: vps.name.clone(),
        source: "node-a".into(),
        destination: "node-b".into(),
        phase: MigrationPhase::Planned,
        was_running: true,
        old_ipv4: vps.ipv4.clone(),
        old_network: vps.network.clone(),
        new_ipv4: Vec::new(),
        new_network: None,
        addresses_kept: false,
        started_at: chrono::Utc::now(),
        failure: None,
        live: false,
        live_report: None,
    };
    api.store.plan_migration(&record).expect("plan");
    api.store
        .set_migration_phase(
            &vps.vps_id,
            MigrationPhase::Copied,
            paddock_controller::model::migration::PhaseNote::Nothing,
        )
        .expect("copied");
    let moved = api.store.switch_migration(&vps.vps_id).expect("switch");
    assert_eq!(moved.node, "node-b");
    let cursor = api
        .store
        .get_usage_cursor(&vps.vps_id)
        .expect("cursor")
        .expect("kept");
    assert_eq!(cursor.incarnation, migration::MIGRATED_INCARNATION);

    // A late sample of the source is not counted; the destination's run is, from zero.
    beat(
        &node_a,
        "node-a",
        vec![sample(&web.id, "a1", 102, DAY0 + 30, 40)],
    )
    .await;
    beat(
        &node_b,
        "node-b",
        vec![sample(&web.id, "b2", 2, DAY0 + 40, 3)],
    )
    .await;
    beat(
        &node_b,
        "node-b",
        vec![sample(&web.id, "b2", 3, DAY0 + 50, 8)],
    )
    .await;
    beat(
        &node_b,
        "node-b",
        vec![sample(&web.id, "b2", 3, DAY0 + 50, 8)],
    )
    .await;

    let billing = api.token(v1::Role::Billing, "").await;
    let summary = BillingServiceClient::new(api.channel.clone())
        .tenant_usage_summary(with_token(
            v1::TenantUsageSummaryRequest {
                tenant: "acme".into(),
                from: ts(DAY0),
                to: ts(DAY0 + 86_400),
            },
            &billing,
        ))
        .await
        .expect("summary")
        .into_inner();
    let total = summary.total.clone().expect("total");
    // 15 s on node-a's counters, 8 s on node-b's.
    assert_eq!(total.cpu_seconds, 23.0, "{summary:#?}");
    assert_eq!(total.net_rx_bytes, (15 + 8) * 100);
}
