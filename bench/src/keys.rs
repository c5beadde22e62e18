//! Device keys. RSA key generation costs tens to hundreds of milliseconds a key, so the
//! fleet's keys are made once, on every core, and kept as PKCS#8 PEM files (mode 0600)
//! that later runs load instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use chrono::Utc;
use kernex_common::api::RegisterRequest;
use kernex_common::signing::DeviceKey;

/// The smallest key the server accepts; the agent's 4096 bits would only slow set-up.
pub const KEY_BITS: usize = 2048;

fn key_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("device-{i:05}.pem"))
}

/// `n` keys: those cached in `dir` are loaded, the rest generated and cached.
pub fn load_or_generate(dir: &Path, n: usize) -> Result<Vec<DeviceKey>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let missing = (0..n).filter(|&i| !key_path(dir, i).exists()).count();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if missing > 0 {
        eprintln!(
            "generating {missing} RSA-{KEY_BITS} device keys on {threads} threads \
             (once: they are kept in {})",
            dir.display()
        );
    }
    let made = AtomicUsize::new(0);
    parallel(n, threads, |i| {
        let path = key_path(dir, i);
        if path.exists() {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return DeviceKey::from_pem(&pem).with_context(|| {
                format!(
                    "{} is not a key (delete it to make a new one)",
                    path.display()
                )
            });
        }
        let key = DeviceKey::generate(KEY_BITS)?;
        save(dir, &path, &key)?;
        let done = made.fetch_add(1, Ordering::Relaxed) + 1;
        if done.is_multiple_of(100) || done == missing {
            eprintln!("  {done}/{missing} keys");
        }
        Ok(key)
    })
}

/// Written to a temp file and renamed, so an interrupted run never leaves half a key.
fn save(dir: &Path, path: &Path, key: &DeviceKey) -> Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(key.to_pem()?.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Registration bodies (device `i` signs body `i`), timestamped now, with their
/// base64 signatures, as `POST /devices/register` wants them.
pub fn registrations(keys: &[DeviceKey]) -> Result<Vec<(Vec<u8>, String)>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let now = Utc::now();
    parallel(keys.len(), threads, |i| {
        let body = serde_json::to_vec(&RegisterRequest {
            public_key: keys[i].public_key_pem()?,
            device_type: "bench".to_owned(),
            hardware_metadata: serde_json::json!({ "bench_index": i }),
            timestamp: now,
        })?;
        let signature = keys[i].sign(&body);
        Ok((body, signature))
    })
}

/// `f(0..n)` on `threads` threads, results in index order; the first error wins.
fn parallel<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        match f(i) {
                            Ok(t) => mine.push((i, t)),
                            Err(e) => {
                                // The others stop at their next index.
                                next.store(n, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            let part: Result<Vec<(usize, T)>> = w
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")));
            all.extend(part?);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    out.sort_unstable_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_index_order() {
        let v = parallel(100, 3, |i| Ok(i * 2)).unwrap();
        assert_eq!(v, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel(10, 2, |i| if i == 7 { anyhow::bail!("no") } else { Ok(i) }).is_err());
    }
}
