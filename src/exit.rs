//! Process exit codes. Stable: scripts and systemd units rely on them
//! (docs/operations.md, "Command line and exit codes"). A module of its own so that the commands
//! (`check`, `echo`, `gen-cert`) and `main` share them without importing `cli`.

/// Success.
pub const OK: u8 = 0;
/// The operation ran and failed (echo rejected, backend unreachable, runtime error).
pub const FAILURE: u8 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: u8 = 2;
/// The configuration file (or a certificate/key it names) is invalid.
pub const CONFIG: u8 = 64;

// `dicomgate echo` only (table in `echo`'s module docs and docs/operations.md):
// one code per kind of failure, so scripts can tell them apart.
/// echo: the association was rejected (A-ASSOCIATE-RJ).
pub const ECHO_REJECTED: u8 = 3;
/// echo: aborted (A-ABORT), closed or reset by the peer, or not DICOM.
pub const ECHO_ABORTED: u8 = 4;
/// echo: TLS failed (certificate, alert, handshake).
pub const ECHO_TLS: u8 = 5;
/// echo: the `--timeout` deadline passed.
pub const ECHO_TIMEOUT: u8 = 6;
/// echo: cannot connect (refused, unreachable, name lookup failed).
pub const ECHO_UNREACHABLE: u8 = 7;
/// echo: associated, but Verification refused or C-ECHO status not Success.
pub const ECHO_FAILED: u8 = 8;
