//! Password-protected OOXML workbooks (xlsx, xlsm, xlsb): an OLE compound file
//! holding `EncryptionInfo` and `EncryptedPackage`, decrypted here into the
//! ZIP package that calamine reads ([MS-OFFCRYPTO]: agile encryption, as
//! Excel 2010 and later write it, and standard encryption, Excel 2007's).
//! Legacy `.xls` files encrypt record by record (RC4, XOR obfuscation): not
//! handled, they are reported.

use std::io::{Cursor, Read};

use aes::cipher::{KeyInit as _, KeyIvInit as _};
use base64::Engine as _;

/// Segment size of an agile-encrypted package.
const SEGMENT: usize = 4096;
/// The block keys of agile encryption ([MS-OFFCRYPTO] 2.3.4.13), one per value.
const VERIFIER_INPUT_BLOCK: [u8; 8] = [0xfe, 0xa7, 0xd2, 0x76, 0x3b, 0x4b, 0x9e, 0x79];
const VERIFIER_VALUE_BLOCK: [u8; 8] = [0xd7, 0xaa, 0x0f, 0x6d, 0x30, 0x61, 0x34, 0x4e];
const KEY_VALUE_BLOCK: [u8; 8] = [0x14, 0x6e, 0x0b, 0xe7, 0xab, 0xac, 0xd0, 0xd6];
/// Key-derivation rounds a file may ask for: Excel writes 100 000; far more
/// would only burn time on a hostile file.
const MAX_SPIN_COUNT: u32 = 10_000_000;

/// Whether `bytes` is an encrypted OOXML package.
pub fn is_encrypted_package(bytes: &[u8]) -> bool {
    cfb::CompoundFile::open(Cursor::new(bytes))
        .is_ok_and(|file| file.is_stream("EncryptionInfo") && file.is_stream("EncryptedPackage"))
}

/// The ZIP package inside an encrypted OOXML file, or why not.
pub fn decrypt_package(bytes: &[u8], password: &str) -> Result<Vec<u8>, String> {
    let mut file = cfb::CompoundFile::open(Cursor::new(bytes))
        .map_err(|e| format!("corrupt encrypted workbook: {e}"))?;
    let read = |file: &mut cfb::CompoundFile<_>, name: &str| -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        file.open_stream(name)
            .and_then(|mut s| s.read_to_end(&mut data))
            .map_err(|e| format!("corrupt encrypted workbook: {name}: {e}"))?;
        Ok(data)
    };
    let info = read(&mut file, "EncryptionInfo")?;
    let package = read(&mut file, "EncryptedPackage")?;
    if info.len() < 8 || package.len() < 8 {
        return Err("corrupt encrypted workbook: truncated streams".into());
    }
    let size = u64::from_le_bytes(package[..8].try_into().expect("8 bytes"));
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let data = &package[8..];
    if size > data.len() {
        return Err("corrupt encrypted workbook: package shorter than it says".into());
    }
    let version = (
        u16::from_le_bytes([info[0], info[1]]),
        u16::from_le_bytes([info[2], info[3]]),
    );
    let mut plain = match version {
        (4, 4) => agile(&info[8..], password, data)?,
        (2..=4, 2) => standard(&info[8..], password, data)?,
        (major, minor) => {
            return Err(format!(
                "password-protected workbook: encryption version {major}.{minor} is not supported"
            ));
        }
    };
    plain.truncate(size);
    Ok(plain)
}

fn wrong_password() -> String {
    "password-protected workbook: the password given does not open it".into()
}

fn corrupt(what: &str) -> String {
    format!("corrupt encrypted workbook: {what}")
}

fn utf16le(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The hash functions agile encryption names.
#[derive(Clone, Copy)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn named(name: &str) -> Result<Hash, String> {
        Ok(match name {
            "SHA1" | "SHA-1" => Hash::Sha1,
            "SHA256" => Hash::Sha256,
            "SHA384" => Hash::Sha384,
            "SHA512" => Hash::Sha512,
            other => {
                return Err(format!(
                    "password-protected workbook: hash {other} is not supported"
                ));
            }
        })
    }

    fn of(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha1::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts),
            Hash::Sha256 => run::<sha2::Sha256>(parts),
            Hash::Sha384 => run::<sha2::Sha384>(parts),
            Hash::Sha512 => run::<sha2::Sha512>(parts),
        }
    }
}

/// `len` bytes of `value`: cut, or padded with `pad`.
fn sized(mut value: Vec<u8>, len: usize, pad: u8) -> Vec<u8> {
    value.resize(len, pad);
    value
}

/// Decrypt whole 16-byte blocks of `$data` in place with the block mode that
/// `$new` builds over `Aes`: AES-128, -192 or -256, picked by the key's length.
macro_rules! aes_decrypt {
    ($key:expr, $data:expr, $new:expr) => {{
        fn run<C>(mut cipher: C, data: &mut [u8])
        where
            C: aes::cipher::BlockModeDecrypt
                + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
        {
            for block in data.as_chunks_mut::<16>().0 {
                cipher.decrypt_block(block.into());
            }
        }
        let bad = |_| corrupt("bad key or IV length");
        match $key.len() {
            16 => {
                type Aes = aes::Aes128;
                run($new.map_err(bad)?, $data)
            }
            24 => {
                type Aes = aes::Aes192;
                run($new.map_err(bad)?, $data)
            }
            32 => {
                type Aes = aes::Aes256;
                run($new.map_err(bad)?, $data)
            }
            n => return Err(corrupt(&format!("AES key of {n} bytes"))),
        }
        Ok(())
    }};
}

/// AES in CBC mode without padding, in place, over whole blocks.
fn aes_cbc_decrypt(key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<(), String> {
    aes_decrypt!(key, data, cbc::Decryptor::<Aes>::new_from_slices(key, iv))
}

/// AES in ECB mode, in place, over whole blocks.
fn aes_ecb_decrypt(key: &[u8], data: &mut [u8]) -> Result<(), String> {
    aes_decrypt!(key, data, ecb::Decryptor::<Aes>::new_from_slice(key))
}

/// The attributes of the first `<…name …>` element of an XML text.
fn attributes<'a>(xml: &'a str, name: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let start = xml
        .match_indices(name)
        .find(|(at, _)| {
            let before = xml[..*at].chars().next_back();
            let after = xml[at + name.len()..].chars().next();
            matches!(before, Some('<' | ':')) && after.is_some_and(char::is_whitespace)
        })?
        .0;
    let tag = &xml[start..start + xml[start..].find('>')?];
    let mut out = Vec::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].rsplit(char::is_whitespace).next().unwrap_or("");
        let value_start = eq + 2;
        let value_end = value_start + rest[value_start..].find('"')?;
        out.push((key, &rest[value_start..value_end]));
        rest = &rest[value_end + 1..];
    }
    Some(out)
}

/// Agile encryption: an XML descriptor, keys derived with the named hash.
fn agile(descriptor: &[u8], password: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let xml = std::str::from_utf8(descriptor).map_err(|_| corrupt("descriptor is not UTF-8"))?;
    let key_data = attributes(xml, "keyData").ok_or_else(|| corrupt("no keyData"))?;
    let key = attributes(xml, "encryptedKey").ok_or_else(|| corrupt("no encryptedKey"))?;
    let get = |attrs: &[(&str, &str)], name: &str| -> Result<String, String> {
        attrs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| corrupt(&format!("no {name}")))
    };
    let number = |attrs: &[(&str, &str)], name: &str| -> Result<usize, String> {
        get(attrs, name)?.parse().map_err(|_| corrupt(name))
    };
    let b64 = |attrs: &[(&str, &str)], name: &str| -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(get(attrs, name)?)
            .map_err(|_| corrupt(name))
    };

    // The password's key: salted hash, re-hashed spinCount times.
    let hash = Hash::named(&get(&key, "hashAlgorithm")?)?;
    let spins = number(&key, "spinCount")?;
    if spins > MAX_SPIN_COUNT as usize {
        return Err(corrupt(&format!("spinCount {spins}")));
    }
    let key_bytes = number(&key, "keyBits")? / 8;
    if !matches!(key_bytes, 16 | 24 | 32) {
        return Err(corrupt(&format!("AES key of {key_bytes} bytes")));
    }
    let salt = b64(&key, "saltValue")?;
    let mut h = hash.of(&[&salt, &utf16le(password)]);
    for i in 0..spins as u32 {
        h = hash.of(&[&i.to_le_bytes(), &h]);
    }
    // Each value of the key encryptor is decrypted with its own key: the
    // password's hash extended by a fixed block.
    let decrypt = |block: [u8; 8], value: &mut Vec<u8>| {
        let key = sized(hash.of(&[&h, &block]), key_bytes, 0x36);
        aes_cbc_decrypt(&key, &salt, value)
    };

    // Check the password: the verifier input's hash must equal the verifier hash.
    let mut input = b64(&key, "encryptedVerifierHashInput")?;
    let mut expected = b64(&key, "encryptedVerifierHashValue")?;
    decrypt(VERIFIER_INPUT_BLOCK, &mut input)?;
    decrypt(VERIFIER_VALUE_BLOCK, &mut expected)?;
    let salt_size = number(&key, "saltSize").unwrap_or(16).min(input.len());
    let got = hash.of(&[&input[..salt_size]]);
    if expected.len() < got.len() || expected[..got.len()] != got[..] {
        return Err(wrong_password());
    }

    // The package key, then the package, segment by segment.
    let mut secret = b64(&key, "encryptedKeyValue")?;
    decrypt(KEY_VALUE_BLOCK, &mut secret)?;
    secret.truncate(key_bytes);
    let package_hash = Hash::named(&get(&key_data, "hashAlgorithm")?)?;
    let package_salt = b64(&key_data, "saltValue")?;
    let block_size = number(&key_data, "blockSize")?;
    if block_size != 16 {
        return Err(corrupt(&format!("AES block of {block_size} bytes")));
    }
    let mut plain = data.to_vec();
    for (i, segment) in plain.chunks_mut(SEGMENT).enumerate() {
        let iv = sized(
            package_hash.of(&[&package_salt, &(i as u32).to_le_bytes()]),
            block_size,
            0x36,
        );
        aes_cbc_decrypt(&secret, &iv, segment)?;
    }
    Ok(plain)
}

/// Standard encryption: a binary header, SHA-1 keys, AES in ECB mode.
fn standard(info: &[u8], password: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let u32_at = |at: usize| -> Result<u32, String> {
        info.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| corrupt("truncated header"))
    };
    // After the version and flags: the header's size (4), then the header:
    // flags, size extra, algorithm, hash algorithm, key size in bits, …
    let header_size = u32_at(0)? as usize;
    let algorithm = u32_at(12)?;
    let key_bits = u32_at(20)? as usize;
    if !matches!(algorithm, 0x660E..=0x6610) || !matches!(key_bits, 128 | 192 | 256) {
        return Err(format!(
            "password-protected workbook: standard encryption with algorithm {algorithm:#x} (not AES) is not supported"
        ));
    }
    let verifier = info
        .get(4 + header_size..)
        .ok_or_else(|| corrupt("truncated verifier"))?;
    if verifier.len() < 4 + 16 + 16 + 4 + 32 {
        return Err(corrupt("truncated verifier"));
    }
    let salt = &verifier[4..20];
    let mut check = verifier[20..36].to_vec();
    let mut check_hash = verifier[40..72].to_vec();

    let mut h = Hash::Sha1.of(&[salt, &utf16le(password)]);
    for i in 0..50_000u32 {
        h = Hash::Sha1.of(&[&i.to_le_bytes(), &h]);
    }
    let h = Hash::Sha1.of(&[&h, &0u32.to_le_bytes()]);
    // CryptDeriveKey: SHA-1 of the hash XORed into 64 bytes of 0x36, then 0x5c.
    let xored = |pad: u8| -> Vec<u8> {
        let mut block = vec![pad; 64];
        for (b, x) in block.iter_mut().zip(&h) {
            *b ^= x;
        }
        Hash::Sha1.of(&[&block])
    };
    let mut derived = xored(0x36);
    derived.extend(xored(0x5c));
    let key = &derived[..key_bits / 8];

    aes_ecb_decrypt(key, &mut check)?;
    aes_ecb_decrypt(key, &mut check_hash)?;
    if Hash::Sha1.of(&[&check]) != check_hash[..20] {
        return Err(wrong_password());
    }
    let mut plain = data.to_vec();
    let whole = plain.len() / 16 * 16;
    aes_ecb_decrypt(key, &mut plain[..whole])?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_of_a_prefixed_element() {
        let xml = r#"<encryption><keyData saltSize="16" blockSize="16"/><keyEncryptors><keyEncryptor><p:encryptedKey spinCount="100000" saltValue="AAEC"/></keyEncryptor></keyEncryptors></encryption>"#;
        let key = attributes(xml, "encryptedKey").unwrap();
        assert_eq!(key, vec![("spinCount", "100000"), ("saltValue", "AAEC")]);
        let data = attributes(xml, "keyData").unwrap();
        assert_eq!(data[1], ("blockSize", "16"));
        // `keyEncryptors` is not `keyEncryptor`, nor `keyData`.
        assert!(attributes(xml, "keyEncryptorX").is_none());
    }
}
