//! Usage metering over the real API: a node heartbeats usage samples (with a
//! repeat, a VPS restart and a stale delivery), and billing reads them back
//! per hour, per day, page by page and as a tenant summary.

mod common;

use common::{start, with_token};
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
    let total = summary.total.expect("total");
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
