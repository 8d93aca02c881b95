//! Git deploy keys: the shape check and fingerprint of an SSH private key.
//!
//! A key is accepted in the formats OpenSSH itself loads: the OpenSSH format
//! (`-----BEGIN OPENSSH PRIVATE KEY-----`, what `ssh-keygen` writes) for ed25519,
//! ecdsa and rsa keys, and PEM (`RSA PRIVATE KEY`, `EC PRIVATE KEY`, PKCS#8
//! `PRIVATE KEY` holding RSA or EC). It must be unencrypted: git runs without a
//! terminal to ask for a passphrase.
//!
//! The fingerprint is the one `ssh-keygen -l` prints (`SHA256:` + unpadded base64 of
//! the SHA-256 of the public key blob), so a user can match it against the deploy
//! key registered on their Git host. Every format above carries the public key (or,
//! for RSA, the numbers that make it), so no curve arithmetic is needed: this module
//! only reads the encodings. It checks that the public key stored beside the private
//! one agrees with it, so the fingerprint shown belongs to the key stored.
//!
//! Error messages never quote the key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::Digest;

/// Largest private key text accepted (an RSA 8192 key in OpenSSH format is about 6.5 KiB).
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// What a deploy key is, told without revealing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The SSH key type: `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …
    pub key_type: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("private_key is larger than {MAX_KEY_BYTES} bytes")]
    TooLarge,
    #[error(
        "private_key is not an SSH private key: expected the text of an OpenSSH (BEGIN OPENSSH PRIVATE KEY) \
         or PEM (BEGIN RSA PRIVATE KEY, BEGIN EC PRIVATE KEY, BEGIN PRIVATE KEY) private key"
    )]
    NotAKey,
    #[error("private_key is damaged: {0}")]
    Damaged(&'static str),
    #[error(
        "private_key is protected by a passphrase; git cannot ask for one, so a deploy key must be unencrypted \
         (ssh-keygen -p -N '' -f KEY removes it from a copy)"
    )]
    Encrypted,
    #[error("private_key is a {0} key, which OpenSSH does not load here; use an ed25519, ecdsa or rsa key")]
    Unsupported(&'static str),
}

/// Checks that `text` is one unencrypted SSH private key and says what it is.
pub fn inspect(text: &str) -> Result<KeyInfo, KeyError> {
    if text.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLarge);
    }
    let pem = Armor::parse(text)?;
    let blob = match pem.label {
        "OPENSSH PRIVATE KEY" => openssh(&pem.body)?,
        "RSA PRIVATE KEY" | "EC PRIVATE KEY" if pem.encrypted => return Err(KeyError::Encrypted),
        "RSA PRIVATE KEY" => pkcs1(&pem.body)?,
        "EC PRIVATE KEY" => sec1(&pem.body, None)?,
        "PRIVATE KEY" => pkcs8(&pem.body)?,
        "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
        "DSA PRIVATE KEY" => return Err(KeyError::Unsupported("dsa")),
        _ => return Err(KeyError::NotAKey),
    };
    let key_type = SshReader(&blob).string().and_then(|t| std::str::from_utf8(t).ok()).unwrap_or_default();
    Ok(KeyInfo {
        key_type: key_type.to_string(),
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(sha2::Sha256::digest(&blob))),
    })
}

/// A PEM-style block: `-----BEGIN label-----`, optional `Name: value` headers, base64,
/// `-----END label-----`, and nothing else but whitespace around it.
struct Armor<'a> {
    label: &'a str,
    encrypted: bool,
    body: Vec<u8>,
}

impl<'a> Armor<'a> {
    fn parse(text: &'a str) -> Result<Armor<'a>, KeyError> {
        let mut lines = text.trim().lines().map(str::trim);
        let label = lines
            .next()
            .and_then(|l| l.strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or(KeyError::NotAKey)?;
        let end = format!("-----END {label}-----");
        let (mut encrypted, mut body, mut ended) = (false, String::new(), false);
        for line in lines.by_ref() {
            if line == end {
                ended = true;
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                // RFC 1421 headers of traditional PEM (`Proc-Type: 4,ENCRYPTED`).
                if body.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    encrypted |= name.eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED");
                    continue;
                }
                return Err(KeyError::Damaged("unexpected text inside the key block"));
            }
            if !line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
                return Err(KeyError::Damaged("the key block is not base64"));
            }
            body.push_str(line);
        }
        if !ended {
            return Err(KeyError::Damaged("the END line is missing"));
        }
        if lines.next().is_some() {
            return Err(KeyError::Damaged("text follows the END line; give exactly one key"));
        }
        let body = STANDARD.decode(body).map_err(|_| KeyError::Damaged("the key block is not base64"))?;
        Ok(Armor { label, encrypted, body })
    }
}

/// Reads SSH wire encoding (RFC 4251): `uint32` and length-prefixed strings.
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(s)
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Key parts are far below 4 GiB: the text is capped at MAX_KEY_BYTES.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

const DAMAGED: KeyError = KeyError::Damaged("the OpenSSH key structure is broken");

/// The public key blob of an OpenSSH-format private key (PROTOCOL.key in OpenSSH).
fn openssh(bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let rest = bytes.strip_prefix(b"openssh-key-v1\0").ok_or(KeyError::Damaged("not an openssh-key-v1 key"))?;
    let mut r = SshReader(rest);
    let cipher = r.string().ok_or(DAMAGED)?;
    let kdf = r.string().ok_or(DAMAGED)?;
    let _kdf_options = r.string().ok_or(DAMAGED)?;
    if cipher != b"none" || kdf != b"none" {
        return Err(KeyError::Encrypted);
    }
    if r.u32().ok_or(DAMAGED)? != 1 {
        return Err(KeyError::Damaged("the file holds more than one key; give exactly one"));
    }
    let public = r.string().ok_or(DAMAGED)?;
    let private = r.string().ok_or(DAMAGED)?;
    if !r.0.is_empty() || private.len() % 8 != 0 {
        return Err(DAMAGED);
    }
    let mut p = SshReader(public);
    let key_type = p.string().ok_or(DAMAGED)?;
    match key_type {
        b"ssh-ed25519" | b"ssh-rsa" | b"ecdsa-sha2-nistp256" | b"ecdsa-sha2-nistp384" | b"ecdsa-sha2-nistp521" => {}
        b"ssh-dss" => return Err(KeyError::Unsupported("dsa")),
        t if t.starts_with(b"sk-") => return Err(KeyError::Unsupported("security-key (FIDO)")),
        _ => return Err(KeyError::Unsupported("unknown")),
    }
    // The private section opens with two equal check numbers and repeats the key
    // type and public parts; they must agree with the public blob.
    let mut s = SshReader(private);
    if s.u32().ok_or(DAMAGED)? != s.u32().ok_or(DAMAGED)? {
        return Err(KeyError::Damaged("its check numbers differ"));
    }
    if s.string().ok_or(DAMAGED)? != key_type {
        return Err(KeyError::Damaged("its private part is of another type than its public part"));
    }
    let mut public_parts = Vec::new();
    while let Some(part) = p.string() {
        public_parts.push(part);
    }
    if !p.0.is_empty() {
        return Err(DAMAGED);
    }
    let private_public: Vec<&[u8]> = match key_type {
        // rsa: the public blob is (e, n), the private section starts (n, e).
        b"ssh-rsa" => {
            let (n, e) = (s.string().ok_or(DAMAGED)?, s.string().ok_or(DAMAGED)?);
            vec![e, n]
        }
        // ed25519: (pub); ecdsa: (curve, point).
        b"ssh-ed25519" => vec![s.string().ok_or(DAMAGED)?],
        _ => vec![s.string().ok_or(DAMAGED)?, s.string().ok_or(DAMAGED)?],
    };
    if private_public != public_parts {
        return Err(KeyError::Damaged("its private part does not match its public part"));
    }
    Ok(public.to_vec())
}

/// One DER element: its tag and contents.
struct Der<'a> {
    tag: u8,
    contents: &'a [u8],
}

/// Reads a sequence of DER elements (only what private keys use: definite lengths).
struct DerReader<'a>(&'a [u8]);

impl<'a> DerReader<'a> {
    fn next(&mut self) -> Option<Der<'a>> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if len > rest.len() {
            return None;
        }
        let (contents, rest) = rest.split_at(len);
        self.0 = rest;
        Some(Der { tag, contents })
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], KeyError> {
        match self.next() {
            Some(d) if d.tag == tag => Ok(d.contents),
            _ => Err(KeyError::Damaged("the PEM key's DER structure is broken")),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// Curve OIDs, SSH curve names, and the length of an uncompressed point.
const CURVES: &[(&[u8], &str, usize)] = &[
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07], "nistp256", 65),
    (&[0x2b, 0x81, 0x04, 0x00, 0x22], "nistp384", 97),
    (&[0x2b, 0x81, 0x04, 0x00, 0x23], "nistp521", 133),
];

/// A DER INTEGER's contents are already an SSH `mpint` (minimal two's complement);
/// an RSA modulus or exponent must be positive and minimal.
fn positive(int: &[u8]) -> Result<&[u8], KeyError> {
    let minimal = !(int.len() > 1 && int[0] == 0 && int[1] < 0x80);
    if int.is_empty() || int[0] >= 0x80 || !minimal {
        return Err(KeyError::Damaged("an RSA number is malformed"));
    }
    Ok(int)
}

/// PKCS#1 `RSAPrivateKey` → `ssh-rsa` blob (e, n).
fn pkcs1(der: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut r = DerReader(DerReader(der).expect(SEQUENCE)?);
    let version = r.expect(INTEGER)?;
    if version != [0] && version != [1] {
        return Err(KeyError::Damaged("unknown RSA key version"));
    }
    let n = positive(r.expect(INTEGER)?)?;
    let e = positive(r.expect(INTEGER)?)?;
    // The private exponent and the primes follow; their presence is what makes it a private key.
    for _ in 0..6 {
        r.expect(INTEGER)?;
    }
    let mut blob = Vec::with_capacity(n.len() + e.len() + 19);
    put_string(&mut blob, b"ssh-rsa");
    put_string(&mut blob, e);
    put_string(&mut blob, n);
    Ok(blob)
}

/// SEC1 `ECPrivateKey` → `ecdsa-sha2-*` blob; `curve` comes from PKCS#8 when the
/// inner structure leaves it out.
fn sec1(der: &[u8], curve: Option<&[u8]>) -> Result<Vec<u8>, KeyError> {
    let mut r = DerReader(DerReader(der).expect(SEQUENCE)?);
    if r.expect(INTEGER)? != [1] {
        return Err(KeyError::Damaged("unknown EC key version"));
    }
    r.expect(OCTET_STRING)?;
    let (mut oid, mut point) = (curve, None);
    while let Some(field) = r.next() {
        match field.tag {
            // [0] parameters: the curve's OID.
            0xa0 => oid = Some(DerReader(field.contents).expect(OID)?),
            // [1] publicKey: a BIT STRING with no unused bits.
            0xa1 => {
                let bits = DerReader(field.contents).expect(BIT_STRING)?;
                point = Some(bits.strip_prefix(&[0]).ok_or(KeyError::Damaged("the EC public key is malformed"))?);
            }
            _ => return Err(KeyError::Damaged("the EC key has an unknown field")),
        }
    }
    let oid = oid.ok_or(KeyError::Damaged("the EC key names no curve"))?;
    let (_, name, len) = CURVES
        .iter()
        .find(|(o, _, _)| *o == oid)
        .ok_or(KeyError::Unsupported("EC key on a curve other than P-256, P-384 or P-521"))?;
    let point = point.ok_or(KeyError::Damaged(
        "the EC key does not include its public key (openssl ec -in KEY writes one that does)",
    ))?;
    if point.len() != *len || point[0] != 0x04 {
        return Err(KeyError::Damaged("the EC public key is not an uncompressed point of its curve"));
    }
    let mut blob = Vec::with_capacity(point.len() + 40);
    put_string(&mut blob, format!("ecdsa-sha2-{name}").as_bytes());
    put_string(&mut blob, name.as_bytes());
    put_string(&mut blob, point);
    Ok(blob)
}

/// PKCS#8 `PrivateKeyInfo` holding an RSA or EC key.
fn pkcs8(der: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut r = DerReader(DerReader(der).expect(SEQUENCE)?);
    r.expect(INTEGER)?;
    let mut alg = DerReader(r.expect(SEQUENCE)?);
    let oid = alg.expect(OID)?;
    let inner = r.expect(OCTET_STRING)?;
    match oid {
        OID_RSA => pkcs1(inner),
        OID_EC => sec1(inner, Some(alg.expect(OID)?)),
        OID_ED25519 => Err(KeyError::Unsupported("PKCS#8 ed25519 (OpenSSH reads ed25519 keys only in its own format)")),
        _ => Err(KeyError::Unsupported("PKCS#8 key of an unknown algorithm")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Throw-away keys made for these tests with ssh-keygen and openssl; the expected
    // fingerprints are what `ssh-keygen -l -f` printed for each file.
    const ED25519: &str = include_str!("testdata/ed25519");
    const ED25519_FP: &str = include_str!("testdata/ed25519.fp");
    const ECDSA: &str = include_str!("testdata/ecdsa");
    const ECDSA_FP: &str = include_str!("testdata/ecdsa.fp");
    const RSA_OPENSSH: &str = include_str!("testdata/rsa");
    const RSA_PKCS1: &str = include_str!("testdata/rsa.pkcs1");
    const RSA_PKCS8: &str = include_str!("testdata/rsa.pkcs8");
    const RSA_FP: &str = include_str!("testdata/rsa.fp");
    const EC_SEC1: &str = include_str!("testdata/ec.sec1");
    const EC_PKCS8: &str = include_str!("testdata/ec.pkcs8");
    const EC_FP: &str = include_str!("testdata/ec.fp");
    const ENCRYPTED: &str = include_str!("testdata/ed25519.encrypted");
    const ED25519_PKCS8: &str = include_str!("testdata/ed25519.pkcs8");

    #[test]
    fn fingerprints_match_ssh_keygen_in_every_format() {
        for (key, fp, kind) in [
            (ED25519, ED25519_FP, "ssh-ed25519"),
            (ECDSA, ECDSA_FP, "ecdsa-sha2-nistp384"),
            (RSA_OPENSSH, RSA_FP, "ssh-rsa"),
            (RSA_PKCS1, RSA_FP, "ssh-rsa"),
            (RSA_PKCS8, RSA_FP, "ssh-rsa"),
            (EC_SEC1, EC_FP, "ecdsa-sha2-nistp256"),
            (EC_PKCS8, EC_FP, "ecdsa-sha2-nistp256"),
        ] {
            let info = inspect(key).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(info.fingerprint, fp.trim(), "{kind}");
            assert_eq!(info.key_type, kind);
        }
        // CRLF line ends and surrounding blank lines are fine.
        let crlf = format!("\n\n{}\n", ED25519.replace('\n', "\r\n"));
        assert_eq!(inspect(&crlf).unwrap().fingerprint, ED25519_FP.trim());
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it() {
        assert_eq!(inspect(ENCRYPTED), Err(KeyError::Encrypted));
        let traditional_encrypted = RSA_PKCS1.replacen(
            "-----\n",
            "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\n",
            1,
        );
        assert_eq!(inspect(&traditional_encrypted), Err(KeyError::Encrypted));
        assert!(matches!(inspect(ED25519_PKCS8), Err(KeyError::Unsupported(_))));
        let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOm5 user@host";
        assert_eq!(inspect(public), Err(KeyError::NotAKey));
        assert_eq!(inspect(""), Err(KeyError::NotAKey));
        assert_eq!(inspect("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"), Err(KeyError::NotAKey));
        assert_eq!(inspect(&"A".repeat(MAX_KEY_BYTES + 1)), Err(KeyError::TooLarge));
        let two = format!("{ED25519}\n{ED25519}");
        assert!(matches!(inspect(&two), Err(KeyError::Damaged(_))));
        let unterminated = ED25519.replace("-----END OPENSSH PRIVATE KEY-----", "");
        assert!(matches!(inspect(&unterminated), Err(KeyError::Damaged(_))));

        // Damage anywhere in the body is caught: a flipped character either breaks the
        // structure or makes the public and private halves disagree.
        let lines: Vec<&str> = ED25519.lines().collect();
        let body_lines = 1..lines.len() - 1;
        let mut refused = 0;
        let mut total = 0;
        for i in body_lines {
            for at in (0..lines[i].len()).step_by(7) {
                let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let c = changed[i].as_bytes()[at];
                let replacement = if c == b'A' { 'B' } else { 'A' };
                changed[i].replace_range(at..=at, &replacement.to_string());
                total += 1;
                match inspect(&changed.join("\n")) {
                    // Only a change to the private-only parts (seed, comment, padding)
                    // can pass, and then the public key, so the fingerprint, is intact.
                    Ok(info) => assert_eq!(info.fingerprint, ED25519_FP.trim(), "line {i} col {at}"),
                    Err(e) => {
                        refused += 1;
                        assert!(!e.to_string().contains(&changed[i]), "{e}");
                    }
                }
            }
        }
        assert!(refused > 0 && total > 10, "{refused} of {total}");
    }

    #[test]
    fn der_lengths_are_bounded() {
        // A length running past the end, and a five-byte length, are refused.
        assert!(DerReader(&[0x30, 0x05, 0x02, 0x01]).next().is_none());
        assert!(DerReader(&[0x30, 0x85, 1, 0, 0, 0, 0]).next().is_none());
        let mut r = DerReader(&[0x02, 0x81, 0x01, 0x07]);
        assert_eq!(r.next().map(|d| (d.tag, d.contents.to_vec())), Some((0x02, vec![7])));
        assert!(SshReader(&[0, 0, 0, 9, 1, 2]).string().is_none());
        assert!(positive(&[0x00, 0x05]).is_err() && positive(&[0x80]).is_err() && positive(&[0x00, 0x80]).is_ok());
    }
}
