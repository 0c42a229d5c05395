//! Connection IDs that never repeat within a process, and that an observer cannot link.
//!
//! quinn-proto's default generator (`HashedConnectionIdGenerator`) makes an 8-byte ID from 3
//! random bytes and a 5-byte keyed hash of them: 16.7 million IDs in all. Its endpoint retries a
//! draw that hits a connection's ID in its table, but the source ID of a Retry is drawn without
//! that check. So once a Retry takes an ID that a live connection holds (every connection holds
//! several: its first ID and the ones it issued in NEW_CONNECTION_ID frames), the client's next
//! Initial goes to that connection, is dropped there, and the client stalls until its handshake
//! times out. An endpoint holding 4,000 live IDs stalls one Retry in 4,200: `loadgen connect`
//! of 2,000 connections to two shards under the Retry threshold stalled one run in two or three,
//! and a shard holding a million connections (about five IDs each) would stall one Retry in
//! three.
//!
//! [`ConnectionIds`] makes each ID by encrypting a 48-bit counter, shared by every endpoint the
//! factory serves, under a 64-bit keyed permutation: distinct counters give distinct IDs, so no
//! two IDs of the process are ever equal, and without the key an ID says nothing about its
//! neighbours (RFC 9000, section 9.5: IDs must not let an observer link a connection's paths).
//! The permutation is a balanced Feistel network of [`ROUNDS`] rounds on two 32-bit halves whose
//! round function is AES-128 under a random key (ring exposes one-block AES as QUIC's
//! header-protection mask, RFC 9001, section 5.4.3). The low 16 bits of the plaintext are zero,
//! which lets [`ConnectionIdGenerator::validate`] turn away all but 1 in 65,536 made-up IDs before
//! the endpoint answers them with a stateless reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::aead::quic::{HeaderProtectionKey, AES_128};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in every ID (quinn's default length too).
pub const CID_LEN: usize = 8;

/// Feistel rounds: past six, a Feistel permutation on 32-bit halves with a random round function
/// resists distinguishing up to about 2^32 observed IDs (Patarin); eight give margin, and cost
/// eight AES blocks per ID, a few IDs per connection.
pub const ROUNDS: u8 = 8;

/// Low plaintext bits that must be zero in a valid ID.
const TAG_BITS: u32 = 16;

/// A factory of connection-ID generators that share one key and one counter.
#[derive(Clone)]
pub struct ConnectionIds {
    shared: Arc<Shared>,
}

struct Shared {
    key: HeaderProtectionKey,
    next: AtomicU64,
}

impl ConnectionIds {
    /// A fresh random key and a counter at zero.
    ///
    /// # Panics
    /// If the operating system's random source fails, which leaves no safe way to run QUIC.
    pub fn new() -> Self {
        let mut key = [0u8; 16];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the OS random source serves 16 bytes");
        let key = HeaderProtectionKey::new(&AES_128, &key).expect("AES-128 takes a 16-byte key");
        Self {
            shared: Arc::new(Shared {
                key,
                next: AtomicU64::new(0),
            }),
        }
    }

    /// The process's own factory, for endpoints that have no owner to hold one (the SDK's
    /// client endpoints: loadgen opens dozens).
    pub fn process() -> &'static Self {
        static IDS: std::sync::OnceLock<ConnectionIds> = std::sync::OnceLock::new();
        IDS.get_or_init(Self::new)
    }

    /// A generator for one endpoint, as `EndpointConfig::cid_generator` takes it.
    pub fn generator(&self) -> Box<dyn ConnectionIdGenerator> {
        Box::new(self.clone())
    }

    /// A quinn-proto endpoint configuration whose endpoints draw their IDs from `self`.
    pub fn endpoint_config(&self) -> quinn_proto::EndpointConfig {
        let mut config = quinn_proto::EndpointConfig::default();
        let ids = self.clone();
        config.cid_generator(move || ids.generator());
        config
    }
}

impl Default for ConnectionIds {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// The round function: the first four bytes of AES-128 of (round, half).
    fn round(&self, round: u8, half: u32) -> u32 {
        let mut block = [0u8; 16];
        block[0] = round;
        block[1..5].copy_from_slice(&half.to_le_bytes());
        let mask = self
            .key
            .new_mask(&block)
            .expect("a 16-byte sample is what AES header protection takes");
        u32::from_le_bytes([mask[0], mask[1], mask[2], mask[3]])
    }

    fn encrypt(&self, plain: u64) -> u64 {
        let (mut l, mut r) = ((plain >> 32) as u32, plain as u32);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    fn decrypt(&self, cipher: u64) -> u64 {
        let (mut l, mut r) = ((cipher >> 32) as u32, cipher as u32);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
    }
}

impl ConnectionIdGenerator for ConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        // 2^48 IDs: a million a second for nine years. Past that the counter wraps, and an ID
        // repeats only if the connection that held it 2^48 IDs ago still does.
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
        let id = self.shared.encrypt(n << TAG_BITS);
        ConnectionId::new(&id.to_be_bytes())
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let bytes: [u8; CID_LEN] = cid[..].try_into().map_err(|_| InvalidCid)?;
        let plain = self.shared.decrypt(u64::from_be_bytes(bytes));
        match plain & ((1 << TAG_BITS) - 1) {
            0 => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn decrypt_undoes_encrypt() {
        let ids = ConnectionIds::new();
        for x in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef, 1 << 16] {
            assert_eq!(ids.shared.decrypt(ids.shared.encrypt(x)), x);
            assert_ne!(ids.shared.encrypt(x), x);
        }
    }

    #[test]
    fn ids_never_repeat_across_the_endpoints_of_one_factory() {
        let ids = ConnectionIds::new();
        let (mut a, mut b) = (ids.generator(), ids.generator());
        let mut seen = HashSet::new();
        for _ in 0..200_000 {
            for g in [&mut a, &mut b] {
                let cid = g.generate_cid();
                assert_eq!(cid.len(), CID_LEN);
                assert!(g.validate(&cid).is_ok(), "its own IDs validate");
                assert!(seen.insert(cid), "{cid} repeated");
            }
        }
    }

    #[test]
    fn neighbouring_ids_share_nothing_visible() {
        // Counters n and n+1 must not give IDs that share a prefix (a counter in the clear
        // would), nor IDs equal across two keys.
        let (x, y) = (ConnectionIds::new(), ConnectionIds::new());
        let (mut gx, mut gy) = (x.generator(), y.generator());
        let mut prev = gx.generate_cid();
        for _ in 0..10_000 {
            let cid = gx.generate_cid();
            assert_ne!(cid[..4], prev[..4]);
            assert_ne!(cid, gy.generate_cid());
            prev = cid;
        }
    }

    #[test]
    fn made_up_ids_mostly_fail_validation() {
        let ids = ConnectionIds::new();
        let g = ids.generator();
        let passed = (0u64..100_000)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes())
            .filter(|b| g.validate(&ConnectionId::new(b)).is_ok())
            .count();
        // 1 in 65,536 expected: about 1.5 of 100,000. Twenty would be a chance of 1e-15.
        assert!(passed < 20, "{passed} made-up IDs passed");
        assert!(g.validate(&ConnectionId::new(&[1, 2, 3])).is_err());
    }
}
