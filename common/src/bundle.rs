//! Bundles: gzip'd tar archives with `manifest.json` at the root.
//!
//! [`inspect`] and [`unpack`] walk an archive with the same checks, entry by entry, so the
//! server refuses at upload exactly what the agent would refuse to extract: absolute
//! paths, `..` components, links that leave the bundle, entries beneath a link, device
//! and fifo nodes, duplicate files, too many entries or bytes (tar bombs), a missing or
//! invalid manifest, and scripts the manifest names that are not regular files.
//! Ownership, permissions beyond the executable bit, and xattrs are never restored.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::manifest::{Manifest, ManifestError, normalize_entry_path};

/// Name of the manifest at the archive root.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Largest extension header (PAX `x`/`g`, GNU long name `L` / long link `K`) accepted:
/// each is read whole, so it is capped before a byte of it is read (SPEC §1.9).
pub const MAX_EXTENSION_HEADER: u64 = 64 * 1024;

/// Caps applied while walking an archive. Extension headers count as entries.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries (files, dirs, links) an archive may hold.
    pub max_entries: u64,
    /// Most bytes its regular files may add up to once unpacked.
    pub max_unpacked_bytes: u64,
    /// Largest `manifest.json` accepted.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_unpacked_bytes: 8 * 1024 * 1024 * 1024,
            max_manifest_bytes: 1024 * 1024,
        }
    }
}

/// What a successful walk found.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub manifest: Manifest,
    /// The manifest exactly as the archive has it (for comparison with an uploaded one).
    pub manifest_json: serde_json::Value,
    pub entries: u64,
    pub unpacked_bytes: u64,
}

/// Why an archive is refused. Every message names the problem and, where there is one,
/// the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a gzip archive")]
    NotGzip,
    #[error("not a valid tar.gz archive: {0}")]
    Corrupt(String),
    #[error("archive has no manifest.json at its root")]
    MissingManifest,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest {field} script {path:?} is not a regular file in the archive")]
    MissingScript { field: &'static str, path: String },
    #[error("unsafe entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: &'static str },
    #[error("archive has more than {0} entries")]
    TooManyEntries(u64),
    #[error("archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error(
        "archive has an extension header (PAX or GNU long name) of {size} bytes; at most {max} are accepted"
    )]
    ExtensionTooLarge { size: u64, max: u64 },
    #[error("manifest.json is larger than {0} bytes")]
    ManifestTooLarge(u64),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What kind of thing a path ends up as after the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Link,
}

/// One checked entry, as the walk hands it to its visitor.
enum Checked<'a> {
    Dir,
    File { mode: u32 },
    Symlink { target: &'a str },
    HardLink { target: String },
}

/// Check every entry of a tar.gz stream and return the manifest. Reads the whole stream.
pub fn inspect<R: Read>(reader: R, limits: &Limits) -> Result<Inspection, BundleError> {
    walk(reader, limits, |_, _, _| Ok(()))
}

/// Check and extract a tar.gz stream into `dest` (an existing, empty directory). On error
/// `dest` may hold a partial tree: extract into a temporary directory and rename it into
/// place only on success.
pub fn unpack<R: Read>(reader: R, dest: &Path, limits: &Limits) -> Result<Inspection, BundleError> {
    walk(reader, limits, |path, checked, entry| {
        let out = dest.join(path);
        match checked {
            Checked::Dir => fs::create_dir_all(&out)?,
            Checked::File { mode } => {
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut file = fs::File::create(&out)?;
                io::copy(entry, &mut file)?;
                set_mode(&out, if mode & 0o111 != 0 { 0o755 } else { 0o644 })?;
            }
            Checked::Symlink { target } => {
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent)?;
                }
                symlink(target, &out)?;
            }
            Checked::HardLink { target } => {
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::hard_link(dest.join(target), &out)?;
            }
        }
        Ok(())
    })
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &str, _link: &Path) -> io::Result<()> {
    Err(io::Error::other(
        "symbolic links in bundles need a unix system",
    ))
}

fn unsafe_entry(entry: &str, reason: &'static str) -> BundleError {
    BundleError::Unsafe {
        entry: entry.to_owned(),
        reason,
    }
}

fn walk<R, F>(reader: R, limits: &Limits, mut visit: F) -> Result<Inspection, BundleError>
where
    R: Read,
    F: FnMut(&str, Checked<'_>, &mut dyn Read) -> Result<(), BundleError>,
{
    let mut reader = BufReader::new(reader);
    let mut magic = [0u8; 2];
    reader
        .read_exact(&mut magic)
        .map_err(|_| BundleError::NotGzip)?;
    if magic != [0x1f, 0x8b] {
        return Err(BundleError::NotGzip);
    }
    let gz = GzDecoder::new(magic.chain(reader));
    let mut archive = tar::Archive::new(gz);
    let corrupt = |e: io::Error| BundleError::Corrupt(e.to_string());

    let mut kinds: HashMap<String, Kind> = HashMap::new();
    let mut links: HashSet<String> = HashSet::new();
    // (link path, its target) for the check after the walk: a target may pass through
    // a link that only appears later in the archive.
    let mut link_targets: Vec<(String, String)> = Vec::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut entries = 0u64;
    let mut unpacked = 0u64;

    let mut headers = 0u64;
    let mut pending = Extensions::default();

    // Raw iteration: the crate would read every extension header (PAX `x`, GNU `L`/`K`)
    // whole into memory before handing out the entry it describes; here each one is
    // counted and its size checked from its header first, then read, capped.
    for entry in archive.entries().map_err(corrupt)?.raw(true) {
        let mut entry = entry.map_err(corrupt)?;
        let etype = entry.header().entry_type();
        if is_extension(etype) {
            headers += 1;
            if entries + headers > limits.max_entries {
                return Err(BundleError::TooManyEntries(limits.max_entries));
            }
            let size = entry.size();
            if size > MAX_EXTENSION_HEADER {
                return Err(BundleError::ExtensionTooLarge {
                    size,
                    max: MAX_EXTENSION_HEADER,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_EXTENSION_HEADER)
                .read_to_end(&mut data)
                .map_err(corrupt)?;
            pending.absorb(etype, data)?;
            continue;
        }
        let ext = std::mem::take(&mut pending);
        entries += 1;
        if entries + headers > limits.max_entries {
            return Err(BundleError::TooManyEntries(limits.max_entries));
        }
        let header_size = entry.size();
        // A PAX `size` record overrides the header; the caps use the larger claim.
        let size = ext.size.unwrap_or(header_size);
        let raw_path = match ext.path {
            Some(p) => p,
            None => entry.path_bytes().into_owned(),
        };
        let raw = std::str::from_utf8(&raw_path)
            .map_err(|_| unsafe_entry(&String::from_utf8_lossy(&raw_path), "name is not UTF-8"))?
            .to_owned();
        // The archive's own root ("./") carries nothing.
        if etype == EntryType::Directory && matches!(raw.trim_end_matches('/'), "." | "") {
            continue;
        }
        if raw.starts_with('/') {
            return Err(unsafe_entry(&raw, "absolute path"));
        }
        let path = normalize_entry_path(&raw).ok_or_else(|| {
            unsafe_entry(
                &raw,
                "path has a '..' component or is not a plain relative path",
            )
        })?;
        if ancestors(&path).any(|a| links.contains(a)) {
            return Err(unsafe_entry(&raw, "beneath a symbolic link in the bundle"));
        }
        if ancestors(&path).any(|a| kinds.get(a).is_some_and(|k| *k != Kind::Dir)) {
            return Err(unsafe_entry(&raw, "beneath a file"));
        }
        if kinds
            .get(&path)
            .is_some_and(|k| !(*k == Kind::Dir && etype == EntryType::Directory))
        {
            return Err(unsafe_entry(&raw, "duplicate entry"));
        }

        let checked = match etype {
            EntryType::Directory if size != header_size => return Err(size_mismatch()),
            EntryType::Directory => Checked::Dir,
            EntryType::Regular | EntryType::Continuous => {
                unpacked = unpacked.saturating_add(size);
                if unpacked > limits.max_unpacked_bytes {
                    return Err(BundleError::TooLarge(limits.max_unpacked_bytes));
                }
                Checked::File {
                    mode: entry.header().mode().unwrap_or(0o644),
                }
            }
            EntryType::Symlink | EntryType::Link => {
                if size != header_size {
                    return Err(size_mismatch());
                }
                let target_bytes = match ext.link {
                    Some(l) => l,
                    None => entry
                        .link_name_bytes()
                        .ok_or_else(|| unsafe_entry(&raw, "link without a target"))?
                        .into_owned(),
                };
                let target = std::str::from_utf8(&target_bytes)
                    .map_err(|_| unsafe_entry(&raw, "link target is not UTF-8"))?
                    .to_owned();
                if target.starts_with('/') {
                    return Err(unsafe_entry(&raw, "link points to an absolute path"));
                }
                if etype == EntryType::Symlink {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    if resolve_inside(parent, &target).is_none() {
                        return Err(unsafe_entry(&raw, "link points outside the bundle"));
                    }
                    links.insert(path.clone());
                    link_targets.push((path.clone(), target.clone()));
                    mark_parents(&mut kinds, &path);
                    kinds.insert(path.clone(), Kind::Link);
                    visit(&path, Checked::Symlink { target: &target }, &mut entry)?;
                    continue;
                }
                // Hard link: the target names an earlier regular file of this archive.
                let target = normalize_entry_path(&target)
                    .ok_or_else(|| unsafe_entry(&raw, "link points outside the bundle"))?;
                if kinds.get(&target) != Some(&Kind::File) {
                    return Err(unsafe_entry(
                        &raw,
                        "hard link to something that is not an earlier file",
                    ));
                }
                mark_parents(&mut kinds, &path);
                kinds.insert(path.clone(), Kind::Link);
                visit(&path, Checked::HardLink { target }, &mut entry)?;
                continue;
            }
            EntryType::Char | EntryType::Block => return Err(unsafe_entry(&raw, "device node")),
            EntryType::GNUSparse => {
                return Err(unsafe_entry(&raw, "sparse files are not supported"));
            }
            EntryType::Fifo => return Err(unsafe_entry(&raw, "fifo")),
            _ => return Err(unsafe_entry(&raw, "unsupported entry type")),
        };

        mark_parents(&mut kinds, &path);
        match checked {
            Checked::Dir => {
                kinds.insert(path.clone(), Kind::Dir);
                visit(&path, Checked::Dir, &mut entry)?;
            }
            Checked::File { mode } => {
                kinds.insert(path.clone(), Kind::File);
                if path == MANIFEST_FILE {
                    let cap = limits.max_manifest_bytes;
                    if size > cap {
                        return Err(BundleError::ManifestTooLarge(cap));
                    }
                }
                // Only now, so the caps above name the problem a lying header tried to
                // hide; reads below go by the header's size, so the two must agree.
                if size != header_size {
                    return Err(size_mismatch());
                }
                if path == MANIFEST_FILE {
                    let cap = limits.max_manifest_bytes;
                    // Read at most one byte past the cap, whatever the headers claim.
                    let mut buf = Vec::new();
                    (&mut entry)
                        .take(cap + 1)
                        .read_to_end(&mut buf)
                        .map_err(corrupt)?;
                    if buf.len() as u64 > cap {
                        return Err(BundleError::ManifestTooLarge(cap));
                    }
                    visit(&path, Checked::File { mode }, &mut buf.as_slice())?;
                    manifest_bytes = Some(buf);
                } else {
                    visit(&path, Checked::File { mode }, &mut entry)?;
                }
            }
            Checked::Symlink { .. } | Checked::HardLink { .. } => {}
        }
    }

    if !pending.is_empty() {
        return Err(BundleError::Corrupt(
            "extension header with no entry after it".into(),
        ));
    }

    // A link whose target passes *through* another link (`a -> .`, `b -> a/..`) would
    // resolve relative to where that link points, not where it sits: refuse it.
    for (path, target) in &link_targets {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if resolve_through(parent, target, &links).is_none() {
            return Err(unsafe_entry(path, "link resolves through another link"));
        }
    }

    let bytes = manifest_bytes.ok_or(BundleError::MissingManifest)?;
    let manifest = Manifest::from_slice(&bytes)?;
    let manifest_json =
        serde_json::from_slice(&bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
    for (field, spec) in manifest.scripts() {
        let script = normalize_entry_path(&spec.script).unwrap_or_default();
        if kinds.get(&script) != Some(&Kind::File) {
            return Err(BundleError::MissingScript {
                field,
                path: spec.script.clone(),
            });
        }
    }
    Ok(Inspection {
        manifest,
        manifest_json,
        entries,
        unpacked_bytes: unpacked,
    })
}

fn is_extension(t: EntryType) -> bool {
    t.is_pax_local_extensions()
        || t.is_pax_global_extensions()
        || t.is_gnu_longname()
        || t.is_gnu_longlink()
}

fn size_mismatch() -> BundleError {
    BundleError::Corrupt("a PAX size record disagrees with its entry's header".into())
}

/// What the extension headers before an entry say about it, applied as the crate's own
/// (non-raw) iteration would: a GNU long name or link wins over a PAX one.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    /// A PAX `size` record.
    size: Option<u64>,
    gnu_path: bool,
    gnu_link: bool,
    pax: bool,
}

impl Extensions {
    fn is_empty(&self) -> bool {
        !(self.gnu_path || self.gnu_link || self.pax)
    }

    /// Take in one extension header's data (already capped). A PAX global header is
    /// counted and capped but otherwise ignored, as the crate does.
    fn absorb(&mut self, kind: EntryType, data: Vec<u8>) -> Result<(), BundleError> {
        let twice =
            || BundleError::Corrupt("two extension headers of one kind describe one entry".into());
        let without_nul = |mut d: Vec<u8>| {
            if d.last() == Some(&0) {
                d.pop();
            }
            d
        };
        if kind.is_gnu_longname() {
            if std::mem::replace(&mut self.gnu_path, true) {
                return Err(twice());
            }
            self.path = Some(without_nul(data));
        } else if kind.is_gnu_longlink() {
            if std::mem::replace(&mut self.gnu_link, true) {
                return Err(twice());
            }
            self.link = Some(without_nul(data));
        } else if kind.is_pax_local_extensions() {
            if std::mem::replace(&mut self.pax, true) {
                return Err(twice());
            }
            for record in tar::PaxExtensions::new(&data) {
                let record =
                    record.map_err(|e| BundleError::Corrupt(format!("bad PAX record: {e}")))?;
                match record.key_bytes() {
                    b"path" if !self.gnu_path => self.path = Some(record.value_bytes().to_vec()),
                    b"linkpath" if !self.gnu_link => {
                        self.link = Some(record.value_bytes().to_vec());
                    }
                    b"size" => {
                        let size = record.value().ok().and_then(|v| v.parse().ok());
                        self.size = Some(size.ok_or_else(|| {
                            BundleError::Corrupt("PAX size record is not a number".into())
                        })?);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The proper ancestors of a normalised path: `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Record the implied parent directories of `path` (an entry `a/b` makes `a` a
/// directory even when the archive has no entry for it).
fn mark_parents(kinds: &mut HashMap<String, Kind>, path: &str) {
    for parent in ancestors(path) {
        kinds.entry(parent.to_owned()).or_insert(Kind::Dir);
    }
}

/// Like [`resolve_inside`], but `None` also when a component *before the last* names a
/// link: what follows it would be resolved from the link's target, not its place.
fn resolve_through(base: &str, target: &str, links: &HashSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    let comps: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, comp) in comps.iter().enumerate() {
        if *comp == ".." {
            parts.pop()?;
        } else {
            parts.push(comp);
        }
        if i + 1 < comps.len() && !parts.is_empty() && links.contains(&parts.join("/")) {
            return None;
        }
    }
    Some(parts.join("/"))
}

/// Resolve a relative link `target` from directory `base` (both normalised, `""` is the
/// root); `None` when it would climb above the root.
fn resolve_inside(base: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Pack the folder `dir` (which must hold a valid `manifest.json` and the scripts it
/// names) into a tar.gz written to `out`. Entries are added in sorted order with
/// normalised metadata, so packing the same folder twice gives the same archive.
/// Returns the manifest. What [`inspect`] would refuse is refused here, before anything is
/// written: links that are absolute, leave the folder or resolve through another link,
/// and anything that is not a file, folder or link (fifos, sockets, device nodes).
pub fn pack<W: Write>(dir: &Path, out: W) -> Result<Manifest, BundleError> {
    let raw = fs::read(dir.join(MANIFEST_FILE)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BundleError::MissingManifest,
        _ => BundleError::Io(e),
    })?;
    let manifest = Manifest::from_slice(&raw)?;
    for (field, spec) in manifest.scripts() {
        let path = dir.join(normalize_entry_path(&spec.script).unwrap_or_default());
        let meta = fs::symlink_metadata(&path);
        if !meta.is_ok_and(|m| m.is_file()) {
            return Err(BundleError::MissingScript {
                field,
                path: spec.script.clone(),
            });
        }
    }
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    check_local_entries(dir, &files)?;

    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    for rel in &files {
        let name = rel
            .to_str()
            .ok_or_else(|| unsafe_entry(&rel.to_string_lossy(), "name is not UTF-8"))?;
        builder.append_path_with_name(dir.join(rel), name)?;
    }
    builder.into_inner()?.finish()?;
    Ok(manifest)
}

/// The folder-side half of [`inspect`]'s entry rules, so `pack` never writes an archive
/// the server and agents would refuse.
fn check_local_entries(dir: &Path, files: &[PathBuf]) -> Result<(), BundleError> {
    let mut links = HashSet::new();
    let mut link_targets = Vec::new();
    for rel in files {
        let name = rel.to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(dir.join(rel))?;
        let ft = meta.file_type();
        if ft.is_file() || ft.is_dir() {
            continue;
        }
        if !ft.is_symlink() {
            return Err(unsafe_entry(&name, "not a file, folder or link"));
        }
        let target = fs::read_link(dir.join(rel))?;
        let target = target
            .to_str()
            .ok_or_else(|| unsafe_entry(&name, "link target is not UTF-8"))?
            .to_owned();
        if target.starts_with('/') {
            return Err(unsafe_entry(&name, "link points to an absolute path"));
        }
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
        if resolve_inside(parent, &target).is_none() {
            return Err(unsafe_entry(&name, "link points outside the bundle"));
        }
        links.insert(name.clone());
        link_targets.push((name, target));
    }
    for (path, target) in &link_targets {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if resolve_through(parent, target, &links).is_none() {
            return Err(unsafe_entry(path, "link resolves through another link"));
        }
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_path_buf();
        let ft = entry.file_type()?;
        out.push(rel);
        if ft.is_dir() {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

/// Lowercase hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hand-built (possibly hostile) archives for tests: entries are written byte for byte,
/// so absolute paths, `..`, device nodes and lying headers can be produced, which
/// `tar::Builder` refuses to write. Enabled by the `test-util` feature.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    pub use tar::EntryType;

    /// One raw tar entry.
    #[derive(Debug, Clone, Copy)]
    pub struct RawEntry<'a> {
        pub name: &'a str,
        pub kind: EntryType,
        pub data: &'a [u8],
        pub link: Option<&'a str>,
        pub mode: u32,
    }

    impl<'a> RawEntry<'a> {
        /// A regular, executable file.
        pub fn file(name: &'a str, data: &'a [u8]) -> Self {
            RawEntry {
                name,
                kind: EntryType::Regular,
                data,
                link: None,
                mode: 0o755,
            }
        }

        /// An entry of any kind without data (directory, link, node).
        pub fn of(kind: EntryType, name: &'a str, link: Option<&'a str>) -> Self {
            RawEntry {
                name,
                kind,
                data: b"",
                link,
                mode: 0o755,
            }
        }
    }

    /// A valid bundle (manifest and deploy script) whose first entry is preceded by
    /// an extension header of `kind` (PAX `x`/`g`, GNU `L`/`K`) holding `len` bytes:
    /// one PAX `comment` record for PAX kinds, a name of that length for GNU ones.
    /// Streamed into the gzip encoder, so a header of hundreds of MiB costs little.
    pub fn extension_header_bundle(kind: EntryType, len: usize) -> std::io::Result<Vec<u8>> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let header = |gz: &mut GzEncoder<Vec<u8>>, name: &str, kind: EntryType, size: usize| {
            let mut h = tar::Header::new_ustar();
            h.set_path(name)?;
            h.set_entry_type(kind);
            h.set_size(size as u64);
            h.set_mode(0o755);
            h.set_cksum();
            gz.write_all(h.as_bytes())
        };
        header(&mut gz, "PaxHeaders/manifest.json", kind, len)?;
        let pax = kind.is_pax_local_extensions() || kind.is_pax_global_extensions();
        let prefix = if pax {
            // "<len> comment=...\n": the length counts its own digits.
            format!("{len} comment=")
        } else {
            String::new()
        };
        let body = len.saturating_sub(prefix.len() + usize::from(pax));
        gz.write_all(prefix.as_bytes())?;
        let chunk = [b'a'; 64 * 1024];
        let mut left = body;
        while left > 0 {
            let n = left.min(chunk.len());
            gz.write_all(&chunk[..n])?;
            left -= n;
        }
        if pax {
            gz.write_all(b"\n")?;
        }
        gz.write_all(&vec![0u8; (512 - len % 512) % 512])?;
        let manifest = br#"{"name":"hostile","version":"1.0.0","deploy":{"script":"deploy.sh"}}"#;
        for (name, data) in [
            ("manifest.json", &manifest[..]),
            ("deploy.sh", &b"#!/bin/sh\nexit 0\n"[..]),
        ] {
            header(&mut gz, name, EntryType::Regular, data.len())?;
            gz.write_all(data)?;
            gz.write_all(&vec![0u8; (512 - data.len() % 512) % 512])?;
        }
        gz.write_all(&[0u8; 1024])?;
        gz.finish()
    }

    /// A tar.gz of `entries`, names written straight into old-style headers (at most
    /// 100 bytes each).
    pub fn raw_archive(entries: &[RawEntry<'_>]) -> std::io::Result<Vec<u8>> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        for e in entries {
            let mut h = tar::Header::new_old();
            let old = h.as_old_mut();
            let name = e.name.as_bytes();
            old.name
                .get_mut(..name.len())
                .ok_or_else(|| std::io::Error::other("name longer than 100 bytes"))?
                .copy_from_slice(name);
            if let Some(l) = e.link {
                old.linkname
                    .get_mut(..l.len())
                    .ok_or_else(|| std::io::Error::other("link longer than 100 bytes"))?
                    .copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(e.kind);
            h.set_size(e.data.len() as u64);
            h.set_mode(e.mode);
            h.set_cksum();
            gz.write_all(h.as_bytes())?;
            gz.write_all(e.data)?;
            gz.write_all(&vec![0u8; (512 - e.data.len() % 512) % 512])?;
        }
        gz.write_all(&[0u8; 1024])?;
        gz.finish()
    }
}

#[cfg(test)]
mod tests;
