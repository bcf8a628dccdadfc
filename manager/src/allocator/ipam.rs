//! IPv4 address management: subnets (parse, print, overlap), picking a free subnet from the
//! cluster's address pools, and picking free addresses inside a network's subnet.
//!
//! Pure functions over plain data: what is in use is always derived from the store by the
//! caller, so nothing here can drift from the replicated state. The only state kept between
//! rounds is a cursor per network, so that a freed address is not handed out again at once
//! (stale ARP and DNS caches elsewhere would still point at the old holder).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a subnet or address could not be parsed or allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Not `a.b.c.d/len` with len 0..=32.
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.0.1.0/24")]
    BadSubnet(String),
    /// Host bits are set in the subnet address.
    #[error("invalid subnet {given}: it should be {canonical}")]
    NotCanonical {
        /// What was given.
        given: String,
        /// The subnet it names.
        canonical: String,
    },
    /// Not an IPv4 address.
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    /// Smaller than a /30: no room for a gateway and one address.
    #[error("subnet {0} is too small (at most /30)")]
    TooSmall(String),
}

/// An IPv4 subnet: a network address with no host bits set, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    net: u32,
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Subnet {
    /// The subnet `addr/prefix`, host bits cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet {
            net: u32::from(addr) & mask(prefix),
            prefix,
        }
    }

    /// Parses `a.b.c.d/len`, refusing host bits (Docker's "it should be" error).
    pub fn parse(text: &str) -> Result<Subnet, IpamError> {
        let (addr, prefix) = parse_cidr(text)?;
        let s = Subnet::new(addr, prefix);
        if s.network() != addr {
            return Err(IpamError::NotCanonical {
                given: text.to_owned(),
                canonical: s.to_string(),
            });
        }
        Ok(s)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first address (the network address).
    pub fn first(&self) -> u32 {
        self.net
    }

    /// The last address (the broadcast address).
    pub fn last(&self) -> u32 {
        self.net | !mask(self.prefix)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.net
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The default gateway: the first host address.
    pub fn default_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net.saturating_add(1))
    }

    /// `ip` with this subnet's prefix, e.g. `10.0.1.5/24`.
    pub fn cidr_of(&self, ip: Ipv4Addr) -> String {
        format!("{ip}/{}", self.prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Subnet::parse(s)
    }
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), IpamError> {
    let bad = || IpamError::BadSubnet(text.to_owned());
    let (addr, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// Parses an address given as `a.b.c.d` or `a.b.c.d/len` (the prefix is ignored).
pub fn parse_addr(text: &str) -> Result<Ipv4Addr, IpamError> {
    let ip = text.split_once('/').map_or(text, |(ip, _)| ip);
    ip.trim()
        .parse()
        .map_err(|_| IpamError::BadAddress(text.to_owned()))
}

/// The first subnet of `prefix` bits inside one of `pools` (in order) that overlaps none of
/// `used`; `None` when the pools are full.
pub fn pick_subnet(pools: &[Subnet], prefix: u8, used: &[Subnet]) -> Option<Subnet> {
    for pool in pools {
        if prefix < pool.prefix() || prefix > 30 {
            continue;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        let mut at = u64::from(pool.first());
        while at <= u64::from(pool.last()) {
            let candidate = Subnet::new(Ipv4Addr::from(at as u32), prefix);
            match used
                .iter()
                .filter(|u| u.overlaps(&candidate))
                .map(|u| u.last())
                .max()
            {
                None => return Some(candidate),
                // Skip past the last address of whatever is in the way.
                Some(last) => {
                    let next = (u64::from(last) + 1).div_ceil(step) * step;
                    at = next.max(at + step);
                }
            }
        }
    }
    None
}

/// The addresses of one network that tasks, VIPs and nodes may get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRange {
    subnet: Subnet,
    lo: u32,
    hi: u32,
    gateway: Ipv4Addr,
}

impl AddressRange {
    /// Every host address of `subnet` (optionally only those in `range`), minus `gateway`.
    pub fn new(
        subnet: Subnet,
        range: Option<Subnet>,
        gateway: Ipv4Addr,
    ) -> Result<AddressRange, IpamError> {
        if subnet.prefix() > 30 {
            return Err(IpamError::TooSmall(subnet.to_string()));
        }
        let (mut lo, mut hi) = (subnet.first() + 1, subnet.last() - 1);
        if let Some(r) = range {
            lo = lo.max(r.first());
            hi = hi.min(r.last());
        }
        Ok(AddressRange {
            subnet,
            lo,
            hi,
            gateway,
        })
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// A free address after `cursor` (wrapping around), skipping the gateway and `used`;
    /// moves the cursor to it. `None` when every address is taken.
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>, cursor: &mut u32) -> Option<Ipv4Addr> {
        if self.lo > self.hi {
            return None;
        }
        let size = u64::from(self.hi - self.lo) + 1;
        let start = if (self.lo..=self.hi).contains(cursor) {
            u64::from(*cursor - self.lo) + 1
        } else {
            0
        };
        for i in 0..size {
            let ip = Ipv4Addr::from(self.lo + ((start + i) % size) as u32);
            if ip != self.gateway && !used.contains(&ip) {
                *cursor = u32::from(ip);
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        Subnet::parse(text).expect("subnet")
    }

    #[test]
    fn subnets_parse_print_and_overlap() {
        assert_eq!(s("10.0.1.0/24").to_string(), "10.0.1.0/24");
        assert!(matches!(
            Subnet::parse("10.0.1.5/24"),
            Err(IpamError::NotCanonical { canonical, .. }) if canonical == "10.0.1.0/24"
        ));
        assert!(Subnet::parse("10.0.1.0").is_err());
        assert!(Subnet::parse("10.0.1.0/33").is_err());
        assert!(Subnet::parse("fe80::/64").is_err());
        assert!(s("10.0.0.0/8").overlaps(&s("10.3.0.0/16")));
        assert!(!s("10.0.0.0/24").overlaps(&s("10.0.1.0/24")));
        assert!(s("10.0.1.0/24").contains("10.0.1.255".parse().expect("ip")));
        assert_eq!(s("10.0.1.0/24").default_gateway().to_string(), "10.0.1.1");
        assert_eq!(parse_addr("10.0.0.7/24"), Ok(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn subnets_come_from_the_pools_in_order_around_what_is_used() {
        let pools = [s("10.0.0.0/8")];
        assert_eq!(pick_subnet(&pools, 24, &[]), Some(s("10.0.0.0/24")));
        let used = [s("10.0.0.0/24"), s("10.0.1.0/24"), s("10.0.2.0/23")];
        assert_eq!(pick_subnet(&pools, 24, &used), Some(s("10.0.4.0/24")));
        // A user subnet that is not aligned to the size is skipped over.
        let used = [s("10.0.0.0/25"), s("10.0.1.128/25")];
        assert_eq!(pick_subnet(&pools, 24, &used), Some(s("10.0.2.0/24")));
        // Full pools: the next pool; none left: None.
        let pools = [s("10.9.0.0/23"), s("10.10.0.0/24")];
        let used = [s("10.9.0.0/24"), s("10.9.1.0/24")];
        assert_eq!(pick_subnet(&pools, 24, &used), Some(s("10.10.0.0/24")));
        let used = [s("10.9.0.0/16"), s("10.10.0.0/16")];
        assert_eq!(pick_subnet(&pools, 24, &used), None);
        // A size larger than the pool does not fit in it.
        assert_eq!(pick_subnet(&[s("10.9.0.0/24")], 16, &[]), None);
    }

    #[test]
    fn addresses_skip_the_gateway_and_move_on_after_a_release() {
        let subnet = s("10.0.1.0/29");
        let range = AddressRange::new(subnet, None, subnet.default_gateway()).expect("range");
        let mut used = HashSet::new();
        let mut cursor = 0;
        let mut got = Vec::new();
        while let Some(ip) = range.allocate(&used, &mut cursor) {
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"]
        );
        // Freed .3: the next allocation still finds it (the only one), after wrapping.
        used.remove(&Ipv4Addr::new(10, 0, 1, 3));
        assert_eq!(
            range.allocate(&used, &mut cursor),
            Some(Ipv4Addr::new(10, 0, 1, 3))
        );
        // With room after the cursor, a freed address is not reused at once.
        let range =
            AddressRange::new(s("10.0.2.0/24"), None, Ipv4Addr::new(10, 0, 2, 1)).expect("range");
        let mut used: HashSet<Ipv4Addr> = HashSet::new();
        let mut cursor = 0;
        let a = range.allocate(&used, &mut cursor).expect("a");
        used.insert(a);
        let b = range.allocate(&used, &mut cursor).expect("b");
        used.remove(&a);
        let c = range.allocate(&used, &mut cursor).expect("c");
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.0.2.2".into(), "10.0.2.3".into())
        );
        assert_eq!(c.to_string(), "10.0.2.4");
        // A sub-range limits the addresses.
        let range = AddressRange::new(
            s("10.0.3.0/24"),
            Some(s("10.0.3.128/30")),
            Ipv4Addr::new(10, 0, 3, 1),
        )
        .expect("range");
        let mut cursor = 0;
        assert_eq!(
            range.allocate(&HashSet::new(), &mut cursor),
            Some(Ipv4Addr::new(10, 0, 3, 128))
        );
        assert!(matches!(
            AddressRange::new(s("10.0.0.0/31"), None, Ipv4Addr::new(10, 0, 0, 1)),
            Err(IpamError::TooSmall(_))
        ));
    }
}
