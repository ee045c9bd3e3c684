//! sha256 digests: parsing `sha256:<hex>`, hashing streams, chain ids.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>` (by oci-spec's rules); any
    /// other algorithm or form is refused.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let parsed = oci_spec::image::Digest::from_str(s)
            .map_err(|e| format!("digest {s:?} does not parse: {e}"))?;
        if parsed.algorithm() != &oci_spec::image::DigestAlgorithm::Sha256 {
            return Err(format!("digest {s:?} is not sha256:<hex>"));
        }
        Ok(Digest(parsed.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let out = h.finalize();
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in out {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The whole `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The chain ids of a stack of layers, bottom first (`plies_layerdb::chain_ids`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.0.clone()).collect();
    plies_layerdb::chain_ids(&ids)
        .into_iter()
        .map(Digest)
        .collect()
}

/// How many bytes the hashing thread of [`HashedStream`] reads ahead in one chunk.
const CHUNK: usize = 1 << 20;

/// Chunks in flight between the hashing thread and the reader.
const IN_FLIGHT: usize = 4;

/// A stream read, hashed and counted on a thread of its own, and handed on through
/// [`Read`]: the consumer (applying a layer, say) and the sha256 of a layer run on
/// two cores instead of one after the other.
pub struct HashedStream<'scope> {
    chunks: Receiver<io::Result<Vec<u8>>>,
    spare: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    thread: ScopedJoinHandle<'scope, (Digest, u64)>,
}

impl<'scope> HashedStream<'scope> {
    /// Starts reading `input` on a thread of `scope`.
    pub fn spawn<'env, R: Read + Send + 'scope>(
        scope: &'scope Scope<'scope, 'env>,
        mut input: R,
    ) -> Self {
        let (chunk_tx, chunks) = sync_channel(IN_FLIGHT);
        let (spare, spare_rx) = channel::<Vec<u8>>();
        let thread = scope.spawn(move || {
            let mut hasher = Sha256::new();
            let mut count = 0u64;
            loop {
                let mut buf = spare_rx.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let mut len = 0;
                let failure = loop {
                    match input.read(&mut buf[len..]) {
                        Ok(0) => break None,
                        Ok(n) => {
                            len += n;
                            if len == buf.len() {
                                break None;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Some(e),
                    }
                };
                buf.truncate(len);
                hasher.update(&buf);
                count += len as u64;
                let end = len < CHUNK || failure.is_some();
                // A gone reader stopped early (an error while applying): stop too.
                if len > 0 && chunk_tx.send(Ok(buf)).is_err() {
                    break;
                }
                if let Some(e) = failure {
                    let _ = chunk_tx.send(Err(e));
                    break;
                }
                if end {
                    break;
                }
            }
            (Digest::from_hasher(hasher), count)
        });
        HashedStream {
            chunks,
            spare,
            current: Vec::new(),
            pos: 0,
            thread,
        }
    }

    /// Reads the rest of the stream (a tar's trailing padding, say), then returns
    /// the digest and the byte count of all of it.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        self.thread
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))
    }
}

impl Read for HashedStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(next)) => {
                    let used = std::mem::replace(&mut self.current, next);
                    let _ = self.spare.send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread is done: everything was handed over.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(hex: &str) -> Digest {
        Digest::parse(&format!("sha256:{hex}")).unwrap()
    }

    #[test]
    fn parse_refuses_other_forms() {
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:ABCD").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_ok());
    }

    /// Reads in odd-sized pieces and fails once, after `fail_at` bytes, if asked.
    struct Jagged {
        data: Vec<u8>,
        pos: usize,
        fail_at: Option<usize>,
    }

    impl Read for Jagged {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(7919).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn jagged(len: usize, fail_at: Option<usize>) -> Jagged {
        Jagged {
            data: (0..len).map(|i| (i * 31 % 251) as u8).collect(),
            pos: 0,
            fail_at,
        }
    }

    #[test]
    fn hashed_stream_hands_on_every_byte_and_hashes_them() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            let input = jagged(len, None);
            let expected = Digest::of(&input.data);
            let data = input.data.clone();
            std::thread::scope(|s| {
                let mut stream = HashedStream::spawn(s, input);
                // Read only part, as a tar reader stops at the end-of-archive blocks.
                let mut head = vec![0; len / 2];
                stream.read_exact(&mut head).unwrap();
                assert_eq!(head, data[..len / 2]);
                let (digest, count) = stream.finish().unwrap();
                assert_eq!((digest, count), (expected.clone(), len as u64), "{len}");
            });
        }
    }

    #[test]
    fn hashed_stream_passes_on_a_read_error_after_the_data_before_it() {
        let fail_at = 2 * CHUNK + 100;
        std::thread::scope(|s| {
            let input = jagged(3 * CHUNK, Some(fail_at));
            let data = input.data.clone();
            let mut stream = HashedStream::spawn(s, input);
            let mut all = Vec::new();
            let err = stream.read_to_end(&mut all).unwrap_err();
            assert_eq!(err.to_string(), "disk on fire");
            // Every byte the source gave before failing arrives, then the error.
            assert!(
                (fail_at..fail_at + 7919).contains(&all.len()),
                "{}",
                all.len()
            );
            assert_eq!(all, data[..all.len()]);
        });
    }

    #[test]
    fn hashed_stream_stops_when_its_reader_goes_away() {
        std::thread::scope(|s| {
            let mut stream = HashedStream::spawn(s, jagged(64 * CHUNK, None));
            let mut one = [0u8; 1];
            stream.read_exact(&mut one).unwrap();
            drop(stream);
            // The scope joins the thread: this returns only if it stopped.
        });
    }

    #[test]
    fn empty_digest() {
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// The chain ids of the fixture image as Docker 20.10 stored them in
    /// `image/overlay2/layerdb/sha256/` (the e2e tests read them from the store too).
    #[test]
    fn chain_ids_match_docker() {
        let diffs = [
            d("4105d678e27883a7bb1186388949143d5a0a577ce403ebd0d80c83375268110a"),
            d("18d73715470214ffa41a79db129b0d2e3f9755cbdc1e5aac6c52478ced181781"),
            d("d4304a67c341e7002e8219a80c99b4ca47697a25746933cce71a164d651a59d8"),
        ];
        let chain = chain_ids(&diffs);
        assert_eq!(chain[0], diffs[0]);
        assert_eq!(
            chain[1].hex(),
            "0ceab6faad160e475e8ffad229c4e0b44567d4544b6a200c35d5b3375d137e8e"
        );
        assert_eq!(
            chain[2].hex(),
            "1ae6a702e2d496b9b9faad683d05230115571b246e49fdd657460a3cd66a74e1"
        );
    }
}
