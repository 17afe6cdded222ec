//! The address plan: which addresses, MAC and names sandbox number `index` uses.
//!
//! Two private pools, carved into /30s, one of each per sandbox:
//!
//! | pool | /30 number `index` | `.1` | `.2` |
//! |---|---|---|---|
//! | [`GUEST_POOL`] `10.200.0.0/16` | guest link (TAP) | gateway, in the sandbox namespace | the guest |
//! | [`UPLINK_POOL`] `10.201.0.0/16` | uplink (veth) | host end | sandbox-namespace end |
//!
//! So [`MAX_SANDBOXES`] (16384) sandboxes fit. Both pools sit inside `10.0.0.0/8`, which the
//! ruleset refuses as a destination, so no guest reaches another sandbox's guest or uplink.
//! Who hands out indices (and records them, so a crash leaves nothing behind) is the core's
//! business; this module only maps an index to addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: an address whose host bits are zero and a prefix length (0–32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `a.b.c.d` or `a.b.c.d/len`.
    #[error("`{input}` is not an IPv4 CIDR (expected a.b.c.d/len)")]
    Syntax {
        /// The text refused.
        input: String,
    },
    /// The prefix length is over 32.
    #[error("`{input}`: prefix length must be 0 to 32")]
    PrefixLength {
        /// The text refused.
        input: String,
    },
    /// Bits are set below the prefix.
    #[error("`{input}` has host bits set; did you mean {network}?")]
    HostBits {
        /// The text refused.
        input: String,
        /// The network the address belongs to.
        network: Ipv4Cidr,
    },
}

impl Ipv4Cidr {
    /// The network `addr/len`; `None` when `len > 32` or host bits are set.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        let bits = addr.to_bits();
        if bits & !mask(len) != 0 {
            return None;
        }
        Some(Self { addr, len })
    }

    /// `a.b.c.d/len` for constants: in a `const` a bad network fails the build (elsewhere it
    /// panics, so use [`Ipv4Cidr::new`] for anything that is not a literal).
    pub const fn constant(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        match Self::new(Ipv4Addr::new(a, b, c, d), len) {
            Some(net) => net,
            None => panic!("bad constant network"),
        }
    }

    /// The network address.
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The last address (the broadcast address of a /30 or shorter).
    pub const fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.addr.to_bits() | !mask(self.len))
    }

    /// Whether `ip` lies in this network.
    pub const fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.len) == self.addr.to_bits()
    }

    /// Whether the two networks share any address.
    pub const fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    /// `a.b.c.d/len`, or a bare `a.b.c.d` meaning `/32`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax {
            input: input.to_owned(),
        };
        let (addr, len) = match input.split_once('/') {
            Some((addr, len)) => {
                // `u8::from_str` would take "+8"; insist on plain digits.
                if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                (addr, len.parse::<u8>().map_err(|_| syntax())?)
            }
            None => (input, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len > 32 {
            return Err(CidrError::PrefixLength {
                input: input.to_owned(),
            });
        }
        Self::new(addr, len).ok_or_else(|| CidrError::HostBits {
            input: input.to_owned(),
            network: Self {
                addr: Ipv4Addr::from_bits(addr.to_bits() & mask(len)),
                len,
            },
        })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(value: Ipv4Cidr) -> Self {
        value.to_string()
    }
}

/// The pool guest links are carved from, one /30 per sandbox.
pub const GUEST_POOL: Ipv4Cidr = Ipv4Cidr::constant(10, 200, 0, 0, 16);
/// The pool uplinks are carved from, one /30 per sandbox.
pub const UPLINK_POOL: Ipv4Cidr = Ipv4Cidr::constant(10, 201, 0, 0, 16);
/// Both pools together (`10.200.0.0/15`): no allowlist may open a way into it.
pub const POOLS: Ipv4Cidr = Ipv4Cidr::constant(10, 200, 0, 0, 15);
/// How many sandboxes the pools hold (16384 /30s in a /16).
pub const MAX_SANDBOXES: u32 = 1 << 14;

/// Name of the guest's TAP inside the sandbox namespace (the same in every sandbox).
pub const TAP_NAME: &str = "pyro-tap";
/// Name of the uplink's end inside the sandbox namespace.
pub const UPLINK_NS_NAME: &str = "pyro-up";

/// Why an address plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The index does not fit the pools.
    #[error("sandbox network index {index} is out of range (0 to {max})")]
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
        /// The largest index there is.
        max: u32,
    },
}

/// The network plan of sandbox number `index`: addresses, guest MAC and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct SandboxNet {
    index: u16,
}

impl SandboxNet {
    /// The plan for `index`, which must be below [`MAX_SANDBOXES`].
    pub fn new(index: u32) -> Result<Self, PlanError> {
        if index >= MAX_SANDBOXES {
            return Err(PlanError::IndexOutOfRange {
                index,
                max: MAX_SANDBOXES - 1,
            });
        }
        let index = u16::try_from(index).map_err(|_| PlanError::IndexOutOfRange {
            index,
            max: MAX_SANDBOXES - 1,
        })?;
        Ok(Self { index })
    }

    /// The index this plan was made from.
    pub fn index(&self) -> u32 {
        u32::from(self.index)
    }

    /// The name of the namespace, of the host end of the uplink and of both nft tables:
    /// `pyro-<index>` (at most 10 bytes, well inside the 15 an interface name may have).
    pub fn name(&self) -> String {
        format!("pyro-{}", self.index)
    }

    fn slice(pool: Ipv4Cidr, index: u16) -> Ipv4Cidr {
        let base = pool.addr().to_bits() + (u32::from(index) << 2);
        Ipv4Cidr {
            addr: Ipv4Addr::from_bits(base),
            len: 30,
        }
    }

    fn nth(net: Ipv4Cidr, n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(net.addr().to_bits() + n)
    }

    /// The guest link's /30.
    pub fn guest_subnet(&self) -> Ipv4Cidr {
        Self::slice(GUEST_POOL, self.index)
    }

    /// The gateway: the sandbox namespace's address on the TAP (`.1` of the guest /30).
    pub fn gateway(&self) -> Ipv4Addr {
        Self::nth(self.guest_subnet(), 1)
    }

    /// The guest's address (`.2` of the guest /30).
    pub fn guest(&self) -> Ipv4Addr {
        Self::nth(self.guest_subnet(), 2)
    }

    /// The uplink's /30.
    pub fn uplink_subnet(&self) -> Ipv4Cidr {
        Self::slice(UPLINK_POOL, self.index)
    }

    /// The host end of the uplink (`.1`), the sandbox namespace's default gateway.
    pub fn uplink_host(&self) -> Ipv4Addr {
        Self::nth(self.uplink_subnet(), 1)
    }

    /// The sandbox namespace's end of the uplink (`.2`); the guest's traffic leaves with it.
    pub fn uplink_ns(&self) -> Ipv4Addr {
        Self::nth(self.uplink_subnet(), 2)
    }

    /// The guest's MAC: `02:70:79:00:hi:lo` (locally administered, unicast, unique per index).
    pub fn guest_mac(&self) -> [u8; 6] {
        let [hi, lo] = self.index.to_be_bytes();
        [0x02, 0x70, 0x79, 0x00, hi, lo]
    }

    /// [`SandboxNet::guest_mac`] as `aa:bb:cc:dd:ee:ff`.
    pub fn guest_mac_string(&self) -> String {
        let m = self.guest_mac();
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl TryFrom<u32> for SandboxNet {
    type Error = PlanError;
    fn try_from(index: u32) -> Result<Self, Self::Error> {
        Self::new(index)
    }
}

impl From<SandboxNet> for u32 {
    fn from(value: SandboxNet) -> Self {
        value.index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_and_last_plans() {
        let p = SandboxNet::new(0).unwrap();
        assert_eq!(p.guest_subnet().to_string(), "10.200.0.0/30");
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(p.guest(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(p.uplink_host(), Ipv4Addr::new(10, 201, 0, 1));
        assert_eq!(p.uplink_ns(), Ipv4Addr::new(10, 201, 0, 2));
        assert_eq!(p.name(), "pyro-0");
        assert_eq!(p.guest_mac_string(), "02:70:79:00:00:00");

        let p = SandboxNet::new(MAX_SANDBOXES - 1).unwrap();
        assert_eq!(p.guest_subnet().to_string(), "10.200.255.252/30");
        assert_eq!(p.guest(), Ipv4Addr::new(10, 200, 255, 254));
        assert_eq!(p.uplink_ns(), Ipv4Addr::new(10, 201, 255, 254));
        assert_eq!(p.name(), "pyro-16383");
        assert_eq!(p.guest_mac_string(), "02:70:79:00:3f:ff");
    }

    #[test]
    fn index_out_of_range_is_refused() {
        assert_eq!(
            SandboxNet::new(MAX_SANDBOXES),
            Err(PlanError::IndexOutOfRange {
                index: 16384,
                max: 16383
            })
        );
        assert!(serde_json::from_str::<SandboxNet>("99999").is_err());
        assert_eq!(serde_json::from_str::<SandboxNet>("7").unwrap().index(), 7);
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Ipv4Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "1.2.3.4".parse::<Ipv4Cidr>().unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix_len(), 0);
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "x/8",
            "::1/128",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::PrefixLength { .. })
        ));
        let err = "10.1.2.3/8".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`10.1.2.3/8` has host bits set; did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn cidr_contains_and_overlaps() {
        let ten: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(Ipv4Addr::new(10, 255, 255, 255)));
        assert!(!ten.contains(Ipv4Addr::new(11, 0, 0, 0)));
        assert_eq!(ten.last(), Ipv4Addr::new(10, 255, 255, 255));
        assert!(ten.overlaps(&POOLS) && POOLS.overlaps(&ten));
        assert!(!ten.overlaps(&"11.0.0.0/8".parse().unwrap()));
        assert!(POOLS.contains(GUEST_POOL.addr()) && POOLS.contains(UPLINK_POOL.last()));
    }

    proptest! {
        #[test]
        fn plans_are_disjoint_and_well_formed(a in 0..MAX_SANDBOXES, b in 0..MAX_SANDBOXES) {
            let (pa, pb) = (SandboxNet::new(a).unwrap(), SandboxNet::new(b).unwrap());
            for p in [pa, pb] {
                prop_assert!(GUEST_POOL.contains(p.gateway()) && GUEST_POOL.contains(p.guest()));
                prop_assert!(UPLINK_POOL.contains(p.uplink_host()) && UPLINK_POOL.contains(p.uplink_ns()));
                prop_assert!(p.guest_subnet().contains(p.guest()) && p.guest_subnet().contains(p.gateway()));
                prop_assert_ne!(p.guest(), p.guest_subnet().last());
                prop_assert_eq!(p.guest_mac()[0] & 0b11, 0b10, "locally administered unicast");
                prop_assert!(p.name().len() <= 15);
            }
            if a != b {
                prop_assert!(!pa.guest_subnet().overlaps(&pb.guest_subnet()));
                prop_assert!(!pa.uplink_subnet().overlaps(&pb.uplink_subnet()));
                prop_assert_ne!(pa.guest_mac(), pb.guest_mac());
                prop_assert_ne!(pa.name(), pb.name());
            }
        }

        #[test]
        fn cidr_display_round_trips(bits in any::<u32>(), len in 0u8..=32) {
            let net = Ipv4Cidr::new(Ipv4Addr::from_bits(bits & mask(len)), len).unwrap();
            prop_assert_eq!(net.to_string().parse::<Ipv4Cidr>().unwrap(), net);
        }
    }
}
