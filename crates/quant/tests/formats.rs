//! Dequantization against blocks dequantized by an independent implementation
//! (the `gguf` Python package; `scripts/quant_reference.py` wrote the file).

use moulin_quant::{GgmlType, dequantize, name_of_id};

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/llm/quant_blocks.json"
    );
    let text = std::fs::read_to_string(path).expect("fixtures/llm/quant_blocks.json");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn every_type_decodes_bit_exactly_like_ggml() {
    let fixture = fixture();
    let cases = fixture["cases"].as_object().expect("cases");
    let mut checked = Vec::new();
    for kind in GgmlType::ALL {
        if kind == GgmlType::F32 {
            continue; // a plain copy
        }
        let case = &cases
            .get(kind.name())
            .unwrap_or_else(|| panic!("no reference blocks for {}", kind.name()));
        let bytes: Vec<u8> = (0..case["bytes"].as_str().unwrap().len() / 2)
            .map(|i| {
                u8::from_str_radix(&case["bytes"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
            })
            .collect();
        let bits: Vec<u32> = case["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        let mut out = vec![0f32; bits.len()];
        dequantize(kind, &bytes, &mut out).unwrap();
        for (i, (got, want)) in out.iter().zip(&bits).enumerate() {
            assert_eq!(
                got.to_bits(),
                *want,
                "{} value {i}: {got} but ggml gives {}",
                kind.name(),
                f32::from_bits(*want)
            );
        }
        checked.push(kind.name());
    }
    assert_eq!(checked.len(), 12, "{checked:?}");
}

#[test]
fn sizes_are_checked_and_unknown_types_named() {
    let mut out = vec![0f32; 256];
    let err = dequantize(GgmlType::Q4K, &[0u8; 143], &mut out).unwrap_err();
    assert!(err.contains("143 bytes") && err.contains("144"), "{err}");
    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).unwrap_err();
    assert!(err.contains("not a whole number of Q4_0 blocks"), "{err}");
    assert_eq!(GgmlType::from_id(23), Err(23));
    assert_eq!(name_of_id(23), "IQ4_XS");
    assert_eq!(name_of_id(12), "Q4_K");
    assert_eq!(name_of_id(999), "ggml type 999");
    assert!(GgmlType::supported_names().contains("Q6_K"));
}
