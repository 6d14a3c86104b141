//! `dgbench aead`: the physical floor of a TLS relay's data path on this
//! machine — AES-GCM on one core through aws-lc-rs (the library the
//! gateway uses), on 16 KiB records, in place. Each record is sealed and
//! opened again in the same buffer (no copy, no allocation), so the figure
//! is the cost of one direction's encryption or decryption per GB, averaged
//! over both. CPU time is the thread's own (/proc/thread-self/schedstat),
//! not the wall clock: neighbours on a shared machine do not inflate it.

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};

const RECORD: usize = 16 * 1024;

/// Nanoseconds this thread has run.
fn thread_cpu_ns() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("unreadable /proc/thread-self/schedstat"))
}

pub fn run(suite: &str, seconds: Duration) -> Result<(), String> {
    let (algorithm, key_len) = match suite {
        "aes256" => (&AES_256_GCM, 32),
        "aes128" => (&AES_128_GCM, 16),
        other => return Err(format!("--suite {other:?}: aes128 or aes256")),
    };
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32][..key_len]).map_err(|e| e.to_string())?);
    let mut record = vec![0x5Au8; RECORD + 16];
    let header = [0x17u8, 3, 3, 0x40, 0x11];
    let (mut seq, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let cpu0 = thread_cpu_ns().map_err(|e| e.to_string())?;
    while start.elapsed() < seconds {
        for _ in 0..64 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&seq.to_be_bytes());
            seq += 1;
            let (payload, tag) = record.split_at_mut(RECORD);
            let sealed = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), payload)
                .map_err(|e| e.to_string())?;
            tag.copy_from_slice(sealed.as_ref());
            key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut record)
                .map_err(|_| "a record did not open".to_owned())?;
            bytes += 2 * RECORD as u64;
        }
    }
    let cpu = (thread_cpu_ns().map_err(|e| e.to_string())? - cpu0) as f64 / 1e9;
    println!(
        "aead suite={suite} record={RECORD} bytes={bytes} cpu_s={cpu:.3} cpu_s_per_gb={:.4} mb_per_s={:.0}",
        cpu / (bytes as f64 / 1e9),
        bytes as f64 / 1e6 / cpu
    );
    Ok(())
}
