//! Who may choose which resource limits: every field of `Resources`, for a tenant token and an
//! admin token, on create and on resize. A refused request names the field, gets its code
//! (InvalidArgument outside the absolute bounds, PermissionDenied above the plan for a tenant,
//! FailedPrecondition over quota) and charges nothing: no VPS, no quota, no address.
//! The table is checked against the `Resources` message's descriptor, so a new field cannot
//! be added without a row.

mod common;

use std::collections::BTreeSet;

use common::{start, with_token, Api};
use paddock_proto::v1;
use prost::Message;
use tonic::Code;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Tenant,
    Admin,
}

/// One request for one field: the overrides, and the code expected on create and resize
/// (`Ok` = accepted) with the start of the refusal's message.
struct Case {
    who: Who,
    overrides: v1::Resources,
    code: Code,
    message: &'static str,
}

struct Row {
    field: &'static str,
    cases: Vec<Case>,
}

fn with(set: impl FnOnce(&mut v1::Resources)) -> v1::Resources {
    let mut resources = v1::Resources::default();
    set(&mut resources);
    resources
}

fn case(who: Who, set: impl FnOnce(&mut v1::Resources), code: Code, message: &'static str) -> Case {
    Case {
        who,
        overrides: with(set),
        code,
        message,
    }
}

use Who::{Admin, Tenant};

/// The plan every case starts from: a finite ceiling on every field a tenant may only lower.
fn rated_plan() -> v1::Plan {
    v1::Plan {
        name: "rated".into(),
        resources: Some(v1::Resources {
            vcpus: 1.0,
            cpu_weight: 100,
            memory_bytes: 256 * MIB,
            swap_bytes: 128 * MIB,
            disk_bytes: GIB,
            io_read_bytes_per_sec: 50 * MIB,
            io_write_bytes_per_sec: 50 * MIB,
            io_read_iops: 500,
            io_write_iops: 500,
            pids_max: 512,
            net_ingress_bits_per_sec: 100_000_000,
            net_egress_bits_per_sec: 100_000_000,
            ipv4_count: 1,
            ipv6_count: 0,
        }),
        ..v1::Plan::default()
    }
}

/// A field a tenant may lower but not raise above the plan's `plan_value`; admins may set
/// anything from `min` to `max`, nothing outside.
fn ceiling_row(
    field: &'static str,
    set: fn(&mut v1::Resources, u64),
    plan_value: u64,
    min: u64,
    max: u64,
) -> Row {
    let mut cases = vec![
        case(Tenant, |r| set(r, plan_value), Code::Ok, ""),
        case(Tenant, |r| set(r, min.max(plan_value / 2)), Code::Ok, ""),
        case(
            Tenant,
            |r| set(r, plan_value + 1),
            Code::PermissionDenied,
            field,
        ),
        case(Admin, |r| set(r, plan_value * 4), Code::Ok, ""),
        case(Admin, |r| set(r, max), Code::Ok, ""),
    ];
    if min > 1 {
        cases.push(case(
            Tenant,
            |r| set(r, min - 1),
            Code::InvalidArgument,
            field,
        ));
        cases.push(case(
            Admin,
            |r| set(r, min - 1),
            Code::InvalidArgument,
            field,
        ));
    }
    if max < u64::MAX {
        cases.push(case(
            Admin,
            |r| set(r, max + 1),
            Code::InvalidArgument,
            field,
        ));
        cases.push(case(
            Tenant,
            |r| set(r, max + 1),
            Code::PermissionDenied,
            field,
        ));
    }
    Row { field, cases }
}

/// Every field of `Resources` with what each token may do with it, on plan `rated` for a
/// tenant whose quota is 4 vCPUs, 8 GiB memory, 64 GiB disk and 4 addresses.
fn table() -> Vec<Row> {
    vec![
        Row {
            field: "vcpus",
            cases: vec![
                case(Tenant, |r| r.vcpus = 2.0, Code::Ok, ""),
                case(Tenant, |r| r.vcpus = 0.5, Code::Ok, ""),
                case(
                    Tenant,
                    |r| r.vcpus = 8.0,
                    Code::FailedPrecondition,
                    "quota exceeded: vcpus",
                ),
                case(Tenant, |r| r.vcpus = -1.0, Code::InvalidArgument, "vcpus"),
                case(Tenant, |r| r.vcpus = 0.001, Code::InvalidArgument, "vcpus"),
                case(
                    Tenant,
                    |r| r.vcpus = f64::NAN,
                    Code::InvalidArgument,
                    "vcpus",
                ),
                case(Admin, |r| r.vcpus = 4.0, Code::Ok, ""),
                case(Admin, |r| r.vcpus = 2000.0, Code::InvalidArgument, "vcpus"),
                case(
                    Admin,
                    |r| r.vcpus = f64::INFINITY,
                    Code::InvalidArgument,
                    "vcpus",
                ),
            ],
        },
        Row {
            field: "cpu_weight",
            cases: vec![
                case(Tenant, |r| r.cpu_weight = 50, Code::Ok, ""),
                case(Tenant, |r| r.cpu_weight = 100, Code::Ok, ""),
                case(
                    Tenant,
                    |r| r.cpu_weight = 10_000,
                    Code::PermissionDenied,
                    "cpu_weight",
                ),
                case(
                    Tenant,
                    |r| r.cpu_weight = 101,
                    Code::PermissionDenied,
                    "cpu_weight",
                ),
                case(Admin, |r| r.cpu_weight = 10_000, Code::Ok, ""),
                case(Admin, |r| r.cpu_weight = 1, Code::Ok, ""),
                case(
                    Admin,
                    |r| r.cpu_weight = 10_001,
                    Code::InvalidArgument,
                    "cpu_weight",
                ),
            ],
        },
        Row {
            field: "memory_bytes",
            cases: vec![
                case(Tenant, |r| r.memory_bytes = 512 * MIB, Code::Ok, ""),
                case(Tenant, |r| r.memory_bytes = 64 * MIB, Code::Ok, ""),
                case(
                    Tenant,
                    |r| r.memory_bytes = 1,
                    Code::InvalidArgument,
                    "memory_bytes",
                ),
                case(
                    Tenant,
                    |r| r.memory_bytes = 63 * MIB,
                    Code::InvalidArgument,
                    "memory_bytes",
                ),
                case(
                    Tenant,
                    |r| r.memory_bytes = 16 * GIB,
                    Code::FailedPrecondition,
                    "quota exceeded: memory",
                ),
                case(Admin, |r| r.memory_bytes = 4 * GIB, Code::Ok, ""),
                case(
                    Admin,
                    |r| r.memory_bytes = 1,
                    Code::InvalidArgument,
                    "memory_bytes",
                ),
                case(
                    Admin,
                    |r| r.memory_bytes = 5 << 40,
                    Code::InvalidArgument,
                    "memory_bytes",
                ),
            ],
        },
        ceiling_row(
            "swap_bytes",
            |r, v| r.swap_bytes = v,
            128 * MIB,
            0,
            64 * GIB,
        ),
        Row {
            field: "disk_bytes",
            cases: vec![
                case(Tenant, |r| r.disk_bytes = 4 * GIB, Code::Ok, ""),
                case(
                    Tenant,
                    |r| r.disk_bytes = 1024,
                    Code::InvalidArgument,
                    "disk_bytes",
                ),
                case(
                    Tenant,
                    |r| r.disk_bytes = 255 * MIB,
                    Code::InvalidArgument,
                    "disk_bytes",
                ),
                case(
                    Tenant,
                    |r| r.disk_bytes = 128 * GIB,
                    Code::FailedPrecondition,
                    "quota exceeded: disk",
                ),
                case(Admin, |r| r.disk_bytes = 32 * GIB, Code::Ok, ""),
                case(
                    Admin,
                    |r| r.disk_bytes = 1 << 50,
                    Code::InvalidArgument,
                    "disk_bytes",
                ),
            ],
        },
        ceiling_row(
            "io_read_bytes_per_sec",
            |r, v| r.io_read_bytes_per_sec = v,
            50 * MIB,
            MIB,
            u64::MAX,
        ),
        ceiling_row(
            "io_write_bytes_per_sec",
            |r, v| r.io_write_bytes_per_sec = v,
            50 * MIB,
            MIB,
            u64::MAX,
        ),
        ceiling_row("io_read_iops", |r, v| r.io_read_iops = v, 500, 10, u64::MAX),
        ceiling_row(
            "io_write_iops",
            |r, v| r.io_write_iops = v,
            500,
            10,
            u64::MAX,
        ),
        ceiling_row("pids_max", |r, v| r.pids_max = v, 512, 16, 65_536),
        ceiling_row(
            "net_ingress_bits_per_sec",
            |r, v| r.net_ingress_bits_per_sec = v,
            100_000_000,
            100_000,
            u64::MAX,
        ),
        ceiling_row(
            "net_egress_bits_per_sec",
            |r, v| r.net_egress_bits_per_sec = v,
            100_000_000,
            100_000,
            u64::MAX,
        ),
        Row {
            field: "ipv4_count",
            cases: vec![
                // The plan's own value is no change; any other is refused for everyone.
                case(Tenant, |r| r.ipv4_count = 1, Code::Ok, ""),
                case(
                    Tenant,
                    |r| r.ipv4_count = 2,
                    Code::InvalidArgument,
                    "ipv4_count",
                ),
                case(
                    Admin,
                    |r| r.ipv4_count = 3,
                    Code::InvalidArgument,
                    "ipv4_count",
                ),
            ],
        },
        Row {
            field: "ipv6_count",
            cases: vec![
                case(
                    Tenant,
                    |r| r.ipv6_count = 1,
                    Code::InvalidArgument,
                    "ipv6_count",
                ),
                case(
                    Admin,
                    |r| r.ipv6_count = 1,
                    Code::InvalidArgument,
                    "ipv6_count",
                ),
            ],
        },
    ]
}

/// The field names of `paddock.v1.Resources`, from the compiled descriptor.
fn resources_fields() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).expect("descriptor");
    let message = set
        .file
        .iter()
        .filter(|file| file.package() == "paddock.v1")
        .flat_map(|file| &file.message_type)
        .find(|message| message.name() == "Resources")
        .expect("paddock.v1.Resources");
    message
        .field
        .iter()
        .map(|field| field.name().to_owned())
        .collect()
}

/// The value of `field` in `resources`, as f64.
fn field_value(resources: &v1::Resources, field: &str) -> f64 {
    let v1::Resources {
        vcpus,
        cpu_weight,
        memory_bytes,
        swap_bytes,
        disk_bytes,
        io_read_bytes_per_sec,
        io_write_bytes_per_sec,
        io_read_iops,
        io_write_iops,
        pids_max,
        net_ingress_bits_per_sec,
        net_egress_bits_per_sec,
        ipv4_count,
        ipv6_count,
    } = resources;
    match field {
        "vcpus" => *vcpus,
        "cpu_weight" => f64::from(*cpu_weight),
        "memory_bytes" => *memory_bytes as f64,
        "swap_bytes" => *swap_bytes as f64,
        "disk_bytes" => *disk_bytes as f64,
        "io_read_bytes_per_sec" => *io_read_bytes_per_sec as f64,
        "io_write_bytes_per_sec" => *io_write_bytes_per_sec as f64,
        "io_read_iops" => *io_read_iops as f64,
        "io_write_iops" => *io_write_iops as f64,
        "pids_max" => *pids_max as f64,
        "net_ingress_bits_per_sec" => *net_ingress_bits_per_sec as f64,
        "net_egress_bits_per_sec" => *net_egress_bits_per_sec as f64,
        "ipv4_count" => f64::from(*ipv4_count),
        "ipv6_count" => f64::from(*ipv6_count),
        other => panic!("no field {other}"),
    }
}

/// A fresh tenant with a small quota, and its token.
async fn tenant(api: &Api, name: &str) -> String {
    let token = api.tenant(name, 10).await;
    api.tenants()
        .set_quota(with_token(
            v1::SetQuotaRequest {
                name: name.into(),
                quota: Some(v1::Quota {
                    max_vps: 10,
                    vcpus: 4.0,
                    memory_bytes: 8 * GIB,
                    disk_bytes: 64 * GIB,
                    ipv4_count: 4,
                }),
            },
            &api.admin,
        ))
        .await
        .expect("set quota");
    token
}

async fn used(api: &Api, tenant: &str) -> v1::Quota {
    api.tenants()
        .get_tenant(with_token(
            v1::GetTenantRequest {
                name: tenant.into(),
            },
            &api.admin,
        ))
        .await
        .expect("get tenant")
        .into_inner()
        .used
        .unwrap_or_default()
}

async fn vps_names(api: &Api, tenant: &str) -> Vec<String> {
    api.vps()
        .list_vps(with_token(
            v1::ListVpsRequest {
                tenant: tenant.into(),
                ..Default::default()
            },
            &api.admin,
        ))
        .await
        .expect("list")
        .into_inner()
        .vps
        .into_iter()
        .map(|vps| vps.name)
        .collect()
}

fn check_refusal(what: &str, status: &tonic::Status, case: &Case) {
    assert_eq!(status.code(), case.code, "{what}: {}", status.message());
    assert!(
        status.message().starts_with(case.message),
        "{what}: the message names the field: {}",
        status.message()
    );
    assert!(!status.message().contains('\n'), "{what}: one line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resources_field_is_bounded_for_tenants_and_admins_on_create_and_resize() {
    let table = table();
    let covered: BTreeSet<String> = table.iter().map(|row| row.field.to_owned()).collect();
    assert_eq!(
        covered,
        resources_fields(),
        "every field of paddock.v1.Resources needs a row here (and a rule in limits.rs)"
    );
    for row in &table {
        assert!(
            row.cases.iter().any(|c| c.who == Tenant) && row.cases.iter().any(|c| c.who == Admin),
            "{}: cases for both tokens",
            row.field
        );
        assert!(
            row.cases.iter().any(|c| c.code != Code::Ok),
            "{}: a refused case",
            row.field
        );
    }

    let api = start().await;
    let mut plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone());
    plans
        .create_plan(with_token(
            v1::CreatePlanRequest {
                plan: Some(rated_plan()),
            },
            &api.admin,
        ))
        .await
        .expect("create plan rated");

    let mut n = 0;
    for row in &table {
        for case in &row.cases {
            n += 1;
            let what = format!(
                "{:?} token, {} = {}",
                case.who,
                row.field,
                field_value(&case.overrides, row.field)
            );
            // A fresh tenant for the create, another for the resize: each starts empty.
            let tenant_name = format!("c{n}");
            let tenant_token = tenant(&api, &tenant_name).await;
            let (token, scope) = match case.who {
                Tenant => (tenant_token.as_str(), String::new()),
                Admin => (api.admin.as_str(), tenant_name.clone()),
            };

            // Create with the override.
            let created = api
                .vps()
                .create_vps(with_token(
                    v1::CreateVpsRequest {
                        tenant: scope.clone(),
                        name: "made".into(),
                        plan: "rated".into(),
                        overrides: Some(case.overrides),
                        start: true,
                        ..Default::default()
                    },
                    token,
                ))
                .await;
            match (&created, case.code) {
                (Ok(vps), Code::Ok) => {
                    let resources = vps.get_ref().resources.expect("resources");
                    let asked = field_value(&case.overrides, row.field);
                    assert_eq!(field_value(&resources, row.field), asked, "create {what}");
                }
                (Err(status), _) if case.code != Code::Ok => {
                    check_refusal(&format!("create {what}"), status, case);
                    assert_eq!(
                        used(&api, &tenant_name).await,
                        v1::Quota::default(),
                        "create {what}: nothing charged"
                    );
                    assert!(
                        vps_names(&api, &tenant_name).await.is_empty(),
                        "create {what}: no VPS"
                    );
                }
                (result, _) => panic!("create {what}: expected {:?}, got {result:?}", case.code),
            }

            // Resize a VPS made on the plan to the override.
            let tenant_name = format!("r{n}");
            let tenant_token = tenant(&api, &tenant_name).await;
            let (token, scope) = match case.who {
                Tenant => (tenant_token.as_str(), String::new()),
                Admin => (api.admin.as_str(), tenant_name.clone()),
            };
            let base_name = "base";
            api.vps()
                .create_vps(with_token(
                    v1::CreateVpsRequest {
                        name: base_name.into(),
                        plan: "rated".into(),
                        ..Default::default()
                    },
                    &tenant_token,
                ))
                .await
                .unwrap_or_else(|status| panic!("{what}: base VPS: {status:?}"));
            let before_used = used(&api, &tenant_name).await;
            let reference = v1::VpsRef {
                tenant: scope.clone(),
                name: base_name.into(),
            };
            let before = api
                .vps()
                .get_vps(with_token(reference.clone(), token))
                .await
                .expect("get")
                .into_inner()
                .resources;
            let resized = api
                .vps()
                .resize_vps(with_token(
                    v1::ResizeVpsRequest {
                        vps: Some(reference.clone()),
                        plan: String::new(),
                        resources: Some(case.overrides),
                    },
                    token,
                ))
                .await;
            match (&resized, case.code) {
                (Ok(vps), Code::Ok) => {
                    let resources = vps.get_ref().resources.expect("resources");
                    let asked = field_value(&case.overrides, row.field);
                    assert_eq!(field_value(&resources, row.field), asked, "resize {what}");
                }
                (Err(status), _) if case.code != Code::Ok => {
                    check_refusal(&format!("resize {what}"), status, case);
                    assert_eq!(
                        used(&api, &tenant_name).await,
                        before_used,
                        "resize {what}: nothing charged"
                    );
                    let after = api
                        .vps()
                        .get_vps(with_token(reference.clone(), token))
                        .await
                        .expect("get")
                        .into_inner()
                        .resources;
                    assert_eq!(after, before, "resize {what}: nothing changed");
                }
                (result, _) => panic!("resize {what}: expected {:?}, got {result:?}", case.code),
            }
        }
    }
}

/// The attack of issue #11: a raw request on plan nano asking for 4,000,000 processes and
/// 100x the CPU share. Refused for a tenant on create and resize, with nothing charged; a plan
/// with values beyond the bounds is refused for the admin too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_raise_its_own_limits_on_the_shipped_plans() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let greedy = v1::Resources {
        pids_max: 4_000_000,
        cpu_weight: 10_000,
        ..Default::default()
    };
    let refused = api
        .vps()
        .create_vps(with_token(
            v1::CreateVpsRequest {
                name: "greedy".into(),
                plan: "nano".into(),
                overrides: Some(greedy),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .expect_err("refused");
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .starts_with("pids_max: 4000000 is above plan nano's 512"),
        "{}",
        refused.message()
    );
    assert_eq!(used(&api, "acme").await, v1::Quota::default());
    assert!(vps_names(&api, "acme").await.is_empty());

    api.create_vps(&acme, "", "web1")
        .await
        .expect("create nano");
    let before = used(&api, "acme").await;
    let refused = api
        .vps()
        .resize_vps(with_token(
            v1::ResizeVpsRequest {
                vps: Some(v1::VpsRef {
                    tenant: String::new(),
                    name: "web1".into(),
                }),
                plan: String::new(),
                resources: Some(greedy),
            },
            &acme,
        ))
        .await
        .expect_err("refused");
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert_eq!(used(&api, "acme").await, before);
    // The README tour's resize stays a tenant's to make: more memory within quota, a lower rate
    // on a plan whose network is unlimited.
    let resized = api
        .vps()
        .resize_vps(with_token(
            v1::ResizeVpsRequest {
                vps: Some(v1::VpsRef {
                    tenant: String::new(),
                    name: "web1".into(),
                }),
                plan: String::new(),
                resources: Some(v1::Resources {
                    memory_bytes: 512 * MIB,
                    net_egress_bits_per_sec: 50_000_000,
                    ..Default::default()
                }),
            },
            &acme,
        ))
        .await
        .expect("tour resize")
        .into_inner()
        .resources
        .expect("resources");
    assert_eq!(resized.memory_bytes, 512 * MIB);
    assert_eq!(resized.net_egress_bits_per_sec, 50_000_000);
    assert_eq!(resized.pids_max, 512, "the plan's pid limit stays");

    // A plan change holds the overrides to the new plan: small allows 1024 processes.
    let to_small = |pids_max: u64| v1::ResizeVpsRequest {
        vps: Some(v1::VpsRef {
            tenant: String::new(),
            name: "web1".into(),
        }),
        plan: "small".into(),
        resources: Some(v1::Resources {
            pids_max,
            ..Default::default()
        }),
    };
    let before = used(&api, "acme").await;
    let refused = api
        .vps()
        .resize_vps(with_token(to_small(2048), &acme))
        .await
        .expect_err("above small's pids");
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .starts_with("pids_max: 2048 is above plan small's 1024"),
        "{}",
        refused.message()
    );
    assert_eq!(used(&api, "acme").await, before, "nothing charged");
    let small = api
        .vps()
        .resize_vps(with_token(to_small(1000), &acme))
        .await
        .expect("within small's pids")
        .into_inner();
    assert_eq!(small.plan, "small");
    assert_eq!(small.resources.expect("resources").pids_max, 1000);

    // CreatePlan takes Resources too: the bounds hold there, for the admin.
    let mut plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone());
    let mut plan = rated_plan();
    plan.name = "huge".into();
    if let Some(resources) = plan.resources.as_mut() {
        resources.pids_max = 4_000_000;
    }
    let refused = plans
        .create_plan(with_token(
            v1::CreatePlanRequest { plan: Some(plan) },
            &api.admin,
        ))
        .await
        .expect_err("beyond the bounds");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("plan.resources.pids_max: 4000000 must be from 16 to 65536"),
        "{}",
        refused.message()
    );
}

/// The shipped plans carry IO limits (`make up` and every `init` seed them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_plans_carry_io_limits() {
    let api = start().await;
    let mut plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone());
    let listed = plans
        .list_plans(with_token(v1::Empty {}, &api.admin))
        .await
        .expect("plans")
        .into_inner()
        .plans;
    let names: Vec<_> = listed.iter().map(|plan| plan.name.as_str()).collect();
    assert_eq!(names, ["nano", "small", "medium", "large"]);
    for plan in &listed {
        let r = plan.resources.expect("resources");
        assert!(
            r.io_read_bytes_per_sec > 0
                && r.io_write_bytes_per_sec > 0
                && r.io_read_iops > 0
                && r.io_write_iops > 0,
            "plan {} has no IO limit: {r:?}",
            plan.name
        );
    }
}
