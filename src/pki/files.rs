//! Writing key material: atomically, with its mode from the first byte.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::PkiError;

/// Writes `contents` to `path` through a temporary file in the same directory
/// and a rename, so a crash never leaves a half-written key. `mode` applies
/// from creation (the key is never world-readable, not even briefly).
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    if !overwrite && path.exists() {
        return Err(PkiError::Exists { path: path.to_owned() });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        // The umask may have cleared bits of `mode` at creation; set it
        // exactly (a 0644 certificate must stay readable by the cloud's
        // upload tooling, a key must never be more than 0600).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_mode_and_no_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/key.pem");
        write_file_atomic(&path, b"secret", 0o600, false).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(write_file_atomic(&path, b"other", 0o600, false), Err(PkiError::Exists { .. })));
        write_file_atomic(&path, b"other", 0o600, true).expect("overwrite");
        assert_eq!(fs::read(&path).expect("read"), b"other");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().expect("dir")).expect("ls").count(), 1);
    }
}
