//! Power loss for a real process: `shim/durable_image.c`, built here with the machine's C
//! compiler, is preloaded into the server and keeps a *durable image* of its data dir —
//! only what was fsynced (see the C file for exactly what it models and what not).
//! After a SIGKILL, [`DurableImage::lose_power`] replaces the data dir with the image:
//! every write not yet fsynced is thrown away, as a power cut would.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Build (once, and again when the source changes) the shim; its path.
pub fn shim() -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .map_err(|_| anyhow::anyhow!("shim lock poisoned"))?;
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    let source = crate::workspace_root().join("tests/shim/durable_image.c");
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let out = dir.join("kx_durable_image.so");
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(&source)) {
        (Ok(o), Ok(s)) => o.modified()? >= s.modified()?,
        _ => false,
    };
    if !fresh {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&source)
            .args(["-ldl", "-lpthread"])
            .status()
            .with_context(|| {
                format!("running the C compiler {cc:?} (the power-loss shim needs one)")
            })?;
        if !status.success() {
            bail!("{cc} could not build {}", source.display());
        }
    }
    *built = Some(out.clone());
    Ok(out)
}

/// A data dir and its durable image.
#[derive(Debug)]
pub struct DurableImage {
    pub data_dir: PathBuf,
    pub image: PathBuf,
    shim: PathBuf,
}

impl DurableImage {
    /// Track `data_dir` (created 0700 if missing); the image starts as a copy of it.
    pub fn new(data_dir: &Path) -> Result<Self> {
        create_private(data_dir)?;
        let data_dir = data_dir.canonicalize()?;
        let mut image = data_dir.clone().into_os_string();
        image.push(".durable");
        let me = DurableImage {
            image: PathBuf::from(image),
            data_dir,
            shim: shim()?,
        };
        me.reset_image()?;
        Ok(me)
    }

    /// The environment that makes a process keep the image.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.shim.display().to_string()),
            ("KX_DURABLE_DIR".into(), self.data_dir.display().to_string()),
            ("KX_DURABLE_IMAGE".into(), self.image.display().to_string()),
        ]
    }

    /// The image becomes a copy of the data dir as it is (call before each start).
    pub fn reset_image(&self) -> Result<()> {
        if self.image.exists() {
            std::fs::remove_dir_all(&self.image)?;
        }
        copy_dir(&self.data_dir, &self.image)
    }

    /// After the process died: the data dir becomes what the image holds, the image a
    /// fresh copy of it. Returns the bytes thrown away: those of the data dir that the
    /// image does not hold the same.
    pub fn lose_power(&self) -> Result<u64> {
        let lost = differing_bytes(&self.data_dir, &self.image)?;
        std::fs::remove_dir_all(&self.data_dir)?;
        std::fs::rename(&self.image, &self.data_dir)?;
        self.reset_image()?;
        Ok(lost)
    }
}

fn create_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    create_private(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Bytes of the files under `real` that differ from (or are missing in) `image`.
fn differing_bytes(real: &Path, image: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(real)? {
        let e = e?;
        let other = image.join(e.file_name());
        if e.file_type()?.is_dir() {
            total += differing_bytes(&e.path(), &other)?;
            continue;
        }
        let a = std::fs::read(e.path())?;
        let b = std::fs::read(&other).unwrap_or_default();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        total += (a.len() - same) as u64;
    }
    Ok(total)
}
