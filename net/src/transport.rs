//! Transport settings that Courier's client and gateway share.
//!
//! Path MTU discovery: quinn's default searches from 1,200 bytes up to 1,452 by halving the
//! interval until the step is under 20 bytes, which is four or five padded probes of 1,300 to
//! 1,450 bytes each way on every connection. quinn-proto reads PADDING a byte at a time, so each
//! probe costs its receiver about as much as a whole handshake's worth of frames; on a gateway
//! holding millions of mostly idle connections that is work on every connection for a gain
//! (bigger packets) that only media transfers see. [`mtu_discovery`] keeps the gain with one
//! probe: 1,452 bytes (1,500-byte Ethernet less IPv6 and UDP headers) or nothing. A path that
//! carries it gets full-size packets; one that does not stays at the safe 1,200.

use quinn_proto::MtuDiscoveryConfig;

/// The largest UDP payload probed for: a 1,500-byte link MTU less 40 bytes of IPv6 header and 8
/// of UDP (quinn's default upper bound too).
pub const MTU_UPPER_BOUND: u16 = 1452;

/// The UDP payload every QUIC path carries, where a connection starts (RFC 9000, section 14).
pub const MTU_INITIAL: u16 = 1200;

/// MTU discovery with a single probe per search: [`MTU_UPPER_BOUND`] at once, and no binary
/// search below it when it is lost. quinn's search stops when its next step is smaller than
/// `minimum_change` and then probes the upper bound once if that is at least `minimum_change`
/// away; with `minimum_change` above half of the interval and at most all of it, the first step
/// is already too small, so the one probe is the upper bound. (A peer whose
/// `max_udp_payload_size` is below the bound is not probed at all: the same rule, with the peer's
/// maximum as the bound.)
pub fn mtu_discovery() -> MtuDiscoveryConfig {
    let mut c = MtuDiscoveryConfig::default();
    c.upper_bound(MTU_UPPER_BOUND)
        .minimum_change(MTU_UPPER_BOUND - MTU_INITIAL);
    c
}
