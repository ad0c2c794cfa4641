//! The VPS's seccomp filter: everything is allowed except the system calls that reach past the
//! container boundary (kernel modules, kexec, the kernel keyring, file handles, io_uring) and
//! host reboots, which fail with `EPERM`. Built with seccompiler (Firecracker's BPF compiler).
//! With the VPS's own /proc view, sysinfo and sched_getaffinity go to the VPS's sysinfo server
//! first ([`with_sysinfo_notify`], [`super::sysinfo`]).
//!
//! Installed by the VPS's init and by exec'd commands right before `execve`, without
//! `no_new_privs` (so setuid binaries inside the VPS keep working): the process is root in the
//! VPS's user namespace and so has `CAP_SYS_ADMIN` there, which the kernel accepts instead.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::runtime::sys;

/// System calls that always fail with `EPERM` inside a VPS.
pub const DENIED_SYSCALLS: &[(&str, libc::c_long)] = &[
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("syslog", libc::SYS_syslog),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
];

/// `reboot(2)` commands a VPS may use: in a child pid namespace they only end that namespace
/// (its init exits), which is how `poweroff` and `reboot` work inside the VPS. Every other
/// command (kexec, suspend, Ctrl-Alt-Del handling) is denied.
pub const ALLOWED_REBOOT_CMDS: &[u32] = &[
    0x0123_4567, // LINUX_REBOOT_CMD_RESTART
    0xA1B2_C3D4, // LINUX_REBOOT_CMD_RESTART2
    0xCDEF_0123, // LINUX_REBOOT_CMD_HALT
    0x4321_FEDC, // LINUX_REBOOT_CMD_POWER_OFF
];

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected the rules (a bug in this module).
    #[error("build seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("install seccomp filter: {0}")]
    Install(Errno),
}

fn build_err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Build(e.to_string())
}

/// The compiled VPS filter for this machine's architecture.
pub fn vps_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    // One rule, all conditions ANDed: the command is none of the allowed ones.
    let conditions = ALLOWED_REBOOT_CMDS
        .iter()
        .map(|cmd| {
            SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                u64::from(*cmd),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(build_err)?;
    rules.insert(
        libc::SYS_reboot,
        vec![SeccompRule::new(conditions).map_err(build_err)?],
    );
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build_err)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(build_err)?;
    filter.try_into().map_err(build_err)
}

/// `AUDIT_ARCH_*` of this build's architecture (what `seccomp_data.arch` holds).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `program` with sysinfo(2) and sched_getaffinity(2) of this architecture handed to a
/// user-space listener (`SECCOMP_RET_USER_NOTIF`, see [`super::sysinfo`]) before any other
/// rule. The prefix only jumps forwards past itself, so `program`'s relative jumps stay valid.
pub fn with_sysinfo_notify(program: &BpfProgram) -> BpfProgram {
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut out = vec![
        insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(BPF_JEQ_K, 0, 4, AUDIT_ARCH),
        insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(BPF_JEQ_K, 1, 0, libc::SYS_sysinfo as u32),
        insn(BPF_JEQ_K, 0, 1, libc::SYS_sched_getaffinity as u32),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
    ];
    out.extend_from_slice(program);
    out
}

/// Installs `program` and returns its notification listener (`SECCOMP_FILTER_FLAG_NEW_LISTENER`,
/// close-on-exec), for a program from [`with_sysinfo_notify`]. Same privilege rules as
/// [`install`].
pub fn install_with_listener(program: &BpfProgram) -> Result<OwnedFd, SeccompError> {
    filter_len(program)?;
    sys::seccomp_filter_with_listener(program).map_err(SeccompError::Install)
}

/// Installs `program` on the calling thread (inherited across fork and exec). Requires
/// `CAP_SYS_ADMIN` in the caller's user namespace, since `no_new_privs` is deliberately not set.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    filter_len(program)?;
    sys::seccomp_set_mode_filter(program, 0)
        .map(drop)
        .map_err(SeccompError::Install)
}

/// A program the kernel's `sock_fprog` can carry (at most `u16::MAX` instructions).
fn filter_len(program: &BpfProgram) -> Result<u16, SeccompError> {
    u16::try_from(program.len()).map_err(|_| build_err("filter too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles() {
        let program = vps_filter().expect("compiles");
        assert!(program.len() > DENIED_SYSCALLS.len());
        let notify = with_sysinfo_notify(&program);
        assert_eq!(notify.len(), program.len() + 6);
        assert_eq!(notify[5].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(notify[6].code, program[0].code);
    }
}
