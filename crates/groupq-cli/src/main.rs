//! `groupq`: quantize model checkpoints from the shell.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(groupq_cli::cli::main_with_args(std::env::args_os()) as u8)
}
