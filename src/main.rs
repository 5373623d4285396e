//! `trm`: run, inspect, convert and benchmark TRM checkpoints.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, while this is the only thread: no device-select chatter in the
    // middle of `trm bench`'s table when XDG_RUNTIME_DIR is unset.
    trm_wgpu::GpuContext::quiet_device_select();
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, no panic, no backtrace; control characters a
            // hostile file slipped into the message are escaped.
            let message: String = e
                .to_string()
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_debug().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect();
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
