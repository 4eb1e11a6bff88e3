//! Filesystem measurements the benches report.

use std::path::Path;

/// Bytes of the files under `p`, recursively; what cannot be read counts as nothing.
pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e
                .metadata()
                .map(|m| (m.is_dir(), m.len()))
                .unwrap_or((false, 0));
            total += if m.0 { dir_size(&e.path()) } else { m.1 };
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_files_of_nested_directories() {
        let dir = std::env::temp_dir().join(format!("tarn-dir-size-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 32]).unwrap();
        let size = dir_size(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size, 42);
        assert_eq!(dir_size(&dir), 0, "a missing directory");
    }
}
