//! IPv4 prefixes: the pool, the project subnets carved from it, their addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix such as `10.213.0.0/16`. The address never has host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    base: u32,
    len: u8,
}

impl Ipv4Net {
    /// The prefix `addr/len`; refuses a length over 32 and an address with host bits set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, String> {
        if len > 32 {
            return Err(format!("prefix length {len} is over 32"));
        }
        let base = u32::from(addr);
        if base & !mask(len) != 0 {
            let net = Ipv4Addr::from(base & mask(len));
            return Err(format!("{addr} has host bits set for /{len} (the network is {net}/{len})"));
        }
        Ok(Self { base, len })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.base
    }

    /// True when the two prefixes share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let len = self.len.min(other.len);
        self.base & mask(len) == other.base & mask(len)
    }

    /// How many `/len` subnets this prefix holds (0 when `len` is shorter than ours).
    pub fn subnet_count(&self, len: u8) -> u32 {
        if len < self.len || len > 32 {
            return 0;
        }
        let bits = u32::from(len - self.len);
        if bits >= 32 { u32::MAX } else { 1u32 << bits }
    }

    /// The `index`-th `/len` subnet, counting from the start of this prefix.
    pub fn subnet(&self, len: u8, index: u32) -> Option<Ipv4Net> {
        if index >= self.subnet_count(len) {
            return None;
        }
        let step = 1u64 << (32 - u32::from(len));
        let base = u64::from(self.base) + u64::from(index) * step;
        Some(Ipv4Net { base: u32::try_from(base).ok()?, len })
    }

    /// The address `index` places after the network address.
    pub fn host(&self, index: u32) -> Option<Ipv4Addr> {
        (u64::from(index) < self.size()).then(|| Ipv4Addr::from(self.base + index))
    }

    /// The index of `ip` inside this prefix.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - self.base)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s.trim().split_once('/').ok_or("expected an IPv4 prefix such as 10.213.0.0/16")?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
        Ipv4Net::new(addr, len)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

/// A locally administered MAC derived from an IPv4 address (`02:be:` + the four bytes).
///
/// A container whose address is reused by a later container gets the same MAC, so
/// neighbours' ARP caches stay right; the bridge gets its gateway's, so its MAC does
/// not change as ports come and go.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:be:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_refuses_prefixes() {
        let p = net("10.213.0.0/16");
        assert_eq!(p.addr(), Ipv4Addr::new(10, 213, 0, 0));
        assert_eq!(p.prefix_len(), 16);
        assert_eq!(p.to_string(), "10.213.0.0/16");
        assert_eq!(p.size(), 65536);
        assert_eq!(net("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(net(" 10.0.0.1/32 ").size(), 1);
        for bad in ["10.213.0.0", "10.213.0.0/33", "10.213.0/16", "10.213.0.0/x", "", "/16"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad:?} parsed");
        }
        let e = "10.213.1.0/16".parse::<Ipv4Net>().unwrap_err();
        assert!(e.contains("10.213.0.0/16"), "{e}");
    }

    #[test]
    fn carves_subnets_and_hosts() {
        let p = net("10.213.0.0/16");
        assert_eq!(p.subnet_count(24), 256);
        assert_eq!(p.subnet_count(16), 1);
        assert_eq!(p.subnet_count(8), 0);
        assert_eq!(net("0.0.0.0/0").subnet_count(32), u32::MAX);
        assert_eq!(p.subnet(24, 0), Some(net("10.213.0.0/24")));
        assert_eq!(p.subnet(24, 5), Some(net("10.213.5.0/24")));
        assert_eq!(p.subnet(24, 255), Some(net("10.213.255.0/24")));
        assert_eq!(p.subnet(24, 256), None);
        assert_eq!(net("10.1.2.0/24").subnet(26, 3), Some(net("10.1.2.192/26")));
        let s = net("10.213.5.0/24");
        assert_eq!(s.host(1), Some(Ipv4Addr::new(10, 213, 5, 1)));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(10, 213, 5, 254)));
        assert_eq!(s.host(256), None);
        assert_eq!(s.index_of(Ipv4Addr::new(10, 213, 5, 7)), Some(7));
        assert_eq!(s.index_of(Ipv4Addr::new(10, 213, 6, 7)), None);
        assert!(p.contains(Ipv4Addr::new(10, 213, 200, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 214, 0, 1)));
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(net("10.0.0.0/8").overlaps(&net("10.213.4.0/24")));
        assert!(net("10.213.4.0/24").overlaps(&net("10.0.0.0/8")));
        assert!(!net("10.213.4.0/24").overlaps(&net("10.213.5.0/24")));
        assert!(net("0.0.0.0/0").overlaps(&net("192.168.1.0/24")));
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 213, 0, 2)), "02:be:0a:d5:00:02");
    }
}
