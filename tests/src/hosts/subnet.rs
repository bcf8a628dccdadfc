//! Leases of private /24 subnets from 10.200.0.0/13, unique across every test process.
//!
//! A lease is an exclusive `flock` on `/run/berth-tests/subnets/10.X.Y.0`, held by an open file
//! for the life of the [`Lease`]. The kernel drops the lock when the file is closed or the
//! process dies, so a crashed test never keeps a subnet and no pid bookkeeping is needed. Lock
//! files stay on disk (at most 2048 empty-ish files); only the lock means "taken".

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock files live.
pub(crate) const LEASE_DIR: &str = "/run/berth-tests/subnets";

/// Number of /24 subnets in 10.200.0.0/13.
const POOL_SIZE: u32 = 2048;

/// A /24 subnet owned by one test network until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    network: Ipv4Addr,
    _lock: Flock<File>,
}

impl Lease {
    /// Leases a free subnet, probing from a slot derived from `pid` and `counter` so that
    /// parallel tests usually get their first choice.
    pub(crate) fn acquire(dir: &Path, pid: u32, counter: u32) -> anyhow::Result<Lease> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        let start = pid.wrapping_mul(61).wrapping_add(counter.wrapping_mul(7)) % POOL_SIZE;
        for step in 0..POOL_SIZE {
            let network = slot_network((start + step) % POOL_SIZE);
            let path = dir.join(network.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening subnet lock {path:?}"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // The owner is written for people debugging; the lock is what counts.
                    lock.set_len(0)
                        .and_then(|()| writeln!(lock, "{pid}"))
                        .with_context(|| format!("writing owner into {path:?}"))?;
                    return Ok(Lease {
                        network,
                        _lock: lock,
                    });
                }
                Err((_, Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => return Err(e).with_context(|| format!("flock of {path:?}")),
            }
        }
        bail!("all {POOL_SIZE} test subnets in 10.200.0.0/13 are leased (see {dir:?})")
    }

    /// The network address, `10.X.Y.0`.
    pub(crate) fn network(&self) -> Ipv4Addr {
        self.network
    }
}

/// Network address of pool slot `slot` (< [`POOL_SIZE`]).
fn slot_network(slot: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200 + (slot / 256) as u8, (slot % 256) as u8, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_slash_13() {
        assert_eq!(slot_network(0), Ipv4Addr::new(10, 200, 0, 0));
        assert_eq!(slot_network(257), Ipv4Addr::new(10, 201, 1, 0));
        assert_eq!(slot_network(POOL_SIZE - 1), Ipv4Addr::new(10, 207, 255, 0));
    }

    #[test]
    fn a_held_lease_is_not_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::acquire(dir.path(), 42, 0).unwrap();
        let b = Lease::acquire(dir.path(), 42, 0).unwrap();
        assert_ne!(a.network(), b.network());
        let first = a.network();
        drop(a);
        let c = Lease::acquire(dir.path(), 42, 0).unwrap();
        assert_eq!(c.network(), first, "a released subnet is free again");
    }
}
