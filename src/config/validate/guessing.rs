//! `listeners.NAME.guessing`: the AE-title guessing protection's settings.

use super::*;

/// A peer that succeeds at least once in ten attempts is never blocked; a
/// guesser gets ten tries per block.
const DEFAULT_AFTER: u32 = 10;
const MAX_AFTER: u32 = 1000;
/// Short enough that a cloud blocked for a configuration mistake is back a
/// minute after the fix; doubling makes a patient guesser's tries rare.
const DEFAULT_BLOCK: Duration = Duration::from_secs(60);
/// The longest a fixed cloud can still be refused (SIGHUP ends it at once).
const DEFAULT_MAX_BLOCK: Duration = Duration::from_secs(600);

pub(super) fn validate_guessing(v: &mut Validator<'_>, key: &str, raw: Option<RawGuessing>) -> GuessingConfig {
    let key = format!("{key}.guessing");
    let raw = raw.unwrap_or(RawGuessing { enabled: None, after: None, block: None, max_block: None });
    let after = raw.after.unwrap_or(DEFAULT_AFTER);
    if !(1..=MAX_AFTER).contains(&after) {
        v.issue(format!("{key}.after"), format!("{after} is out of range: expected 1 to {MAX_AFTER} (default 10)"));
    }
    let block = v.duration(&format!("{key}.block"), raw.block.as_ref(), DEFAULT_BLOCK);
    let max_block = v.duration(&format!("{key}.max_block"), raw.max_block.as_ref(), DEFAULT_MAX_BLOCK.max(block));
    if max_block < block {
        v.issue(
            format!("{key}.max_block"),
            format!("{} is shorter than block ({}): expected at least that", humantime(max_block), humantime(block)),
        );
    }
    GuessingConfig { enabled: raw.enabled.unwrap_or(true), after, block, max_block }
}

fn humantime(d: Duration) -> String {
    ::humantime::format_duration(d).to_string()
}
