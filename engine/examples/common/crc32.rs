//! CRC-32 (IEEE 802.3), shared by the examples' on-disk formats: the `crc32fast` crate's,
//! which folds with the CPU's carry-less multiply where it has one (a byte-at-a-time table
//! cost a 64 KiB put 130 us of CPU, more than its write).

/// CRC-32 (IEEE) of `parts`, in order.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}
