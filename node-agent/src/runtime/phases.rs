//! Where the time of a start goes: the phases of one `apply` that starts a VPS (create, cgroup,
//! rootfs checks, disk, lxcfs, each step of the start helper, recording the init), measured
//! with a monotonic clock and kept per VPS until the next start or its delete
//! ([`crate::runtime::Runtime::last_start_phases`]), and logged at debug level
//! (`paddock_agent::runtime::phases`).
//!
//! The clock is per thread: an apply runs on one thread from its beginning to its end, and
//! the places that mark a phase need no clock handed through every call. Marking without a
//! running clock (any other call path) does nothing.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, Instant};

use super::process::helper::HelperTimes;

/// The phases of one start, in order, each with how long it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartPhases {
    /// Phase name and duration, in the order they ran. Helper steps are named
    /// `helper: <step>`.
    pub phases: Vec<(String, Duration)>,
}

impl StartPhases {
    /// The sum of all phases: the whole apply.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|(_, took)| *took).sum()
    }
}

impl fmt::Display for StartPhases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (name, took)) in self.phases.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {:.2} ms", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

struct Clock {
    last: Instant,
    phases: Vec<(String, Duration)>,
}

thread_local! {
    static CLOCK: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

/// Times this thread's phases until dropped (or [`take`]n).
pub(crate) struct Timing(());

impl Drop for Timing {
    fn drop(&mut self) {
        CLOCK.with(|clock| clock.borrow_mut().take());
    }
}

/// Starts timing this thread's phases (dropping any unfinished ones).
pub(crate) fn begin() -> Timing {
    CLOCK.with(|clock| {
        *clock.borrow_mut() = Some(Clock {
            last: Instant::now(),
            phases: Vec::new(),
        })
    });
    Timing(())
}

/// Ends the phase that ran since the last mark (or [`begin`]) as `name`.
pub(crate) fn mark(name: &str) {
    CLOCK.with(|clock| {
        if let Some(clock) = clock.borrow_mut().as_mut() {
            let now = Instant::now();
            clock.phases.push((name.to_owned(), now - clock.last));
            clock.last = now;
        }
    });
}

/// Ends the phase that ran the start helper, split into the helper's own steps.
pub(crate) fn mark_helper(times: &HelperTimes) {
    CLOCK.with(|clock| {
        if let Some(clock) = clock.borrow_mut().as_mut() {
            let now = Instant::now();
            let mut helper_total = Duration::ZERO;
            for (step, took) in times.durations() {
                helper_total += took;
                clock.phases.push((format!("helper: {step}"), took));
            }
            // What the clocks do not attribute to a step: building the request, the call.
            let whole = now - clock.last;
            clock
                .phases
                .push(("call helper".to_owned(), whole.saturating_sub(helper_total)));
            clock.last = now;
        }
    });
}

/// Stops timing this thread; the phases marked since [`begin`], if the clock runs.
pub(crate) fn take() -> Option<StartPhases> {
    CLOCK.with(|clock| {
        clock.borrow_mut().take().map(|clock| StartPhases {
            phases: clock.phases,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_kept_in_order_only_while_the_clock_runs() {
        mark("ignored");
        assert_eq!(take(), None);
        let timing = begin();
        mark("first");
        mark_helper(&HelperTimes {
            spawned_ns: 10,
            steps: vec![("step".to_owned(), 30)],
            exited_ns: 70,
        });
        mark("last");
        let phases = take().expect("phases");
        let names: Vec<&str> = phases.phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "first",
                "helper: exec helper",
                "helper: step",
                "call helper",
                "last"
            ]
        );
        assert_eq!(phases.phases[1].1, Duration::from_nanos(20));
        assert_eq!(phases.phases[2].1, Duration::from_nanos(40));
        assert_eq!(take(), None, "take stops the clock");
        mark("after");
        assert_eq!(take(), None);
        drop(timing);

        let timing = begin();
        mark("dropped");
        drop(timing);
        assert_eq!(take(), None, "dropping the timing stops the clock");
    }
}
