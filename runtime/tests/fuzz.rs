//! Property tests: parsers fed arbitrary input return errors, never panic.

mod common;

use std::path::Path;

use oats_runtime::input::decode_image;
use oats_runtime::{InputSpec, Manifest};
use proptest::prelude::*;

fn valid_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = common::tempdir();
        let m = common::write_shared_export(dir.path());
        serde_yaml::to_string(&m).unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parser_survives_arbitrary_strings(s in any::<String>()) {
        let _ = Manifest::from_yaml_str(&s, Path::new("fuzz.yaml"));
    }

    #[test]
    fn manifest_parser_survives_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let s = String::from_utf8_lossy(&b);
        let _ = Manifest::from_yaml_str(&s, Path::new("fuzz.yaml"));
    }

    /// Mutations of a valid manifest reach deeper than random text.
    #[test]
    fn manifest_parser_survives_mutated_manifests(
        line in 0usize..200,
        replacement in "[ -~]{0,24}",
    ) {
        let text = valid_text();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let i = line % lines.len();
        if let Some((key, _)) = lines[i].clone().split_once(':') {
            lines[i] = format!("{key}: {replacement}");
        } else {
            lines[i] = replacement;
        }
        let _ = Manifest::from_yaml_str(&lines.join("\n"), Path::new("fuzz.yaml"));
    }

    #[test]
    fn image_decoding_survives_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let spec = InputSpec { name: "image".into(), shape: [3, 8, 8], value_range: [0.0, 1.0] };
        let _ = decode_image(&b, &spec, Path::new("fuzz.bin"));
    }

    /// Arbitrary bytes behind a real image header exercise the decoders themselves.
    #[test]
    fn image_decoding_survives_corrupted_headers(
        header in prop::sample::select(vec![
            &b"\x89PNG\r\n\x1a\n"[..], &b"\xff\xd8\xff\xe0"[..], &b"BM"[..], &b"GIF89a"[..],
            &b"P6\n"[..], &b"II*\x00"[..], &b"RIFF\x00\x00\x00\x00WEBPVP8 "[..],
        ]),
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut b = header.to_vec();
        b.extend(tail);
        let spec = InputSpec { name: "image".into(), shape: [1, 8, 8], value_range: [0.0, 1.0] };
        let _ = decode_image(&b, &spec, Path::new("fuzz.bin"));
    }
}
