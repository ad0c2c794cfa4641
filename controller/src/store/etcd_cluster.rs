//! What several controllers on one etcd need beyond the key-value store: the leader
//! campaign (see `leader.rs`) and the watch that tells each controller what the others
//! committed (see `watch.rs`). Both run as tasks on the etcd store's own runtime.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use super::leader::{Candidate, Term};

/// The leader key, relative to the store's prefix.
pub(super) const LEADER_KEY: &str = "leader";

/// Campaigns for `key` until aborted, publishing the term on `state` while leading.
pub(super) async fn campaign(
    client: Client,
    key: String,
    candidate: Candidate,
    state: watch::Sender<Option<Term>>,
) {
    let ttl = candidate.lease_ttl.max(Duration::from_secs(2));
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    // Renew three times per TTL; step down when a third of it is left.
    let period = ttl / 3;
    let mut lease_client = client.lease_client();
    let mut kv = client.kv_client();
    let step_down = |state: &watch::Sender<Option<Term>>, why: &str| {
        if state.send_replace(None).is_some() {
            tracing::warn!(why, "no longer the leader: reconcile stops");
        }
    };
    // One request may reach a member that stopped answering: each attempt gets half a
    // renewal period, then the next attempt (a new stream the balancer may send elsewhere).
    let attempt = period / 2;
    loop {
        let asked = Instant::now();
        let lease_id = match timeout_at(asked + attempt, lease_client.grant(ttl_secs, None)).await {
            Ok(Ok(granted)) => granted.id(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "granting the leader lease; retrying");
                tokio::time::sleep(attempt).await;
                continue;
            }
            Err(_) => continue,
        };
        // The lease lives at least `ttl` after etcd granted it, which was after `asked`.
        let mut valid_until = asked + ttl;
        'renewing: loop {
            // Lead only while a third of the TTL is left of the last renewal etcd saw.
            let deadline = valid_until - period;
            if Instant::now() >= deadline {
                step_down(&state, "the leader lease could not be renewed in time");
                break;
            }
            // Win the key if it is free; otherwise see whose it is.
            let campaign = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    candidate.identity.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let answer = timeout_at((Instant::now() + attempt).min(deadline), kv.txn(campaign));
            let term = match answer.await {
                Ok(Ok(response)) if response.succeeded() => {
                    let revision = response.header().map_or(0, |header| header.revision());
                    Some(Term { revision })
                }
                Ok(Ok(response)) => {
                    let holder = response.op_responses().into_iter().find_map(|op| match op {
                        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                        _ => None,
                    });
                    match holder {
                        Some(kv) if kv.lease() == lease_id => Some(Term {
                            revision: kv.create_revision(),
                        }),
                        _ => None,
                    }
                }
                // Unanswered: keep what is known until the deadline says otherwise.
                Ok(Err(error)) => {
                    tracing::debug!(%error, "checking the leader key");
                    continue;
                }
                Err(_) => continue,
            };
            let before = *state.borrow();
            if before != term {
                state.send_replace(term);
                match term {
                    Some(term) => tracing::info!(term = term.revision, "elected leader"),
                    None if before.is_some() => {
                        tracing::warn!("the leader key is another's now: reconcile stops")
                    }
                    None => {}
                }
            }
            tokio::time::sleep_until((Instant::now() + period).min(deadline)).await;
            // Renew: each attempt opens a keep-alive stream, which renews once and answers.
            loop {
                let sent = Instant::now();
                if sent >= valid_until - period {
                    continue 'renewing;
                }
                let renewal = lease_client.keep_alive(lease_id);
                match timeout_at((sent + attempt).min(valid_until - period), renewal).await {
                    Ok(Ok(_)) => {
                        valid_until = sent + ttl;
                        break;
                    }
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(message))) => {
                        tracing::warn!(%message, "renewing the leader lease");
                        step_down(&state, "the leader lease expired");
                        break 'renewing;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "renewing the leader lease; trying again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {}
                }
            }
        }
        // Let the old lease (and the key on it) go now rather than at its expiry.
        let _ = tokio::time::timeout(attempt, lease_client.revoke(lease_id)).await;
    }
}

/// How often each member is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Keeps only answering members in `client`'s rotation: each member is probed on its own
/// connection (a read that needs its quorum); one that does not answer in time (frozen,
/// partitioned, without a leader) is taken out until it answers again, so requests stop
/// going to it within a couple of seconds. The last member in rotation is never taken out.
pub(super) async fn keep_answering_members(
    client: Client,
    endpoints: Vec<String>,
    probe_key: String,
) {
    if endpoints.len() < 2 {
        return;
    }
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT)
        .with_keep_alive(PROBE_TIMEOUT, PROBE_TIMEOUT)
        .with_require_leader(true);
    let mut probes: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    let mut in_rotation = vec![true; endpoints.len()];
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        for (index, endpoint) in endpoints.iter().enumerate() {
            if probes[index].is_none() {
                let connect = Client::connect([endpoint.as_str()], Some(options.clone()));
                probes[index] = tokio::time::timeout(PROBE_TIMEOUT, connect)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let answered = match probes[index].as_mut() {
                Some(probe) => matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, probe.get(probe_key.clone(), None)).await,
                    Ok(Ok(_))
                ),
                None => false,
            };
            if !answered {
                // A fresh connection next time.
                probes[index] = None;
            }
            let others = in_rotation
                .iter()
                .enumerate()
                .filter(|(other, held)| *other != index && **held)
                .count();
            if in_rotation[index] && !answered && others > 0 {
                if client.remove_endpoint(endpoint).await.is_ok() {
                    in_rotation[index] = false;
                    tracing::warn!(%endpoint, "etcd member does not answer; not using it");
                }
            } else if !in_rotation[index] && answered && client.add_endpoint(endpoint).await.is_ok()
            {
                in_rotation[index] = true;
                tracing::info!(%endpoint, "etcd member answers again; using it");
            }
        }
    }
}

/// A change another controller (or this one) committed, as the watch reports it.
#[derive(Debug)]
pub(super) enum Watched {
    /// A VPS record was written or removed; `node` is where it is (or was) placed.
    Vps {
        vps_id: String,
        node: Option<String>,
    },
    /// A tenant changed (how its VPSes look, e.g. suspended).
    Tenant,
    /// Events were appended.
    Events,
    /// A node's registration, cordon or pools changed (not a mere heartbeat).
    Topology,
    /// The watch restarted and may have missed changes: treat everything as changed.
    Resync,
}

/// Watches the store's VPS, tenant, node and pool keys and the event counter under `prefix`,
/// sending what changed to `sink` until it is closed; reconnects (and reports `Resync`) when
/// the watch breaks.
pub(super) async fn watch_changes(
    client: Client,
    prefix: String,
    sink: std::sync::mpsc::Sender<(i64, Watched)>,
) {
    let mut next_revision = 0i64;
    let mut first = true;
    loop {
        if !first && sink.send((0, Watched::Resync)).is_err() {
            return;
        }
        first = false;
        let mut watch_client = client.watch_client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(next_revision);
        let mut stream = match watch_client.watch(prefix.clone(), Some(options)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "watching the store for other controllers' changes");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "the store watch broke; watching again");
                    break;
                }
            };
            if response.compact_revision() > 0 {
                // What we missed was compacted away: start from now and resync.
                next_revision = 0;
                break;
            }
            if response.canceled() {
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                next_revision = next_revision.max(kv.mod_revision() + 1);
                let key = String::from_utf8_lossy(kv.key());
                let Some(relative) = key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let deleted = event.event_type() == EventType::Delete;
                let current = (!deleted).then(|| kv.value());
                let previous = event.prev_kv().map(|prev| prev.value());
                if let Some(watched) = classify(relative, current, previous) {
                    if sink.send((kv.mod_revision(), watched)).is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a write of `key` (relative to the prefix) means to the other controllers.
fn classify(key: &str, current: Option<&[u8]>, previous: Option<&[u8]>) -> Option<Watched> {
    if key == "events_last" {
        return Some(Watched::Events);
    }
    let (tree, rest) = key.split_once('/')?;
    match tree {
        "vps" => {
            let node_of = |bytes: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|value| value.get("node")?.as_str().map(str::to_owned))
            };
            let node = current
                .and_then(node_of)
                .or_else(|| previous.and_then(node_of));
            Some(Watched::Vps {
                vps_id: rest.to_owned(),
                node,
            })
        }
        "tenants" => Some(Watched::Tenant),
        "pools" => Some(Watched::Topology),
        "nodes" => {
            // A heartbeat only moves `last_heartbeat`: not worth a placement rebuild (the
            // online state is derived from it at read time anyway).
            let without_heartbeat = |bytes: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .map(|mut value| {
                        if let Some(object) = value.as_object_mut() {
                            object.remove("last_heartbeat");
                        }
                        value
                    })
            };
            let changed = match (current, previous) {
                (Some(current), Some(previous)) => {
                    without_heartbeat(current) != without_heartbeat(previous)
                }
                _ => true,
            };
            changed.then_some(Watched::Topology)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_other_controllers_care_about() {
        assert!(matches!(
            classify("events_last", Some(b"5"), Some(b"4")),
            Some(Watched::Events)
        ));
        match classify("vps/v1", None, Some(br#"{"node":"n1"}"#)) {
            Some(Watched::Vps { vps_id, node }) => {
                assert_eq!(vps_id, "v1");
                assert_eq!(node.as_deref(), Some("n1"), "a delete names the old node");
            }
            other => panic!("unexpected {other:?}"),
        }
        let beat = br#"{"name":"n1","last_heartbeat":"2026-01-01T00:00:01Z","cordoned":false}"#;
        let older = br#"{"name":"n1","last_heartbeat":"2026-01-01T00:00:00Z","cordoned":false}"#;
        let cordon = br#"{"name":"n1","last_heartbeat":"2026-01-01T00:00:01Z","cordoned":true}"#;
        assert!(classify("nodes/n1", Some(beat), Some(older)).is_none());
        assert!(matches!(
            classify("nodes/n1", Some(cordon), Some(older)),
            Some(Watched::Topology)
        ));
        assert!(classify("usage_hours/acme/1/v1", Some(b"{}"), None).is_none());
        assert!(classify("events/00000000000000000001", Some(b"{}"), None).is_none());
    }
}
