//! Key encoding: the one place where store keys are built.
//!
//! Every key starts with a one-byte subspace tag. Integers are big-endian so that byte order is
//! numeric order; user ids are length-prefixed so that one user's keys never run into another's.
//! The full table (key, value, writer, deletion) is in `docs/STORAGE.md`.

/// Subspace tags.
pub mod tag {
    /// `M chat seq` -> message.
    pub const MESSAGE: u8 = b'M';
    /// `S chat` -> last assigned seq, and the hour of the chat's open `T` entry if any
    /// ([`crate::record::LastSeq`]).
    pub const LAST_SEQ: u8 = b'S';
    /// `C chat` -> chat record.
    pub const CHAT: u8 = b'C';
    /// `D form client_msg_id user` -> dedupe record.
    pub const DEDUPE: u8 = b'D';
    /// `P user user` -> direct chat id of a user pair.
    pub const PAIR: u8 = b'P';
    /// `U user chat` -> membership (empty value).
    pub const MEMBER: u8 = b'U';
    /// `N` -> the next chat id, in stores made before chat ids were random; reserved.
    #[allow(dead_code)]
    pub const NEXT_CHAT: u8 = b'N';
    /// `A user device chat` -> the highest seq the device acknowledged in the chat.
    pub const POSITION: u8 = b'A';
    /// `F chat` -> the first seq not yet expired (absent: 1).
    pub const FLOOR: u8 = b'F';
    /// `T hour chat` -> the highest seq the chat got in that hour, or
    /// [`crate::record::OPEN`] while that hour is the chat's latest (retention index).
    pub const TIME: u8 = b'T';
    /// `B media` -> media record (an upload or a thumbnail).
    pub const MEDIA: u8 = b'B';
    /// `R media chat` -> a message of the chat references the media (value: the last such seq).
    pub const MEDIA_REF: u8 = b'R';
    /// `H sha256 media` -> the media's bytes are this blob (empty value): who uses a blob.
    pub const BLOB_USER: u8 = b'H';
    /// `O hour media` -> an upload made in that hour, expiring unless a message attaches it.
    pub const UPLOAD_TIME: u8 = b'O';
    /// `E user chat` -> how far the user has received and read the chat (two seqs).
    pub const RECEIPT: u8 = b'E';
    /// `V user` -> whether the user's presence is shown (one byte; absent: shown).
    pub const PRESENCE: u8 = b'V';
    /// `Q user` -> bytes of the media records the user uploaded (uploads and thumbnails),
    /// against the upload quota.
    pub const MEDIA_USAGE: u8 = b'Q';
    /// `K user device` -> the device's push registration (provider, token).
    pub const PUSH_TOKEN: u8 = b'K';
    /// `J user chat` -> the pending push job of a user and chat (coalesced messages).
    pub const PUSH_JOB: u8 = b'J';
    /// `W due_ms user chat` -> a push job is due then (the push worker's queue).
    pub const PUSH_DUE: u8 = b'W';
    /// `X user chat` -> a push job that failed for good (dead letter), with its last error.
    pub const PUSH_DEAD: u8 = b'X';
    /// `Z time_ms token` -> a write batch's commit marker: which of its attempts committed
    /// (engines that can answer "maybe committed"; cleared by the next batch, or after an hour
    /// by the sweep).
    pub const COMMIT_MARKER: u8 = b'Z';
    /// `L node` -> the node's lease: until when (ms) it is alive unless it renews
    /// ([`crate::cluster`]).
    pub const LEASE: u8 = b'L';
    /// `G user` -> the nodes with a device of the user online (sorted node ids).
    pub const ROUTE: u8 = b'G';
    /// `I node versionstamp chunk` -> what a commit left for the node to deliver (its inbox).
    pub const INBOX: u8 = b'I';
    /// `Y node` -> a versionstamp, rewritten by every commit that writes to the node's inbox:
    /// the key the node watches.
    pub const WAKE: u8 = b'Y';
    /// `o work` -> the node holding a work lease (the sweep, the push outbox) and until when.
    pub const OWNER: u8 = b'o';
    /// `w user node` -> a node with connections watching the user's presence (empty value).
    pub const WATCHER: u8 = b'w';
    /// `h sha256 node token` -> until when (ms) a node is storing the blob (an upload) or,
    /// with node 0, deleting it (the janitor).
    pub const BLOB_MARK: u8 = b'h';
    /// `r media` -> a chat of this partition stopped referencing the media, and none of this
    /// partition's did any more: partition 0 deletes the media unless another chat references
    /// it (stores split into partitions; [`super::place`]).
    pub const MEDIA_RELEASE: u8 = b'r';
}

/// Where a key lives in a store split into partitions (`docs/STORAGE.md`, "Partitions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In this partition.
    Part(usize),
    /// In the partition of the transaction's writer: dedupe records (with the chat sent to),
    /// commit markers and media release candidates.
    Own,
}

/// The partition of a chat: its id modulo the partition count. Everything keyed by a chat
/// lives there, and that partition's writer alone writes it.
pub fn chat_partition(chat: u64, partitions: usize) -> usize {
    (chat % partitions.max(1) as u64) as usize
}

/// A 64-bit hash that is stable across builds and platforms (a key's partition is on disk):
/// FNV-1a, then MurmurHash3's finalizer, whose low bits depend on every input bit (FNV's
/// lowest bit alone is the parity of the bytes' lowest bits, so user ids that differ in one
/// digit would land in the same partition modulo 2).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The partition of a user pair's direct chat: the pair record lives there, and the chat's
/// id is drawn in it, so that one writer decides a pair's chat.
pub fn pair_partition(a: &str, b: &str, partitions: usize) -> usize {
    (stable_hash(&pair(a, b)) % partitions.max(1) as u64) as usize
}

/// The chat id at `range` of `key`.
fn chat_at(key: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(at..at + 8)?.try_into().ok()?))
}

/// Tags whose keys lead with their chat: `M chat seq`, `S chat`, `F chat`, `C chat`.
const CHAT_FIRST: [u8; 4] = [tag::MESSAGE, tag::LAST_SEQ, tag::FLOOR, tag::CHAT];

/// Tags whose keys end with their chat: `T hour chat`, `U user chat`, `A user device chat`,
/// `E user chat`, `J user chat`, `W due user chat`, `X user chat`, `R media chat`.
const CHAT_LAST: [u8; 8] = [
    tag::TIME,
    tag::MEMBER,
    tag::POSITION,
    tag::RECEIPT,
    tag::PUSH_JOB,
    tag::PUSH_DUE,
    tag::PUSH_DEAD,
    tag::MEDIA_REF,
];

/// The chat a key is about, for keys that name one ([`CHAT_FIRST`], [`CHAT_LAST`]); `None`
/// for other tags, and for a key too short to hold one (a prefix; a key ending with its chat
/// only when `whole`).
fn chat_of(key: &[u8], whole: bool) -> Option<u64> {
    let t = *key.first()?;
    if CHAT_FIRST.contains(&t) {
        return chat_at(key, 1);
    }
    if whole && CHAT_LAST.contains(&t) {
        return chat_at(key, key.len().checked_sub(8)?);
    }
    None
}

/// Whether keys of this tag live with a chat (placed by [`chat_of`]).
fn chat_tag(t: u8) -> bool {
    CHAT_FIRST.contains(&t) || CHAT_LAST.contains(&t)
}

/// Where `key` lives among `partitions`: with its chat; dedupe records, commit markers and
/// release candidates with their writer; a pair record by the pair's hash; everything else
/// (users' settings and registrations, media, the cluster's keys) in partition 0.
pub fn place(key: &[u8], partitions: usize) -> Place {
    let Some(&t) = key.first() else {
        return Place::Part(0);
    };
    match t {
        tag::DEDUPE | tag::COMMIT_MARKER | tag::MEDIA_RELEASE => Place::Own,
        tag::PAIR => Place::Part((stable_hash(key) % partitions.max(1) as u64) as usize),
        t if chat_tag(t) => match chat_of(key, true) {
            Some(chat) => Place::Part(chat_partition(chat, partitions)),
            // A malformed key: no writer writes one; reads find nothing there.
            None => Place::Part(0),
        },
        _ => Place::Part(0),
    }
}

/// Where every key of `start..end` lives, when they all live in one place: `None` when the
/// range spans partitions (a user's chats, every chat's entries of an hour).
pub fn place_range(start: &[u8], end: &[u8], partitions: usize) -> Option<Place> {
    let (&t, &u) = (start.first()?, end.first()?);
    if t != u {
        // Only a range over one tag, or up to the next tag's first key, stays in one place.
        if !(u == t.wrapping_add(1) && end.len() == 1) {
            return None;
        }
    }
    match t {
        tag::DEDUPE | tag::COMMIT_MARKER => Some(Place::Own),
        // Partition 0's writer reads every partition's candidates.
        tag::PAIR | tag::MEDIA_RELEASE => None,
        t if CHAT_FIRST.contains(&t) => {
            let (a, b) = (chat_of(start, false)?, chat_of(end, false)?);
            (a == b).then(|| Place::Part(chat_partition(a, partitions)))
        }
        t if chat_tag(t) => None,
        _ => Some(Place::Part(0)),
    }
}

/// `r media`.
pub fn media_release(id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag::MEDIA_RELEASE);
    k.extend_from_slice(id);
    k
}

/// The media id of a release candidate key.
pub fn media_release_id(key: &[u8]) -> Option<[u8; 16]> {
    key.get(1..17)?.try_into().ok()
}

fn user(out: &mut Vec<u8>, user: &str) {
    // User ids are at most 64 bytes (`courier_wire::valid_user_id`), so one length byte holds it.
    out.push(user.len() as u8);
    out.extend_from_slice(user.as_bytes());
}

/// `M chat seq`.
pub fn message(chat: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag::MESSAGE);
    k.extend_from_slice(&chat.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number in a message key.
pub fn message_seq(key: &[u8]) -> Option<u64> {
    key.get(9..17)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// `S chat`.
pub fn last_seq(chat: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag::LAST_SEQ);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `C chat`.
pub fn chat(chat: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag::CHAT);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `D form client_msg_id user`: form 1 for time-ordered (UUIDv7) ids, 2 for any other id.
/// Leading with the id makes a time-ordered id's record land at the end of the keyspace (an
/// append, not a random insert); the form byte keeps other ids out of that range.
pub fn dedupe(sender: &str, client_msg_id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + sender.len());
    k.push(tag::DEDUPE);
    k.push(if courier_wire::uuid_v7_millis(client_msg_id).is_some() {
        1
    } else {
        2
    });
    k.extend_from_slice(client_msg_id);
    user(&mut k, sender);
    k
}

/// `P a b` with `a <= b`.
pub fn pair(a: &str, b: &str) -> Vec<u8> {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let mut k = Vec::with_capacity(3 + a.len() + b.len());
    k.push(tag::PAIR);
    user(&mut k, a);
    user(&mut k, b);
    k
}

/// `U user chat`.
pub fn member(u: &str, chat: u64) -> Vec<u8> {
    let mut k = member_prefix(u);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `U user`: the prefix of all of a user's memberships.
pub fn member_prefix(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + u.len());
    k.push(tag::MEMBER);
    user(&mut k, u);
    k
}

/// The chat id at the end of a membership key.
pub fn member_chat(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[tail..].try_into().ok()?))
}

/// `A user`: the prefix of the positions of all of a user's devices.
pub fn position_user_prefix(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + u.len());
    k.push(tag::POSITION);
    user(&mut k, u);
    k
}

/// `A user device`: the prefix of one device's positions.
pub fn position_prefix(u: &str, device: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(14 + u.len());
    k.push(tag::POSITION);
    user(&mut k, u);
    k.extend_from_slice(&device.to_be_bytes());
    k
}

/// `A user device chat`.
pub fn position(u: &str, device: u32, chat: u64) -> Vec<u8> {
    let mut k = position_prefix(u, device);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `F chat`.
pub fn floor(chat: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag::FLOOR);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `T hour` (with no chat: the start of that hour's entries).
pub fn time_prefix(hour: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(tag::TIME);
    k.extend_from_slice(&hour.to_be_bytes());
    k
}

/// `T hour chat`.
pub fn time(hour: u32, chat: u64) -> Vec<u8> {
    let mut k = time_prefix(hour);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// The hour and chat of a `T` key.
pub fn parse_time(key: &[u8]) -> Option<(u32, u64)> {
    if key.len() != 13 || key[0] != tag::TIME {
        return None;
    }
    Some((
        u32::from_be_bytes(key[1..5].try_into().ok()?),
        u64::from_be_bytes(key[5..13].try_into().ok()?),
    ))
}

/// The hour (since the Unix epoch) of a millisecond timestamp.
pub fn hour_of(ms: u64) -> u32 {
    u32::try_from(ms / 3_600_000).unwrap_or(u32::MAX)
}

/// The exclusive end of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; 32]
}

/// `K user device`.
pub fn push_token(u: &str, device: u32) -> Vec<u8> {
    let mut k = push_tokens(u);
    k.extend_from_slice(&device.to_be_bytes());
    k
}

/// `K user`: the prefix of a user's push registrations.
pub fn push_tokens(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + u.len());
    k.push(tag::PUSH_TOKEN);
    user(&mut k, u);
    k
}

/// `J user chat`.
pub fn push_job(u: &str, chat: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + u.len());
    k.push(tag::PUSH_JOB);
    user(&mut k, u);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `X user chat`.
pub fn push_dead(u: &str, chat: u64) -> Vec<u8> {
    let mut k = push_job(u, chat);
    k[0] = tag::PUSH_DEAD;
    k
}

/// `W due_ms user chat`.
pub fn push_due(due_ms: u64, u: &str, chat: u64) -> Vec<u8> {
    let mut k = push_due_prefix(due_ms);
    user(&mut k, u);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `W due_ms`: jobs due before `due_ms` sort before this.
pub fn push_due_prefix(due_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(82);
    k.push(tag::PUSH_DUE);
    k.extend_from_slice(&due_ms.to_be_bytes());
    k
}

/// The user and chat of a `W` key.
pub fn parse_push_due(key: &[u8]) -> Option<(String, u64)> {
    let len = *key.get(9)? as usize;
    let user = std::str::from_utf8(key.get(10..10 + len)?).ok()?.to_owned();
    let chat = u64::from_be_bytes(key.get(10 + len..18 + len)?.try_into().ok()?);
    Some((user, chat))
}

/// The device at the end of a `K` key.
pub fn push_token_device(key: &[u8]) -> Option<u32> {
    let tail = key.len().checked_sub(4)?;
    Some(u32::from_be_bytes(key[tail..].try_into().ok()?))
}

/// `V user`.
pub fn presence(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + u.len());
    k.push(tag::PRESENCE);
    user(&mut k, u);
    k
}

/// `Z time_ms token`.
pub fn commit_marker(time_ms: u64, token: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag::COMMIT_MARKER);
    k.extend_from_slice(&time_ms.to_be_bytes());
    k.extend_from_slice(&token.to_be_bytes());
    k
}

/// The first commit marker written at `time_ms` or later.
pub fn commit_markers_from(time_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag::COMMIT_MARKER);
    k.extend_from_slice(&time_ms.to_be_bytes());
    k
}

fn node_key(tag: u8, node: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// `L node`.
pub fn lease(node: u64) -> Vec<u8> {
    node_key(tag::LEASE, node)
}

/// The node in an `L node` or `I node ...` key.
pub fn node_of(key: &[u8]) -> Option<u64> {
    key.get(1..9)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// `G user`.
pub fn route(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + u.len());
    k.push(tag::ROUTE);
    user(&mut k, u);
    k
}

/// `h sha256 node token`.
pub fn blob_mark(sha256: &[u8; 32], node: u64, token: u64) -> Vec<u8> {
    let mut k = blob_marks(sha256);
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(&token.to_be_bytes());
    k
}

/// The prefix of every `h sha256 ...`.
pub fn blob_marks(sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(49);
    k.push(tag::BLOB_MARK);
    k.extend_from_slice(sha256);
    k
}

/// The node in a `h sha256 node token` key (0: a deletion).
pub fn blob_mark_node(key: &[u8]) -> Option<u64> {
    key.get(33..41)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// `w user node`.
pub fn watcher(u: &str, node: u64) -> Vec<u8> {
    let mut k = watchers(u);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// The prefix of every `w user node` of `u`.
pub fn watchers(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + u.len());
    k.push(tag::WATCHER);
    user(&mut k, u);
    k
}

/// The node at the end of a `w user node` key.
pub fn watcher_node(key: &[u8]) -> Option<u64> {
    let b = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// The prefix of node `node`'s inbox (`I node`).
pub fn inbox_prefix(node: u64) -> Vec<u8> {
    node_key(tag::INBOX, node)
}

/// `I node <versionstamp> chunk`, with the versionstamp's place zeroed (at
/// [`INBOX_STAMP_OFFSET`]) for the engine to fill at commit.
pub fn inbox_entry(node: u64, chunk: u16) -> Vec<u8> {
    let mut k = node_key(tag::INBOX, node);
    k.extend_from_slice(&[0; crate::kv::VERSIONSTAMP_LEN]);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// Where the versionstamp goes in an [`inbox_entry`] key.
pub const INBOX_STAMP_OFFSET: usize = 9;

/// `Y node`.
pub fn wake(node: u64) -> Vec<u8> {
    node_key(tag::WAKE, node)
}

/// `Q user`.
pub fn media_usage(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + u.len());
    k.push(tag::MEDIA_USAGE);
    user(&mut k, u);
    k
}

/// `E user chat`.
pub fn receipt(u: &str, chat: u64) -> Vec<u8> {
    let mut k = receipt_prefix(u);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `E user`: the prefix of a user's receipt pointers.
pub fn receipt_prefix(u: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + u.len());
    k.push(tag::RECEIPT);
    user(&mut k, u);
    k
}

/// `B media`.
pub fn media(id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag::MEDIA);
    k.extend_from_slice(id);
    k
}

/// `R media chat`.
pub fn media_ref(id: &[u8; 16], chat: u64) -> Vec<u8> {
    let mut k = media_refs(id);
    k.extend_from_slice(&chat.to_be_bytes());
    k
}

/// `R media`: the prefix of every reference to the media.
pub fn media_refs(id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(tag::MEDIA_REF);
    k.extend_from_slice(id);
    k
}

/// `H sha256 media`.
pub fn blob_user(sha256: &[u8; 32], media: &[u8; 16]) -> Vec<u8> {
    let mut k = blob_users(sha256);
    k.extend_from_slice(media);
    k
}

/// `H sha256`: the prefix of every media whose bytes are this blob.
pub fn blob_users(sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(49);
    k.push(tag::BLOB_USER);
    k.extend_from_slice(sha256);
    k
}

/// `O hour media`.
pub fn upload_time(hour: u32, media: &[u8; 16]) -> Vec<u8> {
    let mut k = upload_time_prefix(hour);
    k.extend_from_slice(media);
    k
}

/// `O hour`: uploads made before `hour` sort before this.
pub fn upload_time_prefix(hour: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.push(tag::UPLOAD_TIME);
    k.extend_from_slice(&hour.to_be_bytes());
    k
}

/// The media id in an upload time key.
pub fn upload_time_media(key: &[u8]) -> Option<[u8; 16]> {
    key.get(5..21).map(|b| b.try_into().expect("16 bytes"))
}

/// The chat id in a media reference key.
pub fn media_ref_chat(key: &[u8]) -> Option<u64> {
    key.get(17..25)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_chat_then_seq() {
        let mut keys = vec![
            message(2, 1),
            message(1, 300),
            message(1, 2),
            message(1, 256),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                message(1, 2),
                message(1, 256),
                message(1, 300),
                message(2, 1)
            ]
        );
        assert_eq!(message_seq(&message(7, 99)), Some(99));
    }

    #[test]
    fn user_prefixes_do_not_overlap() {
        // "ab" must not see "abc"'s memberships.
        assert!(!member("abc", 1).starts_with(&member_prefix("ab")));
        assert_eq!(member_chat(&member("ab", 42)), Some(42));
    }

    #[test]
    fn retention_keys_parse_back() {
        assert_eq!(parse_time(&time(500_000, 42)), Some((500_000, 42)));
        assert!(time(1, u64::MAX) < time_prefix(2));
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(hour_of(3_600_000 * 5 + 1), 5);
    }

    #[test]
    fn pairs_are_unordered() {
        assert_eq!(pair("bob", "alice"), pair("alice", "bob"));
        assert_ne!(pair("ab", "c"), pair("a", "bc"));
    }
}
