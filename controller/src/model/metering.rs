//! Metering: turns the cumulative counters agents send into hourly usage
//! records, and answers usage queries for billing.
//!
//! Each sample carries an `incarnation` (changes when the VPS's counters restart
//! from zero) and a per-VPS `sequence`. A sample with a sequence at or below
//! the last accepted one is a repeat and is ignored; otherwise its delta is
//! `current - last` within one incarnation (a counter that went backwards
//! was reset, so its delta is `current`) and `current` for a new incarnation.
//! The last accepted sample and the hour the delta lands in are written in
//! one store transaction, so neither redelivery nor a crash of either side
//! can count anything twice.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use super::validate::ValidationError;
use super::{
    EventKind, EventRecord, TransferLimit, TransferOverage, UsageCounters, UsageCursorRecord,
    UsageHourRecord, VpsRecord,
};

pub const HOUR_SECS: i64 = 3600;
pub const DAY_SECS: i64 = 86_400;
/// Samples dated further in the future than this (agent clock skew) are dated now.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Without an interval from the agent, gauges are weighted by at most this.
pub const DEFAULT_INTERVAL_MS: i64 = 10_000;

/// One usage sample as an agent sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub vps_id: String,
    pub incarnation: String,
    pub sequence: u64,
    pub sampled_at_unix_ms: i64,
    pub interval_ms: u32,
    pub counters: UsageCounters,
}

/// What one accepted sample adds to its hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageDelta {
    pub cpu_usage_ns: u64,
    pub memory_byte_seconds: f64,
    /// The highest memory use known to fall in this sample's interval.
    pub memory_peak_bytes: u64,
    pub disk_byte_seconds: f64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// A counter's growth since `last`; a counter below `last` restarted from zero.
pub fn grew(current: u64, last: u64) -> u64 {
    if current >= last {
        current - last
    } else {
        current
    }
}

/// The usage `sample` adds after `last` (the last accepted sample of the
/// VPS), or `None` if it is a repeat or older than `last`.
pub fn delta(last: Option<&UsageCursorRecord>, sample: &Sample) -> Option<UsageDelta> {
    if last.is_some_and(|last| sample.sequence <= last.sequence) {
        return None;
    }
    let interval_ms = match i64::from(sample.interval_ms) {
        0 => DEFAULT_INTERVAL_MS,
        ms => ms,
    };
    let gap_ms = last.map(|last| (sample.sampled_at_unix_ms - last.sampled_at_unix_ms).max(0));
    let now = &sample.counters;
    let continued = last.filter(|last| last.incarnation == sample.incarnation);
    // Gauges are weighted by the time since the previous sample, bounded so a
    // long silence (agent down) is not billed as if the gauge held throughout.
    let (memory_ms, disk_ms) = match (continued, gap_ms) {
        (Some(_), Some(gap)) => (gap.min(2 * interval_ms), gap.min(2 * interval_ms)),
        // A new incarnation ran at most since the previous sample, at most one interval.
        (None, Some(gap)) => (gap.min(interval_ms), gap.min(2 * interval_ms)),
        (_, None) => (interval_ms, interval_ms),
    };
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let base = continued.map(|last| &last.counters);
    let since = |current: u64, pick: fn(&UsageCounters) -> u64| match base {
        Some(base) => grew(current, pick(base)),
        None => current,
    };
    let memory_peak_bytes = match base {
        // The peak counter only moves when a new high happened in this interval.
        Some(base) if now.memory_peak_bytes <= base.memory_peak_bytes => now.memory_bytes,
        _ => now.memory_peak_bytes.max(now.memory_bytes),
    };
    Some(UsageDelta {
        cpu_usage_ns: since(now.cpu_usage_ns, |c| c.cpu_usage_ns),
        memory_byte_seconds: now.memory_bytes as f64 * seconds(memory_ms),
        memory_peak_bytes,
        disk_byte_seconds: now.disk_used_bytes as f64 * seconds(disk_ms),
        io_read_bytes: since(now.io_read_bytes, |c| c.io_read_bytes),
        io_write_bytes: since(now.io_write_bytes, |c| c.io_write_bytes),
        io_read_ops: since(now.io_read_ops, |c| c.io_read_ops),
        io_write_ops: since(now.io_write_ops, |c| c.io_write_ops),
        net_rx_bytes: since(now.net_rx_bytes, |c| c.net_rx_bytes),
        net_tx_bytes: since(now.net_tx_bytes, |c| c.net_tx_bytes),
    })
}

/// Adds `delta` to `hour`.
pub fn accumulate(hour: &mut UsageHourRecord, delta: &UsageDelta) {
    hour.cpu_usage_ns = hour.cpu_usage_ns.saturating_add(delta.cpu_usage_ns);
    hour.memory_byte_seconds += delta.memory_byte_seconds;
    hour.memory_peak_bytes = hour.memory_peak_bytes.max(delta.memory_peak_bytes);
    hour.disk_byte_seconds += delta.disk_byte_seconds;
    hour.io_read_bytes = hour.io_read_bytes.saturating_add(delta.io_read_bytes);
    hour.io_write_bytes = hour.io_write_bytes.saturating_add(delta.io_write_bytes);
    hour.io_read_ops = hour.io_read_ops.saturating_add(delta.io_read_ops);
    hour.io_write_ops = hour.io_write_ops.saturating_add(delta.io_write_ops);
    hour.net_rx_bytes = hour.net_rx_bytes.saturating_add(delta.net_rx_bytes);
    hour.net_tx_bytes = hour.net_tx_bytes.saturating_add(delta.net_tx_bytes);
    hour.samples += 1;
}

/// Adds one period's usage to a running total (peaks take the maximum).
pub fn add(total: &mut UsageHourRecord, part: &UsageHourRecord) {
    total.cpu_usage_ns = total.cpu_usage_ns.saturating_add(part.cpu_usage_ns);
    total.memory_byte_seconds += part.memory_byte_seconds;
    total.memory_peak_bytes = total.memory_peak_bytes.max(part.memory_peak_bytes);
    total.disk_byte_seconds += part.disk_byte_seconds;
    total.io_read_bytes = total.io_read_bytes.saturating_add(part.io_read_bytes);
    total.io_write_bytes = total.io_write_bytes.saturating_add(part.io_write_bytes);
    total.io_read_ops = total.io_read_ops.saturating_add(part.io_read_ops);
    total.io_write_ops = total.io_write_ops.saturating_add(part.io_write_ops);
    total.net_rx_bytes = total.net_rx_bytes.saturating_add(part.net_rx_bytes);
    total.net_tx_bytes = total.net_tx_bytes.saturating_add(part.net_tx_bytes);
    total.samples = total.samples.saturating_add(part.samples);
}

/// Allowance events newly due when a VPS has used `transfer_bytes` of its
/// monthly `allowance_bytes` (0 = unmetered) and already announced
/// `announced_percent`; each is raised once per month.
pub fn transfer_thresholds(
    allowance_bytes: u64,
    transfer_bytes: u64,
    announced_percent: u8,
) -> Vec<EventKind> {
    if allowance_bytes == 0 {
        return Vec::new();
    }
    let used = u128::from(transfer_bytes) * 100;
    let mut due = Vec::new();
    if announced_percent < 80 && used >= u128::from(allowance_bytes) * 80 {
        due.push(EventKind::Transfer80Percent);
    }
    if announced_percent < 100 && used >= u128::from(allowance_bytes) * 100 {
        due.push(EventKind::Transfer100Percent);
    }
    due
}

/// A billing month: a calendar month in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingMonth {
    /// `YYYY-MM`.
    pub name: String,
    /// When the next month starts.
    pub ends: DateTime<Utc>,
}

impl BillingMonth {
    /// The month `at` falls in.
    pub fn of(at: DateTime<Utc>) -> Self {
        let (year, month) = match at.month() {
            12 => (at.year() + 1, 1),
            month => (at.year(), month + 1),
        };
        let ends = Utc
            .with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self {
            name: at.format("%Y-%m").to_string(),
            ends,
        }
    }

    /// The limit `overage` puts on a VPS that used up this month's allowance
    /// at `now`; none for `Notify`.
    pub fn limit(&self, overage: TransferOverage, now: DateTime<Utc>) -> Option<TransferLimit> {
        match overage {
            TransferOverage::Notify => None,
            TransferOverage::Throttle { .. } | TransferOverage::Suspend => Some(TransferLimit {
                overage,
                month: self.name.clone(),
                since: now,
                until: self.ends,
            }),
        }
    }
}

/// A VPS's transfer this month, and the limit in force on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStatus {
    pub month: String,
    pub used_bytes: u64,
    pub allowance_bytes: u64,
    pub limit: Option<TransferLimit>,
}

/// How long after a billing month begins the transfer limits are looked over a second time:
/// a controller whose clock lags the one leading may still set a limit ending with the month
/// just over.
pub const LIMIT_SWEEP_CLOCK_GRACE_SECS: i64 = 5 * 60;

/// Whether a sweep for transfer limits whose month ended is due at `now`, the last one
/// having begun at `last` (`None`: none yet). Every limit ends when a billing month does
/// ([`BillingMonth::limit`]), so between month boundaries no limit can end: a sweep is due
/// once a month began since the last one, and once more [`LIMIT_SWEEP_CLOCK_GRACE_SECS`]
/// later. Callers sweep besides at start and with each full resync (a limit edited by hand).
pub fn limit_sweep_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(last) = last else {
        return true;
    };
    let grace = chrono::Duration::seconds(LIMIT_SWEEP_CLOCK_GRACE_SECS);
    let month = |at: DateTime<Utc>| BillingMonth::of(at).name;
    month(last) != month(now) || month(last - grace) != month(now - grace)
}

/// The `detail` of a `transfer_limited` event.
pub fn describe_limit(limit: &TransferLimit) -> String {
    let until = limit
        .until
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match limit.overage {
        TransferOverage::Throttle { bits_per_sec } => {
            format!("throttled to {bits_per_sec} bit/s until {until}")
        }
        TransferOverage::Suspend => format!("suspended until {until}"),
        TransferOverage::Notify => format!("no action until {until}"),
    }
}

/// The `transfer_limit_ended` event of `limit` on `vps`.
pub fn limit_ended(vps: &VpsRecord, limit: &TransferLimit, why: &str) -> EventRecord {
    let what = match limit.overage {
        TransferOverage::Throttle { .. } => "throttling",
        TransferOverage::Suspend => "suspension",
        TransferOverage::Notify => "limit",
    };
    EventRecord::of_vps(EventKind::TransferLimitEnded, vps)
        .with_detail(format!("{what} for {} ended: {why}", limit.month))
}

pub fn floor_to(secs: i64, period: i64) -> i64 {
    secs.div_euclid(period) * period
}

/// Usage over one period: one VPS's (or, with an empty `vps_id`, a total).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsagePeriod {
    /// Sums of the hours in the period; `hour_start` is the period's start.
    pub usage: UsageHourRecord,
    /// Unix seconds, exclusive.
    pub period_end: i64,
}

/// Which usage a query covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: String,
    /// VPS id or name; empty for every VPS.
    pub vps: String,
    /// Unix seconds; hours starting in `[from, to)` are included.
    pub from: i64,
    pub to: i64,
    pub daily: bool,
}

/// One page of usage rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsagePage {
    pub rows: Vec<UsagePeriod>,
    pub next_page_token: String,
}

/// A tenant's usage per VPS over a period, and the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSummary {
    pub tenant: String,
    pub per_vps: Vec<UsagePeriod>,
    pub total: UsagePeriod,
}

pub fn row_key(row: &UsagePeriod) -> String {
    format!(
        "{}/{:020}/{}",
        row.usage.tenant,
        row.usage.hour_start.max(0),
        row.usage.vps_id
    )
}

pub fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_token(token: &str) -> Result<String, ValidationError> {
    let bad = || ValidationError::new("page.page_token", "is not a token returned by ListUsage");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(incarnation: &str, sequence: u64, at_secs: i64, cpu_ns: u64) -> Sample {
        Sample {
            vps_id: "v1".into(),
            incarnation: incarnation.into(),
            sequence,
            sampled_at_unix_ms: at_secs * 1000,
            interval_ms: 10_000,
            counters: UsageCounters {
                cpu_usage_ns: cpu_ns,
                memory_bytes: 100,
                memory_peak_bytes: 100,
                net_rx_bytes: cpu_ns,
                disk_used_bytes: 1000,
                ..UsageCounters::default()
            },
        }
    }

    fn cursor(s: &Sample) -> UsageCursorRecord {
        UsageCursorRecord {
            incarnation: s.incarnation.clone(),
            sequence: s.sequence,
            sampled_at_unix_ms: s.sampled_at_unix_ms,
            counters: s.counters.clone(),
            ..UsageCursorRecord::default()
        }
    }

    #[test]
    fn first_sample_counts_everything_so_far() {
        let d = delta(None, &sample("a", 1, 100, 5_000)).expect("accepted");
        assert_eq!(d.cpu_usage_ns, 5_000);
        assert_eq!(d.net_rx_bytes, 5_000);
        assert_eq!(d.memory_byte_seconds, 1000.0);
    }

    #[test]
    fn same_incarnation_counts_the_growth() {
        let last = cursor(&sample("a", 1, 100, 5_000));
        let d = delta(Some(&last), &sample("a", 2, 110, 8_000)).expect("accepted");
        assert_eq!(d.cpu_usage_ns, 3_000);
        assert_eq!(d.memory_byte_seconds, 1000.0);
        assert_eq!(d.disk_byte_seconds, 10_000.0);
    }

    #[test]
    fn counter_going_backwards_is_a_reset() {
        let last = cursor(&sample("a", 1, 100, 5_000));
        let d = delta(Some(&last), &sample("a", 2, 110, 700)).expect("accepted");
        assert_eq!(d.cpu_usage_ns, 700);
    }

    #[test]
    fn new_incarnation_counts_from_zero() {
        let last = cursor(&sample("a", 7, 100, 5_000));
        let d = delta(Some(&last), &sample("b", 8, 110, 9_000)).expect("accepted");
        assert_eq!(d.cpu_usage_ns, 9_000);
    }

    #[test]
    fn repeats_and_older_samples_are_ignored() {
        let last = cursor(&sample("a", 5, 100, 5_000));
        assert_eq!(delta(Some(&last), &sample("a", 5, 100, 5_000)), None);
        assert_eq!(delta(Some(&last), &sample("a", 4, 90, 4_000)), None);
        // An old sample of a previous incarnation arriving late is older too.
        assert_eq!(delta(Some(&last), &sample("z", 3, 80, 1_000)), None);
    }

    #[test]
    fn gauges_are_weighted_by_a_bounded_gap() {
        let last = cursor(&sample("a", 1, 100, 0));
        // Agent silent for an hour: at most two intervals are billed.
        let d = delta(Some(&last), &sample("a", 2, 3700, 0)).expect("accepted");
        assert_eq!(d.memory_byte_seconds, 100.0 * 20.0);
        // Clock went backwards: nothing, never negative.
        let d = delta(Some(&last), &sample("a", 3, 50, 0)).expect("accepted");
        assert_eq!(d.memory_byte_seconds, 0.0);
    }

    #[test]
    fn peak_counts_only_when_the_peak_counter_moved() {
        let mut first = sample("a", 1, 100, 0);
        first.counters.memory_peak_bytes = 10_000;
        let last = cursor(&first);
        let mut next = sample("a", 2, 110, 0);
        next.counters.memory_peak_bytes = 10_000;
        assert_eq!(
            delta(Some(&last), &next)
                .expect("accepted")
                .memory_peak_bytes,
            100
        );
        next.counters.memory_peak_bytes = 20_000;
        assert_eq!(
            delta(Some(&last), &next)
                .expect("accepted")
                .memory_peak_bytes,
            20_000
        );
    }

    /// Replays a stream with a duplicate, an agent restart (same incarnation,
    /// later sequence) and a VPS restart, and checks the sum equals the
    /// counters' true growth.
    #[test]
    fn a_replayed_stream_counts_every_nanosecond_once() {
        let stream = [
            sample("a", 1, 100, 1_000),
            sample("a", 2, 110, 3_000),
            sample("a", 2, 110, 3_000),
            sample("a", 1, 100, 1_000),
            sample("a", 5, 140, 6_000),
            sample("b", 6, 150, 500),
            sample("b", 7, 160, 2_500),
        ];
        let mut last: Option<UsageCursorRecord> = None;
        let mut hour = UsageHourRecord::default();
        for s in &stream {
            if let Some(d) = delta(last.as_ref(), s) {
                accumulate(&mut hour, &d);
                last = Some(cursor(s));
            }
        }
        assert_eq!(hour.cpu_usage_ns, 6_000 + 2_500);
        assert_eq!(hour.samples, 5);
    }

    #[test]
    fn transfer_thresholds_fire_once_each() {
        assert!(transfer_thresholds(0, 1 << 40, 0).is_empty());
        assert!(transfer_thresholds(1000, 799, 0).is_empty());
        assert_eq!(
            transfer_thresholds(1000, 800, 0),
            vec![EventKind::Transfer80Percent]
        );
        assert!(transfer_thresholds(1000, 900, 80).is_empty());
        assert_eq!(
            transfer_thresholds(1000, 1000, 80),
            vec![EventKind::Transfer100Percent]
        );
        assert_eq!(
            transfer_thresholds(1000, 5000, 0),
            vec![EventKind::Transfer80Percent, EventKind::Transfer100Percent]
        );
        assert!(transfer_thresholds(1000, 5000, 100).is_empty());
    }

    #[test]
    fn limits_are_swept_only_after_a_month_began() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("instant")
                .with_timezone(&Utc)
        };
        assert!(limit_sweep_due(None, at("2026-12-07T10:00:00Z")));
        // Within a month: nothing can have ended.
        assert!(!limit_sweep_due(
            Some(at("2026-12-01T00:10:00Z")),
            at("2026-12-31T23:59:59Z")
        ));
        // The month's first tick, and the first after the grace; not in between.
        let last_of_november = at("2026-11-30T23:59:55Z");
        let first_december_sweep = at("2026-12-01T00:00:05Z");
        assert!(limit_sweep_due(
            Some(last_of_november),
            first_december_sweep
        ));
        assert!(!limit_sweep_due(
            Some(first_december_sweep),
            at("2026-12-01T00:04:59Z")
        ));
        assert!(limit_sweep_due(
            Some(first_december_sweep),
            at("2026-12-01T00:05:01Z")
        ));
        assert!(!limit_sweep_due(
            Some(at("2026-12-01T00:05:01Z")),
            at("2026-12-01T00:09:00Z")
        ));
        // Across the year's end.
        assert!(limit_sweep_due(
            Some(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:01Z")
        ));
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let key = "acme/00000000000000003600/v1";
        assert_eq!(decode_token(&encode_token(key)).expect("round trip"), key);
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
    }
}
