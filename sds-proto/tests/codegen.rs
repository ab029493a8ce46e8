//! Drift test for the checked-in generated code in `src/gen/`.
//!
//! Regenerates the Rust code from `proto/` with pure-Rust tools (protox +
//! tonic-prost-build, no `protoc`) into a temporary directory and asserts that
//! it is byte-for-byte identical to the checked-in files.
//!
//! To regenerate after editing a `.proto` file or bumping prost/tonic:
//!
//! ```text
//! SDS_PROTO_REGENERATE=1 cargo test -p sds-proto --test codegen
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Environment variable that switches the test from "check" to "overwrite".
const REGENERATE_ENV: &str = "SDS_PROTO_REGENERATE";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn proto_dir() -> PathBuf {
    crate_dir().join("proto")
}

fn gen_dir() -> PathBuf {
    crate_dir().join("src").join("gen")
}

/// All `.proto` files under `dir`, as paths relative to `dir` with `/`
/// separators, sorted so the descriptor set (and thus the output) does not
/// depend on directory iteration order.
fn proto_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let rel = path.strip_prefix(root).expect("path under proto root");
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(rel.join("/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Compiles `proto/` and writes one `<package>.rs` file per proto package
/// into `out_dir`.
fn generate(out_dir: &Path) {
    let root = proto_dir();
    let files = proto_files(&root);
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        root.display()
    );

    // Resolve imports ONLY from proto/: our own trimmed google/protobuf/any.proto
    // must win over protox's bundled copy (and nothing else may sneak in).
    let mut compiler =
        protox::Compiler::with_file_resolver(protox::file::IncludeFileResolver::new(root.clone()));
    compiler.include_source_info(true).include_imports(true);
    compiler
        .open_files(&files)
        .unwrap_or_else(|e| panic!("protox failed: {e:?}"));
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `connect()` helper: keeps the generated client usable with
        // tonic's `codegen` feature alone (bring your own Channel/service).
        .build_transport(false)
        // Generate google.protobuf.Any ourselves (value: Bytes) instead of
        // mapping it to prost_types::Any (value: Vec<u8>).
        .compile_well_known_types(true)
        // Every `bytes` field becomes `bytes::Bytes`: cheap clones, shared
        // encoded secrets.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("tonic-prost-build failed");
}

/// The `.rs` files in `dir`, by file name.
fn read_rs_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.insert(name, bytes);
        }
    }
    out
}

fn first_difference(expected: &[u8], actual: &[u8]) -> String {
    let expected = String::from_utf8_lossy(expected);
    let actual = String::from_utf8_lossy(actual);
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("line {}:\n  checked in: {a}\n  generated:  {e}", i + 1);
        }
    }
    format!(
        "files differ in length ({} generated lines vs {} checked-in lines) or line endings",
        expected.lines().count(),
        actual.lines().count()
    )
}

#[test]
fn generated_code_is_up_to_date() {
    let tmp = tempfile::tempdir().expect("tempdir");
    generate(tmp.path());
    let generated = read_rs_files(tmp.path());
    assert!(!generated.is_empty(), "code generation produced no files");

    let regenerate = std::env::var_os(REGENERATE_ENV).is_some_and(|v| v == "1");
    if regenerate {
        let dir = gen_dir();
        fs::create_dir_all(&dir).expect("create src/gen");
        for stale in read_rs_files(&dir).keys() {
            if !generated.contains_key(stale) {
                fs::remove_file(dir.join(stale)).expect("remove stale generated file");
            }
        }
        for (name, bytes) in &generated {
            fs::write(dir.join(name), bytes).expect("write generated file");
        }
        eprintln!(
            "{REGENERATE_ENV}=1: rewrote {} file(s) in {}",
            generated.len(),
            dir.display()
        );
        return;
    }

    let checked_in = read_rs_files(&gen_dir());
    let generated_names: Vec<&String> = generated.keys().collect();
    let checked_in_names: Vec<&String> = checked_in.keys().collect();
    assert_eq!(
        generated_names, checked_in_names,
        "set of generated files differs from src/gen/; run `{REGENERATE_ENV}=1 cargo test -p sds-proto --test codegen`"
    );
    for (name, bytes) in &generated {
        let on_disk = &checked_in[name];
        assert!(
            bytes == on_disk,
            "src/gen/{name} is out of date ({}); run `{REGENERATE_ENV}=1 cargo test -p sds-proto --test codegen`",
            first_difference(bytes, on_disk)
        );
    }
}

/// `SECRET_TYPE_URL` must name the Secret message exactly as it is declared
/// in our .proto files.
#[test]
fn secret_type_url_matches_descriptor() {
    let root = proto_dir();
    let mut compiler =
        protox::Compiler::with_file_resolver(protox::file::IncludeFileResolver::new(root.clone()));
    compiler
        .open_files([
            "envoy/extensions/transport_sockets/tls/v3/secret.proto",
            "envoy/service/secret/v3/sds.proto",
        ])
        .unwrap_or_else(|e| panic!("protox failed: {e:?}"));
    let pool = compiler.descriptor_pool();
    let secret = pool
        .get_message_by_name("envoy.extensions.transport_sockets.tls.v3.Secret")
        .expect("Secret message in descriptor pool");
    assert_eq!(
        sds_proto::SECRET_TYPE_URL,
        format!("type.googleapis.com/{}", secret.full_name())
    );
    let service = pool
        .get_service_by_name("envoy.service.secret.v3.SecretDiscoveryService")
        .expect("SDS service in descriptor pool");
    let methods: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
    assert_eq!(methods, ["DeltaSecrets", "StreamSecrets", "FetchSecrets"]);
}
