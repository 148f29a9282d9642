//! What a put sent, hashed as it is sent: the BLAKE3 of the whole body and the MD5 of each
//! part, so that the ETag the server answers with can say whether it stored exactly that.
//!
//! An S3 server (AWS without KMS encryption, MinIO, s3s, Ceph RGW…) gives a single-part
//! object the MD5 of its content as ETag, and a multipart one the MD5 of its parts' MD5s
//! followed by `-` and the number of parts, each computed by the server over what it
//! received. When the ETag is the one the bytes sent would have, the server holds those
//! bytes, and their BLAKE3 is the stored object's: the adapter reports it in
//! [`ObjectMeta::checksum`](ferry_store::ObjectMeta::checksum) and a checksum verification
//! needs no second read of the object over the network. Any other ETag (a server that
//! encrypts, a local file's, memory's) proves nothing and no checksum is reported.

use md5::{Digest, Md5};

/// The hashes of a body being sent, in parts of `part_size` bytes.
pub(crate) struct Sent {
    part_size: usize,
    blake3: blake3::Hasher,
    part: Md5,
    part_len: usize,
    parts: Vec<[u8; 16]>,
}

impl Sent {
    pub(crate) fn new(part_size: usize) -> Sent {
        Sent {
            part_size: part_size.max(1),
            blake3: blake3::Hasher::new(),
            part: Md5::new(),
            part_len: 0,
            parts: Vec::new(),
        }
    }

    /// Hashes the next bytes of the body.
    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        self.blake3.update(bytes);
        while !bytes.is_empty() {
            let take = bytes.len().min(self.part_size - self.part_len);
            let (now, rest) = bytes.split_at(take);
            self.part.update(now);
            self.part_len += take;
            if self.part_len == self.part_size {
                self.end_part();
            }
            bytes = rest;
        }
    }

    fn end_part(&mut self) {
        self.parts.push(self.part.finalize_reset().into());
        self.part_len = 0;
    }

    /// The BLAKE3 of what was sent, when `e_tag` (unquoted) is the ETag an S3 server gives
    /// exactly these bytes: uploaded in one put (`multipart` false) or in parts of the part
    /// size.
    pub(crate) fn confirmed_by(mut self, e_tag: &str, multipart: bool) -> Option<blake3::Hash> {
        if self.part_len > 0 || self.parts.is_empty() {
            self.end_part();
        }
        let expected = if multipart {
            let mut of_parts = Md5::new();
            for part in &self.parts {
                of_parts.update(part);
            }
            format!("{}-{}", hex(&of_parts.finalize()), self.parts.len())
        } else if let [whole] = self.parts[..] {
            hex(&whole)
        } else {
            return None;
        };
        expected
            .eq_ignore_ascii_case(e_tag)
            .then(|| self.blake3.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5_hex(data: &[u8]) -> String {
        hex(&Md5::digest(data))
    }

    #[test]
    fn a_single_put_is_confirmed_by_the_md5_of_its_content_only() {
        let data = b"some content, sent in pieces";
        let mut sent = Sent::new(1 << 20);
        for piece in data.chunks(5) {
            sent.update(piece);
        }
        let etag = md5_hex(data).to_uppercase();
        assert_eq!(
            Sent::new(1 << 20).confirmed_by(&md5_hex(b""), false),
            Some(blake3::hash(b""))
        );
        let mut other = Sent::new(1 << 20);
        other.update(b"other content");
        assert_eq!(other.confirmed_by(&etag, false), None);
        assert_eq!(sent.confirmed_by(&etag, false), Some(blake3::hash(data)));
    }

    #[test]
    fn a_multipart_upload_is_confirmed_by_the_md5_of_its_parts_md5s() {
        let data: Vec<u8> = (0..25u8).collect();
        // Parts of 10, 10 and 5 bytes, whatever the pieces the body came in.
        let mut of_parts = Vec::new();
        for part in data.chunks(10) {
            of_parts.extend_from_slice(&Md5::digest(part));
        }
        let etag = format!("{}-3", md5_hex(&of_parts));
        for piece in [1, 7, 10, 25] {
            let mut sent = Sent::new(10);
            for chunk in data.chunks(piece) {
                sent.update(chunk);
            }
            assert_eq!(
                sent.confirmed_by(&etag, true),
                Some(blake3::hash(&data)),
                "pieces of {piece}"
            );
        }
        let mut sent = Sent::new(10);
        sent.update(&data);
        assert_eq!(sent.confirmed_by(&md5_hex(&data), true), None);
        let mut wrong = Sent::new(10);
        wrong.update(&data[1..]);
        assert_eq!(wrong.confirmed_by(&etag, true), None);
    }
}
