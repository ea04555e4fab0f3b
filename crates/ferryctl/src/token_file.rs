//! Writing a new join token to `--output-file`: always a new file (an existing one is never overwritten), created
//! with mode 0600 on Unix, before the token exists so a bad path never costs a token.
//!
//! Owns that file only; it never prints the token.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CtlError;

/// A freshly created, still empty token file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    file: File,
}

impl TokenFile {
    /// Creates `path` (new only; mode 0600 on Unix). The error names `--output-file`, the path, why, and the fix.
    pub fn create(path: &Path) -> Result<Self, CtlError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    "it already exists and a token file is never overwritten: remove it or choose a new path"
                        .to_owned()
                }
                std::io::ErrorKind::NotFound => {
                    "its directory does not exist: create the directory or choose another path".to_owned()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied: choose a path in a directory you can write".to_owned()
                }
                _ => format!("cannot create it ({e}): choose another path"),
            };
            CtlError::Usage(format!("--output-file {}: {why}", path.display()))
        })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `token` and a newline and syncs the file; on failure removes the partial file.
    pub fn write_token(mut self, token: &str) -> Result<(), String> {
        let written = self
            .file
            .write_all(token.as_bytes())
            .and_then(|()| self.file.write_all(b"\n"))
            .and_then(|()| self.file.sync_all());
        written.map_err(|e| {
            let path = self.path.clone();
            self.discard();
            format!(
                "writing {} failed ({e}); the file was removed",
                path.display()
            )
        })
    }

    /// Removes the file (nothing useful was written to it).
    pub fn discard(self) {
        drop(self.file);
        // Best effort: if the removal fails too, the empty or partial file stays behind, readable only by its owner.
        let _ = std::fs::remove_file(&self.path);
    }
}
