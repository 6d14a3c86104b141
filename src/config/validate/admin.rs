//! `admin`: the admin endpoint's address and access list (`admin.allow`).

use super::listeners::parse_cidr;
use super::Validator;
use crate::config::raw::RawAdmin;
use crate::config::AdminConfig;

/// `admin`: the address, and who may use it. Unlike a listener's, the allow
/// list has a default (loopback only: the endpoint's usual users are local),
/// but an explicit empty list is refused rather than read as "nobody".
pub(super) fn validate_admin(v: &mut Validator<'_>, raw: RawAdmin) -> Option<AdminConfig> {
    let listen = v.socket_addr("admin.listen", &raw.listen);
    let allow = match raw.allow {
        None => DEFAULT_ADMIN_ALLOW.iter().filter_map(|n| n.parse().ok()).collect(),
        Some(list) if list.is_empty() => {
            v.issue(
                "admin.allow",
                "is empty: list who may read the admin endpoint, e.g. [127.0.0.0/8, \"::1/128\", 10.20.0.5/32], or omit it for loopback only",
            );
            Vec::new()
        }
        Some(list) => {
            let mut nets = Vec::new();
            for (i, entry) in list.iter().enumerate() {
                match parse_cidr(entry) {
                    Ok(net) => nets.push(net),
                    Err(why) => v.issue(format!("admin.allow[{i}]"), format!("{entry:?} {why}")),
                }
            }
            nets
        }
    };
    listen.map(|listen| AdminConfig { listen, allow })
}

/// `admin.allow` when absent: this host only.
pub const DEFAULT_ADMIN_ALLOW: [&str; 2] = ["127.0.0.0/8", "::1/128"];
