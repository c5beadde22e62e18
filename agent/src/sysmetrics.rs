//! CPU and memory figures for heartbeats, and the hardware description sent at
//! registration, read from the OS with `sysinfo`.

use serde_json::{Value, json};
use sysinfo::System;

/// Samples system-wide CPU use (between two calls) and used memory.
pub struct Sampler {
    system: Option<System>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let system = System::new().ok().map(|mut s| {
            // CPU use is a difference between two readings: take the first now.
            s.refresh_cpu_usage();
            s
        });
        Sampler { system }
    }

    /// `(cpu_pct, memory_mb)`: CPU use since the previous sample (all cores, 0–100) and
    /// memory in use. Zeros when the platform gives nothing (never NaN: the server
    /// refuses non-finite numbers).
    pub fn sample(&mut self) -> (f64, f64) {
        let Some(s) = self.system.as_mut() else {
            return (0.0, 0.0);
        };
        s.refresh_cpu_usage();
        s.refresh_memory();
        let cpu = f64::from(s.global_cpu_usage());
        let mem = s.used_memory() as f64 / (1024.0 * 1024.0);
        (finite(cpu).clamp(0.0, 100.0), finite(mem).max(0.0))
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// What registration tells the server about this machine.
pub fn hardware_metadata() -> Value {
    let mut system = System::new().ok();
    let (cpus, memory_mb) = match system.as_mut() {
        Some(s) => {
            s.refresh_memory();
            s.refresh_cpu_usage();
            (s.cpus().len(), s.total_memory() / (1024 * 1024))
        }
        None => (0, 0),
    };
    json!({
        "hostname": System::host_name().ok(),
        "os": System::long_os_version().ok(),
        "kernel": System::kernel_version().ok(),
        "arch": System::cpu_arch(),
        "cpus": cpus,
        "memory_total_mb": memory_mb,
        "agent_version": crate::AGENT_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_finite_and_memory_is_real() {
        let mut s = Sampler::new();
        let (cpu, mem) = s.sample();
        assert!((0.0..=100.0).contains(&cpu));
        // Any machine running this test uses some memory.
        assert!(mem > 1.0, "memory_mb {mem}");
    }

    #[test]
    fn hardware_metadata_names_the_machine() {
        let m = hardware_metadata();
        assert_eq!(m["agent_version"], crate::AGENT_VERSION);
        assert!(m["cpus"].as_u64().unwrap() >= 1);
    }
}
