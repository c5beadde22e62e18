use super::*;

use super::testing::{RawEntry as Raw, raw_archive};

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw::file(name, data)
}

fn of<'a>(kind: EntryType, name: &'a str, link: Option<&'a str>) -> Raw<'a> {
    Raw::of(kind, name, link)
}

const MANIFEST: &[u8] = br#"{"name":"app","version":"1.0.0","deploy":{"script":"deploy.sh"},"health":{"script":"health.sh"}}"#;

fn archive(entries: &[Raw<'_>]) -> Vec<u8> {
    raw_archive(entries).unwrap()
}

fn good_entries<'a>() -> Vec<Raw<'a>> {
    vec![
        file("./manifest.json", MANIFEST),
        file("./deploy.sh", b"#!/bin/sh\necho deployed\n"),
        file("./health.sh", b"#!/bin/sh\nexit 0\n"),
    ]
}

fn check(entries: &[Raw<'_>]) -> Result<Inspection, BundleError> {
    inspect(archive(entries).as_slice(), &Limits::default())
}

fn unsafe_reason(entries: &[Raw<'_>]) -> String {
    match check(entries) {
        Err(e @ BundleError::Unsafe { .. }) => e.to_string(),
        other => panic!("expected an unsafe-entry error, got {other:?}"),
    }
}

#[test]
fn accepts_a_good_bundle() {
    let inspection = check(&good_entries()).unwrap();
    assert_eq!(inspection.manifest.version, "1.0.0");
    assert_eq!(inspection.entries, 3);
}

#[test]
fn refuses_absolute_path() {
    let mut e = good_entries();
    e.push(file("/etc/evil", b"x"));
    assert!(unsafe_reason(&e).contains("absolute path"));
}

#[test]
fn refuses_dotdot() {
    let mut e = good_entries();
    e.push(file("sub/../../evil", b"x"));
    assert!(unsafe_reason(&e).contains(".."));
}

#[test]
fn refuses_symlink_escaping() {
    let mut e = good_entries();
    e.push(of(
        EntryType::Symlink,
        "lib/escape",
        Some("../../etc/passwd"),
    ));
    assert!(unsafe_reason(&e).contains("outside the bundle"));
    let mut e = good_entries();
    e.push(of(EntryType::Symlink, "abs", Some("/etc/passwd")));
    assert!(unsafe_reason(&e).contains("absolute"));
}

#[test]
fn accepts_symlink_inside_but_not_entries_beneath_it() {
    let mut e = good_entries();
    e.push(of(EntryType::Symlink, "current", Some("./deploy.sh")));
    assert!(check(&e).is_ok());
    let mut e = good_entries();
    e.push(of(EntryType::Symlink, "here", Some(".")));
    e.push(file("here/x", b"x"));
    assert!(unsafe_reason(&e).contains("beneath a symbolic link"));
}

#[test]
fn refuses_hard_link_outside() {
    let mut e = good_entries();
    e.push(of(EntryType::Link, "hl", Some("../outside")));
    assert!(unsafe_reason(&e).contains("outside"));
}

#[test]
fn refuses_device_and_fifo_nodes() {
    for (kind, word) in [
        (EntryType::Char, "device"),
        (EntryType::Block, "device"),
        (EntryType::Fifo, "fifo"),
    ] {
        let mut e = good_entries();
        e.push(of(kind, "node", None));
        assert!(unsafe_reason(&e).contains(word));
    }
}

#[test]
fn refuses_duplicates() {
    let mut e = good_entries();
    e.push(file("deploy.sh", b"replaced"));
    assert!(unsafe_reason(&e).contains("duplicate"));
}

#[test]
fn refuses_missing_manifest() {
    let e = vec![file("deploy.sh", b"x")];
    assert!(matches!(check(&e), Err(BundleError::MissingManifest)));
    // A manifest.json that is not at the root does not count.
    let e = vec![file("sub/manifest.json", MANIFEST), file("deploy.sh", b"x")];
    assert!(matches!(check(&e), Err(BundleError::MissingManifest)));
}

#[test]
fn refuses_missing_or_linked_script() {
    let e = vec![file("manifest.json", MANIFEST), file("deploy.sh", b"x")];
    let err = check(&e).unwrap_err().to_string();
    assert!(err.contains("health.sh"), "{err}");
    let e = vec![
        file("manifest.json", MANIFEST),
        file("deploy.sh", b"x"),
        of(EntryType::Symlink, "health.sh", Some("deploy.sh")),
    ];
    assert!(matches!(
        check(&e),
        Err(BundleError::MissingScript {
            field: "health",
            ..
        })
    ));
}

#[test]
fn refuses_invalid_manifest() {
    let e = vec![file("manifest.json", b"{not json"), file("deploy.sh", b"x")];
    assert!(matches!(check(&e), Err(BundleError::Manifest(_))));
}

#[test]
fn refuses_non_gzip_and_corrupt() {
    assert!(matches!(
        inspect(&b"PK\x03\x04 zip"[..], &Limits::default()),
        Err(BundleError::NotGzip)
    ));
    assert!(matches!(
        inspect(&b""[..], &Limits::default()),
        Err(BundleError::NotGzip)
    ));
    let mut bytes = archive(&good_entries());
    bytes.truncate(bytes.len() / 2);
    assert!(check_bytes(&bytes).is_err());
}

fn check_bytes(bytes: &[u8]) -> Result<Inspection, BundleError> {
    inspect(bytes, &Limits::default())
}

#[test]
fn caps_entries_and_size() {
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(archive(&good_entries()).as_slice(), &limits),
        Err(BundleError::TooManyEntries(2))
    ));
    let limits = Limits {
        max_unpacked_bytes: 10,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(archive(&good_entries()).as_slice(), &limits),
        Err(BundleError::TooLarge(10))
    ));
}

#[test]
fn pack_then_unpack_round_trips() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("manifest.json"), MANIFEST).unwrap();
    fs::write(src.path().join("deploy.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(src.path().join("health.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::create_dir(src.path().join("data")).unwrap();
    fs::write(src.path().join("data/model.bin"), [1u8, 2, 3]).unwrap();
    set_mode(&src.path().join("deploy.sh"), 0o755).unwrap();

    let mut bytes = Vec::new();
    let m = pack(src.path(), &mut bytes).unwrap();
    assert_eq!(m.name, "app");
    let mut again = Vec::new();
    pack(src.path(), &mut again).unwrap();
    assert_eq!(bytes, again, "packing is deterministic");

    let dest = tempfile::tempdir().unwrap();
    let inspection = unpack(bytes.as_slice(), dest.path(), &Limits::default()).unwrap();
    assert_eq!(inspection.manifest, m);
    assert_eq!(
        fs::read(dest.path().join("data/model.bin")).unwrap(),
        [1, 2, 3]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dest.path().join("deploy.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}

#[test]
fn pack_refuses_folder_without_scripts() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("manifest.json"), MANIFEST).unwrap();
    assert!(matches!(
        pack(src.path(), Vec::new()),
        Err(BundleError::MissingScript { .. })
    ));
}

#[cfg(unix)]
#[test]
fn pack_refuses_what_inspect_would_refuse_and_writes_nothing() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("manifest.json"), MANIFEST).unwrap();
    fs::write(src.path().join("deploy.sh"), "#!/bin/sh\n").unwrap();
    fs::write(src.path().join("health.sh"), "#!/bin/sh\n").unwrap();
    let refused = |why: &str| {
        let mut out = Vec::new();
        match pack(src.path(), &mut out) {
            Err(BundleError::Unsafe { reason, .. }) => assert_eq!(reason, why),
            other => panic!("expected {why:?}, got {other:?}"),
        }
        assert!(out.is_empty(), "nothing is written for a refused folder");
    };
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("leak")).unwrap();
    refused("link points to an absolute path");
    fs::remove_file(src.path().join("leak")).unwrap();
    std::os::unix::fs::symlink("../../x", src.path().join("up")).unwrap();
    refused("link points outside the bundle");
    fs::remove_file(src.path().join("up")).unwrap();
    // A link inside the folder is fine, and the archive passes inspection.
    std::os::unix::fs::symlink("deploy.sh", src.path().join("run.sh")).unwrap();
    let mut bytes = Vec::new();
    pack(src.path(), &mut bytes).unwrap();
    inspect(bytes.as_slice(), &Limits::default()).unwrap();
}

#[test]
fn every_fixture_bundle_packs_and_passes_inspection() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bundles");
    let mut seen = 0;
    for entry in fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let mut bytes = Vec::new();
        let m = pack(&dir, &mut bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            format!("{}-{}", m.name, m.version),
            name,
            "folder is named <name>-<version>"
        );
        inspect(bytes.as_slice(), &Limits::default()).unwrap();
        seen += 1;
    }
    assert!(
        seen >= 4,
        "fixtures: two good versions, a failing deploy, a failing health check"
    );
}

#[test]
fn refuses_links_that_resolve_through_other_links() {
    // `a -> .` then `b -> a/..`: lexically inside, really the bundle's parent.
    let mut e = good_entries();
    e.push(of(EntryType::Symlink, "a", Some(".")));
    e.push(of(EntryType::Symlink, "b", Some("a/..")));
    assert!(unsafe_reason(&e).contains("through another link"));
    // The same with the links in the other order.
    let mut e = good_entries();
    e.push(of(EntryType::Symlink, "b", Some("a/..")));
    e.push(of(EntryType::Symlink, "a", Some(".")));
    assert!(unsafe_reason(&e).contains("through another link"));
    // A deeper chain: d/l -> .., x -> d/l/..
    let mut e = good_entries();
    e.push(of(EntryType::Directory, "d/", None));
    e.push(of(EntryType::Symlink, "d/l", Some("..")));
    e.push(of(EntryType::Symlink, "x", Some("d/l/..")));
    assert!(unsafe_reason(&e).contains("through another link"));
}

#[test]
fn a_link_cannot_replace_an_implied_directory() {
    let mut e = good_entries();
    e.push(file("lib/x", b"x"));
    e.push(of(EntryType::Symlink, "lib", Some(".")));
    assert!(unsafe_reason(&e).contains("duplicate"));
}

/// A PAX `size` record overrides the header's size field: the caps must use the real
/// size, or a manifest (or any file) could be far larger than the header claims.
#[test]
fn pax_size_cannot_sneak_past_the_caps() {
    let big = vec![b' '; 5000];
    let record = "13 size=5000\n";
    assert_eq!(record.len(), 13, "a PAX record counts its own length");
    let mut out = Vec::new();
    {
        let mut gz = GzEncoder::new(&mut out, Compression::fast());
        let mut write = |name: &str, kind: EntryType, header_size: u64, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_size(header_size);
            h.set_mode(0o644);
            h.set_cksum();
            gz.write_all(h.as_bytes()).unwrap();
            gz.write_all(data).unwrap();
            gz.write_all(&vec![0u8; (512 - data.len() % 512) % 512])
                .unwrap();
        };
        write(
            "PaxHeaders/manifest.json",
            EntryType::XHeader,
            record.len() as u64,
            record.as_bytes(),
        );
        write("manifest.json", EntryType::Regular, 0, &big);
        gz.write_all(&[0u8; 1024]).unwrap();
        gz.finish().unwrap();
    }
    let limits = Limits {
        max_manifest_bytes: 1024,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(out.as_slice(), &limits),
        Err(BundleError::ManifestTooLarge(1024))
    ));
    let limits = Limits {
        max_unpacked_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(out.as_slice(), &limits),
        Err(BundleError::TooLarge(1000))
    ));
}

/// SPEC §1.9: extension headers are capped from their header, before their data is read
/// (the crate would read them whole: a 96 KB upload once cost the server 130 MB).
#[test]
fn refuses_extension_headers_over_64_kib() {
    use super::testing::extension_header_bundle;
    for kind in [
        EntryType::XHeader,
        EntryType::XGlobalHeader,
        EntryType::GNULongName,
        EntryType::GNULongLink,
    ] {
        let bytes = extension_header_bundle(kind, 100 * 1024).unwrap();
        match check_bytes(&bytes) {
            Err(BundleError::ExtensionTooLarge { size, max }) => {
                assert_eq!((size, max), (100 * 1024, MAX_EXTENSION_HEADER), "{kind:?}");
            }
            other => panic!("{kind:?}: expected ExtensionTooLarge, got {other:?}"),
        }
        let dest = tempfile::tempdir().unwrap();
        assert!(
            matches!(
                unpack(bytes.as_slice(), dest.path(), &Limits::default()),
                Err(BundleError::ExtensionTooLarge { .. })
            ),
            "the agent's unpack refuses it too"
        );
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
    }
    // A 256 MiB header is refused as fast as a small one: nothing of it is read.
    let bytes = extension_header_bundle(EntryType::XHeader, 256 << 20).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        check_bytes(&bytes),
        Err(BundleError::ExtensionTooLarge { .. })
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn extension_headers_under_the_cap_still_work() {
    use super::testing::extension_header_bundle;
    // A PAX comment of 60 KiB is harmless and ignored; a global header too.
    for kind in [EntryType::XHeader, EntryType::XGlobalHeader] {
        let bytes = extension_header_bundle(kind, 60 * 1024).unwrap();
        let inspection = check_bytes(&bytes).unwrap();
        assert_eq!(inspection.manifest.name, "hostile");
    }
}

#[test]
fn extension_headers_count_against_the_entry_cap() {
    use super::testing::extension_header_bundle;
    let bytes = extension_header_bundle(EntryType::XHeader, 100).unwrap();
    // Two real entries plus one extension header.
    let limits = |max_entries| Limits {
        max_entries,
        ..Limits::default()
    };
    assert!(inspect(bytes.as_slice(), &limits(3)).is_ok());
    assert!(matches!(
        inspect(bytes.as_slice(), &limits(2)),
        Err(BundleError::TooManyEntries(2))
    ));
    // A stream of nothing but extension headers hits the cap too.
    let entries: Vec<Raw<'_>> = (0..10)
        .map(|_| of(EntryType::XGlobalHeader, "g", None))
        .collect();
    assert!(matches!(
        inspect(archive(&entries).as_slice(), &limits(5)),
        Err(BundleError::TooManyEntries(5))
    ));
}

/// Raw iteration applies long names and PAX paths itself; the entry checks must see the
/// name they give, not the header's short one.
#[test]
fn long_names_and_pax_paths_are_checked() {
    let long = format!("{}/deploy.sh", "d".repeat(150));
    let manifest = format!(r#"{{"name":"app","version":"1.0.0","deploy":{{"script":"{long}"}}}}"#);
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("manifest.json"), &manifest).unwrap();
    fs::create_dir(src.path().join("d".repeat(150))).unwrap();
    fs::write(src.path().join(&long), "#!/bin/sh\nexit 0\n").unwrap();
    let mut bytes = Vec::new();
    pack(src.path(), &mut bytes).unwrap();
    let dest = tempfile::tempdir().unwrap();
    unpack(bytes.as_slice(), dest.path(), &Limits::default()).unwrap();
    assert!(dest.path().join(&long).is_file(), "GNU long name applied");

    // A PAX path record that climbs out is refused, whatever the header's name says.
    let record = "22 path=../../evil.sh\n";
    assert_eq!(record.len(), 22);
    let mut e = good_entries();
    e.push(Raw {
        name: "PaxHeaders/x",
        kind: EntryType::XHeader,
        data: record.as_bytes(),
        link: None,
        mode: 0o644,
    });
    e.push(file("harmless.sh", b"x"));
    assert!(unsafe_reason(&e).contains("'..'"));

    // A GNU long link naming an absolute target is refused.
    let mut e = good_entries();
    e.push(Raw {
        name: "././@LongLink",
        kind: EntryType::GNULongLink,
        data: b"/etc/passwd\0",
        link: None,
        mode: 0o644,
    });
    e.push(of(EntryType::Symlink, "innocent", Some("ok")));
    assert!(unsafe_reason(&e).contains("absolute"));

    // An extension header with nothing after it.
    let mut e = good_entries();
    e.push(Raw {
        name: "PaxHeaders/x",
        kind: EntryType::XHeader,
        data: b"12 path=abc\n",
        link: None,
        mode: 0o644,
    });
    assert!(matches!(check(&e), Err(BundleError::Corrupt(_))));
}
