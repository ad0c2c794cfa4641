//! Shell scripts (busybox, run inside VPSes) for one TCP message between two VPSes.
//!
//! The listener runs in the background with its stdin a pipe that stays open: busybox `nc -l`
//! with `</dev/null` may end on that EOF before it read the socket (seen under load), so what
//! arrives goes to a file that [`received`] shows. The sender retries while nothing listens yet.

/// Starts a listener on `port` in the background; returns at once.
pub fn listen(port: u16) -> String {
    format!(
        "rm -f /tmp/got-{port}; (sleep 60 | nc -l -p {port} >/tmp/got-{port} 2>/dev/null) \
         </dev/null >/dev/null 2>&1 &"
    )
}

/// Sends `message` to `ip:port`, retrying for up to ~20 s; fails if it never connected.
pub fn send(ip: &str, port: u16, message: &str) -> String {
    format!(
        "for i in $(seq 1 40); do echo {message} | nc -w 3 {ip} {port} && exit 0; \
         sleep 0.5; done; exit 1"
    )
}

/// Prints what the listener on `port` received, waiting up to ~10 s for it.
pub fn received(port: u16) -> String {
    format!(
        "for i in $(seq 1 40); do [ -s /tmp/got-{port} ] && exec cat /tmp/got-{port}; \
         sleep 0.25; done"
    )
}
