//! Hostile packages: every corrupt, altered or oversized file, and every request the package
//! cannot serve, is a typed error, never a panic, an allocation of a declared size, or a
//! silently wrong graph. Test names carry their class (c3 bounded, c4 no panic, c5 no silent
//! wrong answer, c6 integrity).
use crate::common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use oats_graph::arch::{Architecture, Body};
use oats_graph::limits::{MAX_HEADER_BYTES, MAX_PACKAGE_BYTES};
use oats_graph::{Error, Layout, Package};
use safetensors::Dtype;
use serde_json::{json, Value};

/// A named change to the metadata JSON.
type Edit = Box<dyn Fn(&mut Value)>;

fn good() -> Vec<u8> {
    resnet(1).to_bytes().expect("bytes")
}

/// `from_bytes` of `bytes` must not panic; returns its result's error text (None if it loaded).
fn load_no_panic(bytes: &[u8]) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| Package::from_bytes(bytes)))
        .unwrap_or_else(|_| panic!("from_bytes panicked on {} bytes", bytes.len()));
    match r {
        Ok(pkg) => {
            // Whatever loads must lower without panicking at every configuration.
            for &w in pkg.widths() {
                for l in [0.0, 0.3, 0.5, 1.0] {
                    catch_unwind(AssertUnwindSafe(|| {
                        let _ = pkg.lower(&[l], w, Layout::Folded);
                        let _ = pkg.lower(&[l], w, Layout::SharedWeights);
                    }))
                    .unwrap_or_else(|_| panic!("lower panicked at λ {l} width {w}"));
                }
            }
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

fn err(bytes: &[u8]) -> Error {
    Package::from_bytes(bytes).expect_err("must be refused")
}

/// The package with its metadata JSON changed by `f`.
fn with_meta(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut meta, tensors) = split(&good());
    f(&mut meta);
    join(&meta, &tensors)
}

/// The package with its tensors changed by `f`.
fn with_tensors(f: impl FnOnce(&mut BTreeMap<String, Raw>)) -> Vec<u8> {
    let (meta, mut tensors) = split(&good());
    f(&mut tensors);
    join(&meta, &tensors)
}

/// The package's tensors under the metadata of `arch` (sizes declared, no tensors for them).
fn with_arch(arch: &Architecture) -> Vec<u8> {
    with_meta(|m| m["architecture"] = serde_json::to_value(arch).expect("json"))
}

fn set_value(name: &str, index: usize, v: f32) -> Vec<u8> {
    with_tensors(|t| {
        let raw = t.get_mut(name).expect(name);
        let mut vals = f32s(&raw.2);
        vals[index] = v;
        raw.2 = bytes(&vals);
    })
}

// ---- c3: every size bounded before it is allocated ----

#[test]
fn c3_bounded_file_over_the_limit_is_refused_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("package.safetensors");
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(MAX_PACKAGE_BYTES + 1).expect("sparse file");
    let e = Package::load(&path).expect_err("too large");
    let text = e.to_string();
    assert!(
        text.contains("package.safetensors") && text.contains("exceeds"),
        "{text}"
    );
    match e {
        Error::File { source, .. } => assert!(matches!(*source, Error::TooLarge { .. })),
        e => panic!("{e}"),
    }
}

#[test]
fn c3_bounded_header_length_over_the_limit() {
    let mut b = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(matches!(err(&b), Error::TooLarge { .. }));
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(err(&b), Error::TooLarge { .. }));
}

#[test]
fn c3_bounded_huge_declared_sizes_are_refused_before_any_tensor() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "out_channels",
            Box::new(|m| {
                m["architecture"]["body"]["resnet"]["stem"]["out_channels"] =
                    json!(1_000_000_000u64)
            }),
        ),
        (
            "input",
            Box::new(|m| m["architecture"]["input"] = json!([1, 1_000_000_000u64, 8])),
        ),
        (
            "input channels",
            Box::new(|m| m["architecture"]["input"] = json!([u64::MAX, 8, 8])),
        ),
        (
            "encoding_dim",
            Box::new(|m| m["architecture"]["encoding_dim"] = json!(1u64 << 40)),
        ),
        (
            "kernel",
            Box::new(|m| m["architecture"]["body"]["resnet"]["stem"]["kernel"] = json!(100_001)),
        ),
        (
            "stride",
            Box::new(|m| m["architecture"]["body"]["resnet"]["stem"]["stride"] = json!(0)),
        ),
        (
            "classes",
            Box::new(|m| m["architecture"]["classifier"]["classes"] = json!(1u64 << 50)),
        ),
        (
            "widths",
            Box::new(|m| m["architecture"]["widths"] = json!(vec![0.5; 100_000])),
        ),
        (
            "lambdas",
            Box::new(|m| {
                m["lambdas"] = json!((0..5000).map(|i| i as f64 / 5000.0).collect::<Vec<_>>())
            }),
        ),
    ];
    for (what, f) in cases {
        let text = load_no_panic(&with_meta(f)).unwrap_or_else(|| panic!("{what} loaded"));
        assert!(
            text.contains("invalid package") || text.contains("not an oats package"),
            "{what}: {text}"
        );
    }
}

#[test]
fn c3_bounded_block_count_and_total_values() {
    let mut arch = resnet_arch(1, true);
    let Body::Resnet { blocks, .. } = &mut arch.body else {
        panic!()
    };
    let b = blocks[0].clone();
    blocks.resize(2000, b);
    let text = load_no_panic(&with_arch(&arch)).expect("refused");
    assert!(text.contains("blocks") && text.contains("1024"), "{text}");

    // Every layer within its own bound, the whole far beyond the package bound: a chain of
    // 16384-channel 15×15 convolutions declares ~6·10¹⁰ values per block.
    let mut arch = resnet_arch(1, true);
    let Body::Resnet {
        stem,
        stem_norm,
        blocks,
    } = &mut arch.body
    else {
        panic!()
    };
    let big = 1 << 14;
    stem.out_channels = big;
    stem_norm.channels = big;
    for b in blocks.iter_mut() {
        for c in [&mut b.conv1, &mut b.conv2] {
            (c.in_channels, c.out_channels, c.kernel, c.padding) = (big, big, 15, 7);
        }
        b.norm1.channels = big;
        b.norm2.channels = big;
        if let Some(sc) = &mut b.shortcut {
            (sc.conv.in_channels, sc.conv.out_channels) = (big, big);
            sc.norm.channels = big;
        }
    }
    arch.classifier.in_features = big;
    let text = load_no_panic(&with_arch(&arch)).expect("refused");
    assert!(text.contains("tensor values in all"), "{text}");
}

#[test]
fn c3_bounded_shared_layout_lambda_count() {
    let pkg = resnet(1);
    let many = vec![0.5; 5000];
    assert!(matches!(
        pkg.lower(&many, 1.0, Layout::SharedWeights),
        Err(Error::Request(_))
    ));
}

// ---- c4: no panic on any input ----

#[test]
fn c4_no_panic_truncated_at_every_length() {
    let b = good();
    for n in 0..b.len() {
        assert!(load_no_panic(&b[..n]).is_some(), "a {n}-byte prefix loaded");
    }
    let mut longer = b.clone();
    longer.push(0);
    assert!(load_no_panic(&longer).is_some(), "trailing byte");
}

#[test]
fn c4_no_panic_random_byte_flips() {
    let b = good();
    let mut r = Rng::new(42);
    for _ in 0..3000 {
        let mut m = b.clone();
        for _ in 0..1 + r.next_u64() % 4 {
            let i = (r.next_u64() % m.len() as u64) as usize;
            m[i] ^= 1 << (r.next_u64() % 8);
        }
        let _ = load_no_panic(&m);
    }
}

/// Every leaf of the metadata JSON replaced by values of other types and extreme sizes.
#[test]
fn c4_no_panic_every_metadata_field_altered() {
    let (meta, tensors) = split(&good());
    fn leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(json!(k));
                    leaves(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(json!(i));
                    leaves(x, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }
    let mut paths = Vec::new();
    leaves(&meta, &mut vec![], &mut paths);
    assert!(paths.len() > 50, "{}", paths.len());
    let replacements = [
        json!(-1),
        json!(0),
        json!(1),
        json!(2),
        json!(1e300),
        json!(u64::MAX),
        json!(0.5),
        json!("x"),
        json!(null),
        json!(true),
        json!([]),
    ];
    let mut loaded = 0;
    for p in &paths {
        for r in &replacements {
            let mut m = meta.clone();
            let mut cur = &mut m;
            for k in p {
                cur = match k {
                    Value::String(s) => &mut cur[s.as_str()],
                    Value::Number(i) => &mut cur[i.as_u64().expect("index") as usize],
                    _ => unreachable!(),
                };
            }
            *cur = r.clone();
            if load_no_panic(&join(&m, &tensors)).is_none() {
                loaded += 1;
            }
        }
    }
    // Some replacements are harmless (a λ of 0.5 → 0.5, the name "x", a bn_eps of 0.5, ...).
    assert!(
        loaded < paths.len() * replacements.len() / 4,
        "{loaded} loaded"
    );
}

// ---- c5: no silently wrong answer ----

#[test]
fn c5_no_silent_non_finite_values_are_refused_naming_the_tensor() {
    for (name, v) in [
        ("blocks.0.conv1.weight", f32::NAN),
        ("stem_norm.film.fc1_bias", f32::INFINITY),
        ("blocks.1.norm2.w1.adv.running_mean", f32::NEG_INFINITY),
        ("lambda_encoding", f32::NAN),
        ("fc.bias", f32::NAN),
    ] {
        let e = err(&set_value(name, 1, v));
        let text = e.to_string();
        assert!(
            matches!(e, Error::Tensor { .. }) && text.contains(name) && text.contains("not finite"),
            "{text}"
        );
    }
}

#[test]
fn c5_no_silent_negative_variance() {
    let name = "stem_norm.w1.clean.running_var";
    let text = err(&set_value(name, 0, -0.5)).to_string();
    assert!(text.contains(name) && text.contains("negative"), "{text}");
    // A zero variance is a legal (if odd) BN: √ε.
    assert!(load_no_panic(&set_value(name, 0, 0.0)).is_none());
}

/// Finite values whose products overflow f32 give an error, not a graph of inf weights.
#[test]
fn c5_no_silent_overflow_in_the_derived_graph() {
    let mut arch = resnet_arch(1, true);
    let Body::Resnet {
        stem, stem_norm, ..
    } = &mut arch.body
    else {
        panic!()
    };
    stem.weight.iter_mut().for_each(|w| *w = f32::MAX / 2.0);
    for bn in stem_norm.bn.iter_mut().flatten() {
        bn.weight.iter_mut().for_each(|w| *w = 1e6);
    }
    let pkg = Package::new(arch, LAMBDAS.to_vec(), Some(rows(1))).expect("finite values");
    let Err(e) = pkg.lower_folded(0.5, 1.0) else {
        panic!("a graph of overflowed weights was returned");
    };
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");

    let mut arch = resnet_arch(1, true);
    let Body::Resnet { stem_norm, .. } = &mut arch.body else {
        panic!()
    };
    stem_norm
        .film
        .as_mut()
        .expect("film")
        .w1
        .iter_mut()
        .for_each(|w| *w = 3e38);
    let pkg = Package::new(arch, LAMBDAS.to_vec(), Some(rows(1))).expect("finite values");
    assert!(matches!(
        pkg.affine("stem_norm", 0.5, 1.0),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        pkg.lower_folded(0.5, 1.0).err(),
        Some(Error::NonFinite { .. })
    ));
}

#[test]
fn c5_no_silent_lambda_or_width_outside_the_model() {
    let pkg = resnet(1);
    for l in [f64::NAN, -1e-9, 1.0 + 1e-6, f64::NEG_INFINITY] {
        assert!(matches!(pkg.condition(l), Err(Error::Lambda { .. })), "{l}");
        assert!(matches!(
            pkg.affine("stem_norm", l, 1.0),
            Err(Error::Lambda { .. })
        ));
    }
    for w in [0.75, 0.0, f64::NAN, 2.0] {
        assert!(
            matches!(pkg.lower_folded(0.5, w), Err(Error::Width { .. })),
            "{w}"
        );
    }
    // λ = 0 takes the clean BN, any λ > 0 the adversarial one.
    assert_eq!(
        pkg.condition(0.0).expect("0").branch,
        oats_graph::Branch::Clean
    );
    assert_eq!(
        pkg.condition(1e-6).expect("ε").branch,
        oats_graph::Branch::Adv
    );
}

// ---- c6: integrity of everything loaded ----

#[test]
fn c6_integrity_altered_tensor_shape() {
    let name = "blocks.0.conv1.weight";
    let b = with_tensors(|t| t.get_mut(name).expect(name).1 = vec![4, 4, 9]);
    let text = err(&b).to_string();
    assert!(text.contains(name) && text.contains("shape"), "{text}");
    // Consistent with the architecture's other sizes but not with the data: a BN at width 0.5
    // stored at full width.
    let name = "stem_norm.w0.adv.weight";
    let b = with_tensors(|t| {
        let raw = t.get_mut(name).expect(name);
        raw.1 = vec![4];
        raw.2 = bytes(&[1.0; 4]);
    });
    assert!(err(&b).to_string().contains(name));
}

#[test]
fn c6_integrity_altered_architecture() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "stem.out_channels",
            Box::new(|m| m["architecture"]["body"]["resnet"]["stem"]["out_channels"] = json!(5)),
        ),
        (
            "blocks.1.conv1.stride",
            Box::new(|m| {
                m["architecture"]["body"]["resnet"]["blocks"][1]["conv1"]["stride"] = json!(1)
            }),
        ),
        (
            "classifier.in_features",
            Box::new(|m| m["architecture"]["classifier"]["in_features"] = json!(7)),
        ),
        (
            "widths",
            Box::new(|m| m["architecture"]["widths"] = json!([1.0, 0.5])),
        ),
        (
            "widths",
            Box::new(|m| m["architecture"]["widths"] = json!([0.5, 1.5])),
        ),
        (
            "branches",
            Box::new(|m| m["architecture"]["branches"] = json!(3)),
        ),
        (
            "bn_eps",
            Box::new(|m| m["architecture"]["bn_eps"] = json!(-1e-5)),
        ),
        (
            "film",
            Box::new(|m| m["architecture"]["encoding_dim"] = json!(null)),
        ),
        (
            "lambdas",
            Box::new(|m| m["lambdas"] = json!([0.0, 1.0, 0.5])),
        ),
        (
            "lambdas",
            Box::new(|m| m["lambdas"] = json!([0.0, 0.5, 1.5])),
        ),
        ("lambdas", Box::new(|m| m["lambdas"] = json!([0.0, 0.5]))),
        ("lambdas", Box::new(|m| m["lambdas"] = json!([]))),
        (
            "unknown field",
            Box::new(|m| m["architecture"]["dropout"] = json!(0.3)),
        ),
        (
            "unknown body",
            Box::new(|m| m["architecture"]["body"] = json!({"mobilenet": {}})),
        ),
        (
            "pool",
            Box::new(|m| m["architecture"]["pool"] = json!("max")),
        ),
    ];
    for (what, f) in cases {
        let text = load_no_panic(&with_meta(f)).unwrap_or_else(|| panic!("{what}: loaded"));
        assert!(!text.is_empty(), "{what}");
    }
}

#[test]
fn c6_integrity_missing_extra_and_retyped_tensors() {
    let b = with_tensors(|t| {
        t.remove("fc.bias");
    });
    assert!(err(&b).to_string().contains("fc.bias: missing"));
    let b = with_tensors(|t| {
        t.remove("lambda_encoding");
    });
    assert!(err(&b).to_string().contains("lambda_encoding"));
    let b = with_tensors(|t| {
        t.insert("evil".into(), (Dtype::F32, vec![1], bytes(&[1.0])));
    });
    let text = err(&b).to_string();
    assert!(
        text.contains("evil") && text.contains("not part of"),
        "{text}"
    );
    let b = with_tensors(|t| {
        let raw = t.get_mut("fc.bias").expect("fc.bias");
        raw.0 = Dtype::F64;
        raw.2 = f32s(&raw.2)
            .iter()
            .flat_map(|&v| f64::from(v).to_le_bytes())
            .collect();
    });
    assert!(err(&b).to_string().contains("dtype"));
    // The encoding rows of 2 λ for a model of 3.
    let b = with_tensors(|t| {
        let raw = t.get_mut("lambda_encoding").expect("enc");
        raw.1 = vec![2, DIM];
        raw.2.truncate(2 * DIM * 4);
    });
    assert!(err(&b).to_string().contains("lambda_encoding"));
}

#[test]
fn c6_integrity_format_and_version() {
    let b = with_meta(|m| m["format"] = json!("oats-package/3"));
    let text = err(&b).to_string();
    assert!(
        text.contains("oats-package/3") && text.contains("not supported"),
        "{text}"
    );
    // The exits format for a model without exits: refused, not read as either.
    let b = with_meta(|m| m["format"] = json!("oats-package/2"));
    let text = err(&b).to_string();
    assert!(text.contains("side exits"), "{text}");
    // Not a package: a safetensors file without our metadata (e.g. a checkpoint), not JSON,
    // not safetensors at all.
    let (_, tensors) = split(&good());
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let md =
        std::collections::HashMap::from([("format".to_string(), "oats-checkpoint/1".to_string())]);
    let other = safetensors::serialize(views, Some(md)).expect("serialize");
    assert!(matches!(err(&other), Error::Format(_)));
    let mut notjson = good();
    let start = 8
        + notjson[8..]
            .windows(12)
            .position(|w| w == b"oats_package")
            .expect("key")
        + 15;
    notjson[start] = b'{';
    let _ = load_no_panic(&notjson);
    assert!(matches!(err(b"GIF89a..."), Error::TooLarge { .. }));
    assert!(matches!(err(b"\x02\0\0\0\0\0\0\0{}"), Error::Format(_)));
    assert!(matches!(err(b"\x02\0\0"), Error::Format(_)));
}

#[test]
fn c6_integrity_parts_that_disagree_are_refused_in_memory_too() {
    // A site with BNs for one width of two.
    let mut arch = resnet_arch(1, true);
    let Body::Resnet { stem_norm, .. } = &mut arch.body else {
        panic!()
    };
    stem_norm.bn.pop();
    let e = Package::new(arch, LAMBDAS.to_vec(), Some(rows(1))).expect_err("refused");
    assert!(e.to_string().contains("stem_norm"), "{e}");
    // A weight one value short.
    let mut arch = resnet_arch(1, true);
    arch.classifier.weight.pop();
    let e = Package::new(arch, LAMBDAS.to_vec(), Some(rows(1))).expect_err("refused");
    assert!(e.to_string().contains("fc.weight"), "{e}");
    // Encoding rows without an encoding_dim, and the reverse.
    assert!(Package::new(resnet_arch(1, false), vec![0.4], Some(vec![0.0; 4])).is_err());
    assert!(Package::new(resnet_arch(1, true), LAMBDAS.to_vec(), None).is_err());
}

#[test]
fn c6_integrity_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pkg.safetensors");
    std::fs::write(&path, &good()[..100]).expect("write");
    let text = Package::load(&path).expect_err("truncated").to_string();
    assert!(text.contains("pkg.safetensors"), "{text}");
    let missing = dir.path().join("absent.safetensors");
    let text = Package::load(&missing).expect_err("missing").to_string();
    assert!(text.contains("absent.safetensors"), "{text}");
    let text = Package::load(dir.path())
        .expect_err("a directory")
        .to_string();
    assert!(
        text.contains("regular file") || text.contains("directory"),
        "{text}"
    );
}
