//! Linux capability names, numbers and the Docker default set.
//!
//! Capabilities are carried as a `u64` bit mask (bit n = capability n). This module owns the
//! name table, Docker's 14-capability default and the `--cap-add` / `--cap-drop` arithmetic;
//! applying a mask to a process lives in `runtime::sys`.

use std::fmt;

/// Highest capability number this table knows (`CAP_CHECKPOINT_RESTORE`).
pub const CAP_LAST_KNOWN: u32 = 40;

/// Capability names in kernel order, without the `CAP_` prefix.
const NAMES: [&str; (CAP_LAST_KNOWN + 1) as usize] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Capability number of `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;

/// Errors of capability name handling.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapsError {
    /// A name that is not a known capability.
    #[error("unknown capability {0:?}")]
    Unknown(String),
}

/// A set of capabilities as a bit mask.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The empty set.
    pub const EMPTY: CapSet = CapSet(0);

    /// Every capability this table knows.
    pub fn all_known() -> CapSet {
        CapSet((1u64 << (CAP_LAST_KNOWN + 1)) - 1)
    }

    /// Docker's default 14 capabilities (CapEff `00000000a80425fb`).
    pub fn docker_default() -> CapSet {
        let mut set = CapSet::EMPTY;
        for name in DOCKER_DEFAULT {
            if let Some(n) = number(name) {
                set.insert(n);
            }
        }
        set
    }

    /// Adds capability `n`.
    pub fn insert(&mut self, n: u32) {
        self.0 |= 1u64 << n;
    }

    /// Removes capability `n`.
    pub fn remove(&mut self, n: u32) {
        self.0 &= !(1u64 << n);
    }

    /// Whether capability `n` is in the set.
    pub fn contains(&self, n: u32) -> bool {
        n < 64 && self.0 & (1u64 << n) != 0
    }

    /// Names (without `CAP_`) of the capabilities in the set, in kernel order.
    pub fn names(&self) -> Vec<&'static str> {
        (0..=CAP_LAST_KNOWN)
            .filter(|n| self.contains(*n))
            .map(|n| NAMES[n as usize])
            .collect()
    }

    /// Applies Docker's `--cap-add` / `--cap-drop` rules to `self` (the default set):
    /// `ALL` in `add` starts from every capability, `ALL` in `drop` starts from none; then
    /// the named drops are removed and the named adds inserted (an explicit add wins over a
    /// drop of `ALL`, a named drop wins over an add of `ALL`).
    pub fn with_changes(self, add: &[String], drop: &[String]) -> Result<CapSet, CapsError> {
        let is_all = |s: &String| s.eq_ignore_ascii_case("ALL");
        let mut set = self;
        if add.iter().any(is_all) {
            set = CapSet::all_known();
        }
        if drop.iter().any(is_all) {
            set = CapSet::EMPTY;
        }
        for name in drop.iter().filter(|s| !is_all(s)) {
            set.remove(parse(name)?);
        }
        for name in add.iter().filter(|s| !is_all(s)) {
            set.insert(parse(name)?);
        }
        if add.iter().any(is_all) {
            for name in drop.iter().filter(|s| !is_all(s)) {
                set.remove(parse(name)?);
            }
        }
        Ok(set)
    }
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapSet({:016x} {:?})", self.0, self.names())
    }
}

/// Number of a capability name (without `CAP_`, upper case).
fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|p| p as u32)
}

/// Parses `net_admin`, `NET_ADMIN` or `CAP_NET_ADMIN` into a capability number.
pub fn parse(name: &str) -> Result<u32, CapsError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    number(bare).ok_or_else(|| CapsError::Unknown(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_matches_the_known_cap_eff() {
        assert_eq!(CapSet::docker_default().0, 0x0000_0000_a804_25fb);
        assert_eq!(CapSet::docker_default().names().len(), 14);
    }

    #[test]
    fn parse_accepts_prefix_and_case() {
        assert_eq!(parse("CAP_SYS_ADMIN"), Ok(SYS_ADMIN));
        assert_eq!(parse("sys_admin"), Ok(SYS_ADMIN));
        assert_eq!(parse("chown"), Ok(0));
        assert!(matches!(parse("NOPE"), Err(CapsError::Unknown(_))));
    }

    #[test]
    fn add_and_drop_follow_docker_rules() {
        let d = CapSet::docker_default();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let set = d.with_changes(&s(&["NET_ADMIN"]), &s(&["CHOWN"])).unwrap();
        assert!(set.contains(12));
        assert!(!set.contains(0));
        let only = d.with_changes(&s(&["KILL"]), &s(&["ALL"])).unwrap();
        assert_eq!(only.names(), vec!["KILL"]);
        let all = d.with_changes(&s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        assert!(!all.contains(SYS_ADMIN));
        assert!(all.contains(39));
        assert!(d.with_changes(&s(&["BOGUS"]), &[]).is_err());
    }
}
