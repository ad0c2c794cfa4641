//! The device policy on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the VPS's cgroup, allowing read/write of the listed character devices and
//! denying everything else (including mknod). cgroup v1 uses the `devices` controller instead
//! (see `cgroups.rs`); on hybrid hosts the kernel checks both.
//!
//! The program is assembled here from a handful of instructions (no compiler, no libbpf):
//! `ctx` is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` where
//! `access_type = access << 16 | type`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_MKNOD: i32 = 1;

/// Errors loading or attaching the device program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    /// Opening the cgroup directory failed.
    #[error("open {path}: {source}")]
    Open {
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The verifier rejected the program, or attaching it failed.
    #[error("{operation}: {source}")]
    Bpf {
        /// `BPF_PROG_LOAD` or `BPF_PROG_ATTACH`.
        operation: &'static str,
        /// The errno.
        source: Errno,
    },
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_IMM: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_IMM: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JSET_IMM: u8 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The program: allow read/write of each `(major, minor)` character device (`minor` -1 = any),
/// deny the rest.
pub fn program(allowed: &[(i64, i64, &str)]) -> Vec<Insn> {
    // r2 = access, r3 = type, r4 = major, r5 = minor
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(MOV64_REG, 3, 2, 0, 0),
        insn(AND64_IMM, 3, 0, 0, 0xffff),
        insn(RSH64_IMM, 2, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for (major, minor, _) in allowed {
        let (Ok(major), minor) = (i32::try_from(*major), i32::try_from(*minor).ok()) else {
            continue;
        };
        let mut checks = vec![
            insn(JNE_IMM, 3, 0, 0, BPF_DEVCG_DEV_CHAR),
            insn(JNE_IMM, 4, 0, 0, major),
        ];
        if let Some(minor) = minor.filter(|m| *m >= 0) {
            checks.push(insn(JNE_IMM, 5, 0, 0, minor));
        }
        checks.push(insn(JSET_IMM, 2, 0, 0, BPF_DEVCG_ACC_MKNOD));
        // Each check jumps past the rest of this rule: the remaining checks and the two
        // "return 1" instructions.
        let count = checks.len();
        for (index, check) in checks.iter_mut().enumerate() {
            check.off = i16::try_from(count - index - 1 + 2).unwrap_or(i16::MAX);
        }
        prog.extend(checks);
        prog.push(insn(MOV64_IMM, 0, 0, 0, 1));
        prog.push(insn(EXIT, 0, 0, 0, 0));
    }
    prog.push(insn(MOV64_IMM, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    padding: [u8; 80],
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_ATTACH`, zero-padded.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    padding: [u8; 44],
}

fn bpf<T>(command: libc::c_int, attr: &T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a fully initialised, zero-padded bpf_attr prefix of the size passed;
    // the kernel only reads it (and the buffers it points to, which the caller keeps alive).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// Loads [`program`] for `allowed` and attaches it to the cgroup v2 directory `cgroup_dir`.
/// A cgroup that already has a device program (ours, from an earlier start) is left as is.
pub fn attach(cgroup_dir: &Path, allowed: &[(i64, i64, &str)]) -> Result<(), DeviceFilterError> {
    let insns = program(allowed);
    let license = c"GPL";
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        padding: [0; 80],
    };
    let raw = bpf(BPF_PROG_LOAD, &load).map_err(|source| DeviceFilterError::Bpf {
        operation: "BPF_PROG_LOAD (device filter)",
        source,
    })?;
    let raw = i32::try_from(raw).map_err(|_| DeviceFilterError::Bpf {
        operation: "BPF_PROG_LOAD (device filter)",
        source: Errno::EBADF,
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(raw) };
    let cgroup = File::open(cgroup_dir).map_err(|source| DeviceFilterError::Open {
        path: cgroup_dir.to_path_buf(),
        source,
    })?;
    let attach = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or_default(),
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or_default(),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        replace_bpf_fd: 0,
        padding: [0; 44],
    };
    match bpf(BPF_PROG_ATTACH, &attach) {
        // The attachment holds its own reference: the program stays after our fd closes.
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(source) => Err(DeviceFilterError::Bpf {
            operation: "BPF_PROG_ATTACH (device filter)",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_shape_and_jumps() {
        let prog = program(&[(1, 3, "null"), (136, -1, "pts")]);
        // 6 prologue + (4 checks + 2) + (3 checks + 2) + 2 epilogue
        assert_eq!(prog.len(), 6 + 6 + 5 + 2);
        // The first rule's checks all land on the second rule's first check.
        for (index, check) in prog[6..10].iter().enumerate() {
            assert_eq!(6 + index + 1 + check.off as usize, 12, "{check:?}");
        }
        assert_eq!(prog.last().map(|i| i.code), Some(EXIT));
    }
}
