//! `exec` with a TTY: the command gets a pseudo-terminal of the VPS's own devpts as its
//! controlling terminal, with the requested window size, resizable while it runs, and its
//! exit code comes back.

mod common;

use std::time::Duration;

use common::*;
use paddock_agent::runtime::TtySize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn exec_with_a_tty_passes_window_sizes_and_the_exit_code() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let init_pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&vps_id, small_limits()))
            .expect("apply"),
    );
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (output, code) = tokio.block_on(async {
        let (mut child, mut resize) = fixture
            .runtime
            .exec_tty(
                &vps_id,
                &["sh".to_string()],
                &[],
                TtySize {
                    rows: 40,
                    cols: 100,
                },
            )
            .expect("exec tty");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut output = String::new();
        let mut buffer = vec![0u8; 4096];
        stdin
            .write_all(b"stty size; tty; echo step-$((1+1))\n")
            .await
            .expect("write");
        while !output.contains("step-2\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buffer))
                .await
                .expect("tty output timed out")
                .expect("read");
            assert_ne!(n, 0, "EOF too early: {output}");
            output.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        resize
            .resize(TtySize {
                rows: 50,
                cols: 120,
            })
            .expect("resize");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stdin
            .write_all(b"stty size; exit 3\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stdout.read_to_end(&mut rest))
            .await
            .expect("timed out")
            .expect("read");
        output.push_str(&String::from_utf8_lossy(&rest));
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("wait timed out")
            .expect("wait");
        (output, status.code())
    });
    assert_eq!(code, Some(3), "{output}");
    assert!(output.contains("40 100"), "initial size: {output}");
    assert!(
        output.contains("/dev/pts/0"),
        "controlling terminal: {output}"
    );
    assert!(output.contains("50 120"), "resized: {output}");

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid]);
}
