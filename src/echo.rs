//! The C-ECHO SCU behind `dicomgate echo` (issue 4).

use crate::cli::EchoArgs;

/// Runs `dicomgate echo`; returns the process exit code.
pub fn echo_command(_args: &EchoArgs) -> u8 {
    eprintln!("dicomgate echo: not implemented yet");
    crate::cli::exit::FAILURE
}
