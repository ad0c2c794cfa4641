//! The processes of a VPS and the agent's helpers that make them: the re-executed helper
//! (`paddock-agent __internal ...`), the start path and the supervisor that stops and kills,
//! exec into a running VPS, the console supervisor, and pid-reuse-safe process identities.
//!
//! Process tree of a running VPS: the agent spawns the start helper, which forks the console
//! supervisor (which stays, detached) and clones the VPS's init into its new namespaces; the
//! helper exits once the init has exec'd.

pub mod console;
pub(crate) mod exec;
pub(crate) mod helper;
pub(crate) mod identity;
pub(crate) mod supervisor;
