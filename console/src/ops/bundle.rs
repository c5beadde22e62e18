//! `bundles`, `bundle pack DIR [-o FILE]`, `bundle push FILE` (with `FILE.sig.json` when
//! it sits beside the archive).
//!
//! `pack` writes the archive next to where it will live (a hidden temp file in the same
//! directory) and renames it into place only once it is complete and on disk, so a
//! reader never sees half an archive. An existing archive of the same name is replaced:
//! packing is deterministic, so re-packing an unchanged folder gives the same bytes, and
//! `-o` says exactly where the operator wants it.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use kernex_common::manifest::Manifest;
use serde::Serialize;

use super::{OpError, OpResult, Report, connect, output, render};
use crate::cli::ConnArgs;

/// `bundles`: what the server stores, newest first.
pub(crate) async fn list(conn: &ConnArgs) -> OpResult<Report> {
    let list = connect(conn)?.bundles().await?;
    Ok(
        Report::new(&list, render::bundles(&list, Utc::now(), output::width()))?
            // Wide: every column, however narrow the terminal.
            .wide(render::bundles(&list, Utc::now(), None))
            .when_empty("no bundles"),
    )
}

/// `bundle pack` with `--json`.
#[derive(Debug, Serialize)]
struct Packed {
    path: PathBuf,
    name: String,
    version: String,
    size_bytes: u64,
    checksum_sha256: String,
}

/// `bundle pack DIR [-o FILE]`. Prints the archive's path (so `$(kernex-console bundle
/// pack DIR)` can be pushed next).
pub(crate) fn pack(dir: &Path, output: Option<&Path>) -> OpResult<Report> {
    if !dir.is_dir() {
        return Err(OpError::Usage(format!(
            "{} is not a directory (expected a bundle folder with manifest.json)",
            dir.display()
        )));
    }
    // `-o` naming an existing directory puts the archive there under its default name.
    let (target_dir, named) = match output {
        Some(o) if o.is_dir() => (o.to_path_buf(), None),
        Some(o) => {
            let parent = o.parent().filter(|p| !p.as_os_str().is_empty());
            (parent.unwrap_or(Path::new(".")).to_path_buf(), Some(o))
        }
        None => (PathBuf::from("."), None),
    };
    if !target_dir.is_dir() {
        return Err(OpError::Usage(format!(
            "{} is not a directory",
            target_dir.display()
        )));
    }
    // An archive inside the folder it packs would end up inside the next archive.
    if let (Ok(d), Ok(t)) = (dir.canonicalize(), target_dir.canonicalize())
        && t.starts_with(&d)
    {
        return Err(OpError::Usage(format!(
            "the archive would be written inside the bundle folder {}; pass -o with a path \
             outside it",
            dir.display()
        )));
    }

    let (path, manifest) = write_archive(dir, &target_dir, |m| match named {
        Some(o) => o.to_path_buf(),
        None if output.is_none() => PathBuf::from(default_name(m)),
        None => target_dir.join(default_name(m)),
    })?;
    let failed = |what: &str, e: &dyn std::fmt::Display| OpError::Failed(format!("{what}: {e}"));
    let size_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
    let checksum_sha256 = kernex_common::bundle::sha256_file(&path)
        .map_err(|e| failed(&format!("cannot read {}", path.display()), &e))?;
    let human = format!("{}\n", path.display());
    Report::new(
        &Packed {
            path,
            name: manifest.name,
            version: manifest.version,
            size_bytes,
            checksum_sha256,
        },
        human,
    )
}

/// Pack `dir` into the file `name` picks from its manifest, inside `target_dir`, so that
/// no reader ever sees half an archive: a temp file in that directory, flushed and
/// synced, then renamed into place, then the directory synced. The path and manifest.
pub(crate) fn write_archive(
    dir: &Path,
    target_dir: &Path,
    name: impl FnOnce(&Manifest) -> PathBuf,
) -> OpResult<(PathBuf, Manifest)> {
    let failed = |what: &str, e: &dyn std::fmt::Display| OpError::Failed(format!("{what}: {e}"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kernex-pack-")
        .suffix(".partial")
        .tempfile_in(target_dir)
        .map_err(|e| failed(&format!("cannot write in {}", target_dir.display()), &e))?;
    let manifest = {
        let mut w = BufWriter::new(tmp.as_file_mut());
        let m = kernex_common::bundle::pack(dir, &mut w)
            .map_err(|e| failed(&format!("cannot pack {}", dir.display()), &e))?;
        w.flush()
            .map_err(|e| failed("cannot write the archive", &e))?;
        m
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| failed("cannot write the archive", &e))?;
    set_readable(tmp.as_file()).map_err(|e| failed("cannot set the archive's mode", &e))?;
    let path = name(&manifest);
    tmp.persist(&path)
        .map_err(|e| failed(&format!("cannot write {}", path.display()), &e.error))?;
    // The rename itself is durable only once the directory is.
    if let Ok(d) = fs::File::open(target_dir) {
        let _ = d.sync_all();
    }
    Ok((path, manifest))
}

/// `<name>-<version>.tar.gz`. The version is already a safe file name; the name is free
/// text, so anything but `[A-Za-z0-9._+-]` (and a leading dot) becomes `_`.
pub(crate) fn default_name(m: &Manifest) -> String {
    let name: String = m
        .name
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let ok =
                c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-') || (c == '.' && i > 0);
            if ok { c } else { '_' }
        })
        .collect();
    format!("{name}-{}.tar.gz", m.version)
}

#[cfg(unix)]
fn set_readable(f: &fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // The temp file is 0600; an archive is not a secret.
    f.set_permissions(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn set_readable(_f: &fs::File) -> std::io::Result<()> {
    Ok(())
}

/// `bundle push FILE`: upload with a progress bar (on a terminal), print what the server
/// stored.
pub(crate) async fn push(conn: &ConnArgs, file: &Path) -> OpResult<Report> {
    let meta = fs::metadata(file)
        .map_err(|e| OpError::Usage(format!("cannot read {}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(OpError::Usage(format!("{} is not a file", file.display())));
    }
    // FILE.sig.json beside the archive travels with it (SPEC §7).
    let signatures = super::signing::sig_beside(file)?;
    let api = connect(conn)?;
    let bar = output::progress_bar(
        meta.len(),
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    bar.set_message(format!(
        "uploading {}",
        file.file_name()
            .unwrap_or(file.as_os_str())
            .to_string_lossy()
    ));
    let shown = bar.clone();
    let result = api
        .push_bundle_signed(file, signatures.as_ref(), move |sent| {
            shown.set_position(sent)
        })
        .await;
    bar.finish_and_clear();
    let bundle = result?;
    Report::new(&bundle, render::bundle(&bundle, Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, version: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": version, "deploy": {"script": "deploy.sh"}
        }))
        .unwrap()
    }

    #[test]
    fn the_default_name_is_a_plain_file_name() {
        assert_eq!(
            default_name(&manifest("hello", "1.0.0")),
            "hello-1.0.0.tar.gz"
        );
        assert_eq!(
            default_name(&manifest("object detector/v2", "1.2.0+b5")),
            "object_detector_v2-1.2.0+b5.tar.gz"
        );
        assert_eq!(default_name(&manifest("..", "1")), "_.-1.tar.gz");
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/bundles")
            .join(name)
    }

    #[test]
    fn pack_writes_where_asked_and_replaces_atomically() {
        let out = tempfile::tempdir().unwrap();
        // -o naming a directory: the default name inside it.
        let r = pack(&fixture("hello-1.0.0"), Some(out.path())).unwrap();
        let path = out.path().join("hello-1.0.0.tar.gz");
        assert_eq!(r.human, format!("{}\n", path.display()));
        let first = fs::read(&path).unwrap();
        let info = kernex_common::bundle::inspect(&first[..], &Default::default()).unwrap();
        assert_eq!(info.manifest.version, "1.0.0");
        // -o naming a file; packing again replaces it with the same bytes; no temp files
        // are left behind.
        let named = out.path().join("custom.tgz");
        let json = pack(&fixture("hello-1.0.0"), Some(&named)).unwrap().data;
        assert_eq!(json["version"], "1.0.0");
        assert_eq!(json["size_bytes"], first.len() as u64);
        pack(&fixture("hello-1.0.0"), Some(&named)).unwrap();
        assert_eq!(fs::read(&named).unwrap(), first);
        let mut names: Vec<String> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["custom.tgz", "hello-1.0.0.tar.gz"]);
    }

    #[test]
    fn pack_refuses_bad_folders_and_writing_into_the_folder() {
        let out = tempfile::tempdir().unwrap();
        let missing = pack(&out.path().join("nope"), Some(out.path())).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
        // A folder without a manifest: the packing itself fails (exit 1), nothing left.
        let empty = tempfile::tempdir().unwrap();
        let err = pack(empty.path(), Some(out.path())).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("manifest.json"), "{err}");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
        // The archive may not land inside the folder being packed.
        let src = tempfile::tempdir().unwrap();
        let err = pack(src.path(), Some(&src.path().join("x.tar.gz"))).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("inside the bundle folder"),
            "{err}"
        );
    }
}
