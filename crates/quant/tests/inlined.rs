//! Every SIMD intrinsic the kernels use is compiled into them. An intrinsic
//! that needs an instruction set its caller is not compiled with (say
//! `_mm512_insertf32x8`, AVX-512DQ, in a function compiled for AVX-512F and
//! VNNI) still builds, but as a call to an out-of-line copy, with a
//! `vzeroupper` and the vectors passed through memory: one such call per
//! pair of blocks cost a sixth of a Q8_0 decoding step. Such copies keep
//! their names in the binary (`core::core_arch::x86::<set>::<intrinsic>`),
//! so this test reads its own symbol table and lists them.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use moulin_quant::{GgmlType, Kernel, QuantMatrix, matmul_with};

/// A Rust mangled name's next identifier at `at` (`<len><ident>`, both
/// manglings): the identifier and where the one after it starts.
fn ident(bytes: &[u8], at: usize) -> Option<(&str, usize)> {
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let len: usize = std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    let start = at + digits;
    let name = std::str::from_utf8(bytes.get(start..start + len)?).ok()?;
    Some((name, start + len))
}

#[test]
fn no_simd_intrinsic_is_left_a_call() {
    // Run every kernel on every block type, so that all of them are linked
    // (they are reached through run-time dispatch anyway).
    for kind in GgmlType::ALL.into_iter().filter(|k| k.is_quantized()) {
        let cols = 576usize.div_ceil(kind.block_size()) * kind.block_size();
        let bytes = 8 * kind.bytes_for(cols).unwrap();
        let w = QuantMatrix::new(kind, 8, cols, vec![0; bytes]).unwrap();
        let x = vec![0.5f32; 16 * cols];
        for &kernel in Kernel::supported() {
            for rows in [1, 16] {
                let y = matmul_with(kernel, &x[..rows * cols], rows, &[&w]);
                assert_eq!(y.len(), rows * 8);
            }
        }
    }
    use object::{Object, ObjectSymbol};
    let exe = std::fs::read("/proc/self/exe").unwrap();
    let file = object::File::parse(&*exe).unwrap();
    let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
    // The binary keeps its symbols (else this test would prove nothing).
    assert!(
        names.iter().any(|n| n.contains("12moulin_quant")),
        "the test binary has no symbols"
    );
    let needle = "9core_arch3x86";
    let mut calls = std::collections::BTreeSet::new();
    for name in names {
        let Some(at) = name.find(needle) else {
            continue;
        };
        let bytes = name.as_bytes();
        let Some((set, next)) = ident(bytes, at + needle.len()) else {
            continue;
        };
        // `_xgetbv` is the standard library's own feature detection.
        if set == "xsave" {
            continue;
        }
        let intrinsic = ident(bytes, next).map_or("?", |(n, _)| n);
        calls.insert(format!("{set}::{intrinsic}"));
    }
    assert!(
        calls.is_empty(),
        "intrinsics left as calls (compile their callers with their instruction sets): {calls:?}"
    );
}
