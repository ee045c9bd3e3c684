//! CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes it with
//! `crc64.MakeTable(crc64.ISO)`: reflected, initial value and final xor all ones,
//! the sum written big-endian.

/// The ISO polynomial, reversed (as Go's `crc64.ISO`).
const POLY: u64 = 0xD800_0000_0000_0000;

/// Eight tables for slicing-by-8: `TABLES[0]` is the classic byte table, and
/// `TABLES[k][b]` is the CRC of byte `b` followed by `k` zero bytes.
static TABLES: [[u64; 256]; 8] = tables();

const fn tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut crc = t[0][i];
        let mut k = 1;
        while k < 8 {
            crc = t[0][(crc & 0xff) as usize] ^ (crc >> 8);
            t[k][i] = crc;
            k += 1;
        }
        i += 1;
    }
    t
}

/// A running CRC-64/ISO.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Crc64(u64);

impl Crc64 {
    /// Adds `data` to the checksum.
    pub(crate) fn update(&mut self, data: &[u8]) {
        let mut crc = !self.0;
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            crc ^= u64::from_le_bytes(bytes);
            crc = TABLES[7][(crc & 0xff) as usize]
                ^ TABLES[6][((crc >> 8) & 0xff) as usize]
                ^ TABLES[5][((crc >> 16) & 0xff) as usize]
                ^ TABLES[4][((crc >> 24) & 0xff) as usize]
                ^ TABLES[3][((crc >> 32) & 0xff) as usize]
                ^ TABLES[2][((crc >> 40) & 0xff) as usize]
                ^ TABLES[1][((crc >> 48) & 0xff) as usize]
                ^ TABLES[0][(crc >> 56) as usize];
        }
        for &b in words.remainder() {
            crc = TABLES[0][((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = !crc;
    }

    /// The checksum as tar-split stores it: the eight bytes, big-endian.
    pub(crate) fn sum(&self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// The CRC-64/ISO of `data`, big-endian.
pub(crate) fn checksum(data: &[u8]) -> [u8; 8] {
    let mut crc = Crc64::default();
    crc.update(data);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain bitwise definition, to check the tables against.
    fn bitwise(data: &[u8]) -> u64 {
        let mut crc = !0u64;
        for &b in data {
            crc ^= u64::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn matches_the_bitwise_definition_at_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..data.len() {
            let want = bitwise(&data[..len]);
            assert_eq!(
                u64::from_be_bytes(checksum(&data[..len])),
                want,
                "len {len}"
            );
            let mut split = Crc64::default();
            split.update(&data[..len / 3]);
            split.update(&data[len / 3..len]);
            assert_eq!(u64::from_be_bytes(split.sum()), want, "len {len} split");
        }
    }

    #[test]
    fn known_values() {
        // The catalogue's check value of CRC-64/GO-ISO.
        assert_eq!(
            u64::from_be_bytes(checksum(b"123456789")),
            0xb909_56c7_75a4_1001
        );
        assert_eq!(checksum(b""), [0; 8]);
    }
}
