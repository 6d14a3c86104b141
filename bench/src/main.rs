//! dgbench: the in-process load generators and sink that bench/run.sh drives.
//!
//! ```text
//! dgbench sink  --listen 127.0.0.1:PORT
//! dgbench raw   --connect 127.0.0.1:PORT --bytes N [--pdu 1048576] [--suite aes128|aes256|plain]
//! dgbench assoc --connect 127.0.0.1:PORT --count N [--concurrency 8] [--seconds 120]
//! dgbench idle  --connect 127.0.0.1:PORT --count N [--associate] [--hold 300] [--sources 8]
//! dgbench aead  [--suite aes256|aes128] [--seconds 2]
//! ```
//! Common: `--calling BUTTERFLY --called STORESCP`. Everything runs on one
//! thread (a current-thread runtime), so the client's CPU share is bounded.

mod aead;
mod clients;
mod net;
mod pdu;
mod sink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clients::Target;
use net::{Client, Suite};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("usage: dgbench sink|raw|assoc|idle|aead [--key value]...");
        return ExitCode::from(64);
    };
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut i = 0;
    while i < rest.len() {
        let key = rest[i].trim_start_matches("--").to_owned();
        if key == "associate" {
            opts.insert(key, "true".to_owned());
            i += 1;
        } else if let Some(v) = rest.get(i + 1) {
            opts.insert(key, v.clone());
            i += 2;
        } else {
            eprintln!("dgbench: --{key} needs a value");
            return ExitCode::from(64);
        }
    }
    match run(command, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dgbench {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn get<T: std::str::FromStr>(opts: &HashMap<String, String>, key: &str, default: Option<T>) -> Result<T, String> {
    match opts.get(key) {
        Some(v) => v.parse().map_err(|_| format!("--{key} {v:?} is not valid")),
        None => default.ok_or_else(|| format!("--{key} is required")),
    }
}

fn run(command: &str, opts: &HashMap<String, String>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    if command == "aead" {
        let suite: String = get(opts, "suite", Some("aes256".to_owned()))?;
        let seconds: u64 = get(opts, "seconds", Some(2))?;
        return aead::run(&suite, Duration::from_secs(seconds.clamp(1, 60)));
    }
    if command == "sink" {
        let listen: SocketAddr = get(opts, "listen", None)?;
        return rt.block_on(sink::run(listen)).map_err(|e| e.to_string());
    }
    let target = Target {
        addr: get(opts, "connect", None)?,
        calling: get(opts, "calling", Some("BUTTERFLY".to_owned()))?,
        called: get(opts, "called", Some("STORESCP".to_owned()))?,
    };
    let suite_name: String = get(opts, "suite", Some("aes128".to_owned()))?;
    let suite = Suite::parse(&suite_name).ok_or("--suite is aes128, aes256 or plain")?;
    let client = Client::new(suite);
    let secs = |key: &str, default: u64| get(opts, key, Some(default)).map(Duration::from_secs);
    let result = match command {
        "raw" => {
            let bytes: u64 = get(opts, "bytes", None)?;
            let pdu: usize = get(opts, "pdu", Some(1 << 20))?;
            if !(64..=(64 << 20)).contains(&pdu) {
                return Err("--pdu must be 64 bytes to 64 MiB".to_owned());
            }
            let limit = secs("seconds", 300)?;
            rt.block_on(async {
                tokio::time::timeout(limit, clients::raw(&client, &target, bytes, pdu))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("time limit reached")))
            })
        }
        "assoc" => {
            let count: u64 = get(opts, "count", None)?;
            let concurrency: usize = get(opts, "concurrency", Some(1))?;
            let limit = secs("seconds", 120)?;
            rt.block_on(clients::assoc(Arc::new(client), Arc::new(target), count, concurrency.max(1), limit))
        }
        "idle" => {
            let count: usize = get(opts, "count", None)?;
            let hold = secs("hold", 300)?;
            let associate = opts.contains_key("associate");
            let sources: u8 = get(opts, "sources", Some(1))?;
            rt.block_on(clients::idle(Arc::new(client), Arc::new(target), count, associate, hold, sources.max(1)))
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    result.map_err(|e| e.to_string())
}
