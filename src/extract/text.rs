//! Plain text and Markdown files, and the character-set decoding that CSV shares.

use std::borrow::Cow;

use crate::document::{Format, Location, Section};
use crate::extract::Extracted;

/// Decode bytes as UTF-8 or UTF-16 (by byte-order mark), else as Windows-1252,
/// the usual encoding of French files that are not UTF-8.
pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, _) = encoding.decode_without_bom_handling(&bytes[bom..]);
        return text;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

/// Normalise line ends to `\n` and drop NUL characters.
pub fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r'], "\n")
        .replace('\0', "")
}

pub fn extract(bytes: &[u8], format: Format) -> Result<Extracted, String> {
    let text = normalize_newlines(&decode(bytes));
    let title = match format {
        Format::Markdown => text
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .map(|t| t.trim().to_string()),
        _ => None,
    };
    Ok(Extracted {
        title,
        pages: 1,
        sections: vec![Section::new(
            text.trim_end().to_string(),
            Location::default(),
        )],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_utf16_and_cp1252() {
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("élève".encode_utf16().flat_map(|u| u.to_le_bytes()))
            .collect();
        assert_eq!(decode(&utf16), "élève");
        assert_eq!(decode(&[0xE9, b't', 0xE9]), "été");
        assert_eq!(decode("déjà".as_bytes()), "déjà");
    }
}
