//! Test-only fault points: in debug builds, `PADDOCK_TEST_FAULT=<point>` makes the agent kill
//! itself with SIGKILL when it reaches `<point>`, so the multi-node tests can crash it at an
//! exact step (e.g. `migrate:after-export`). Release builds compile this to nothing.

/// Dies at once (SIGKILL, as `kill -9`) if the environment names `point`; debug builds only.
pub fn hit(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PADDOCK_TEST_FAULT").is_ok_and(|wanted| wanted == point) {
        tracing::warn!(point, "test fault point reached: killing the agent");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
