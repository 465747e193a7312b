//! Small primitives that production code and the simulator share:
//! constant-time comparison of secrets, randomness from the OS, the
//! 64-bit mixer behind quarantine fingerprints, and handing freed memory
//! back to the system.
//!
//! The fingerprint of a quarantined record is stored in the quarantine's
//! Parquet files (`fingerprint` column) and compared across runs, so
//! [`mix`] and [`fingerprint`] are part of the file format: changing them
//! makes old and new fingerprints of the same record differ.

use std::io::Read as _;

/// Hands memory freed by finished work back to the system (glibc only):
/// glibc keeps what each thread freed in that thread's arena, so without
/// this the peaks of successive phases (an ingest's fetch and merge, a
/// refresh's aggregates) add up.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of 1 MiB and more from now on get mappings of their own, given
/// back to the system when freed (glibc only; for the rest of the process).
/// By default glibc raises that threshold to the size of each such block
/// freed, after which blocks of up to 32 MiB come from the heap and, freed,
/// stay there: a commit that writes larger partitions then leaves a larger
/// RSS behind, though no more memory is live (on 5.1M loan rows: 124 MB
/// instead of 89 MB at a quarter of them; with a fixed threshold, about
/// 75 MB at both). Below 1 MiB blocks stay in the heap to be reused: at
/// 256 KiB every feed page's body (~300 KB of CSV) got a fresh mapping,
/// faulted in page by page and unmapped again, which cost an HTTP ingest of
/// 5.1M loans 0.6-0.7 s of system time (1.4 -> 0.7-0.8 s; 6.0 -> 5.5 s).
/// The one-shot commands that land data set it at their start (`ingest`,
/// `backfill` and `import`; while `import` set it only before its commit,
/// it decoded with glibc's smallest threshold: every buffer of 128 KiB and
/// more was mapped and faulted in anew, about 0.2 s of system time and 6%
/// of the wall time of a 5.1M-row CSV import, for about 30 MB less peak
/// RSS); the daemon, whose queries reuse such blocks all the time, keeps
/// glibc's default.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator parameter; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES);
    }
}

/// Blocks that [`return_large_blocks`] maps on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const LARGE_BLOCK_BYTES: libc::c_int = 1 << 20;

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes from the operating system (`/dev/urandom`), for tokens.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A random lowercase hex string of `n` characters from the OS's generator.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let bytes = random_bytes(n.div_ceil(2))?;
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    Ok(s)
}

/// SplitMix64's finaliser: a fast, well-spread 64-bit mixing function (not
/// cryptographic). Part of the quarantine file format through [`fingerprint`].
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv(seed: u64, parts: &[&str]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ seed;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xFF)) {
            h = (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01B3);
        }
    }
    mix(h)
}

/// The stable fingerprint of a rejected record, stored in the quarantine:
/// 32 hex digits, two FNV-1a passes (seeds 1 and 2) over raw text, field and
/// reason (each followed by a 0xFF byte), each finished by [`mix`].
pub fn fingerprint(raw: &str, field: Option<&str>, reason: &str) -> String {
    let parts = [raw, field.unwrap_or(""), reason];
    format!("{:016x}{:016x}", fnv(1, &parts), fnv(2, &parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_across_releases() {
        // Stored in Parquet: a change here breaks quarantine de-duplication.
        assert_eq!(
            fingerprint("a,b", Some("uscc"), "bad"),
            fingerprint("a,b", Some("uscc"), "bad")
        );
        assert_ne!(
            fingerprint("a", None, "r"),
            fingerprint("a", Some(""), "r ")
        );
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn random_hex_has_the_length_asked_and_differs() {
        let a = random_hex(24).unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(24).unwrap());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
