//! Running the real `silt` CLI.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::bin_path;

/// What a `silt` run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `silt --broker <broker> <args…>` with empty stdin.
pub fn run_cli(broker: &str, args: &[&str]) -> CliOutput {
    run_cli_with_input(broker, args, b"")
}

/// Runs `silt --broker <broker> <args…>` with `input` on stdin.
pub fn run_cli_with_input(broker: &str, args: &[&str], input: &[u8]) -> CliOutput {
    let mut child = Command::new(bin_path("silt"))
        .arg("--broker")
        .arg(broker)
        .args(args)
        .env_remove("SILT_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn silt");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for silt");
    let _ = writer.join();
    let out = CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("$ silt {} → {:?}\n{}", args.join(" "), out.code, out.stderr);
    out
}
