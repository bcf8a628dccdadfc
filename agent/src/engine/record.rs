//! The engine's record of each container: `<containers>/<id>.container`, the wire
//! `ContainerInfo` with the fields fixed at creation (id, name, request, image, effective
//! command and environment), protobuf-encoded. Live fields (state, pid, exit) are never
//! stored here; they are read from the runtime's state directory `<containers>/<id>/`.
//!
//! Records are written atomically (temp file, fsync, rename) before the runtime creates the
//! container and removed after the runtime deleted it, so a crash leaves at worst a record
//! without a runtime directory, which `Engine::open` drops.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use berth_proto::v1::ContainerInfo;
use prost::Message;

const SUFFIX: &str = ".container";

/// Path of the record of container `id`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{SUFFIX}"))
}

/// Writes the record of `info.id` atomically.
pub fn write(dir: &Path, info: &ContainerInfo) -> io::Result<()> {
    let target = path(dir, &info.id);
    let tmp = dir.join(format!("{}{SUFFIX}.tmp", info.id));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&info.encode_to_vec())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &target)
}

/// Every readable record in `dir`; unreadable ones are logged and skipped.
pub fn read_all(dir: &Path) -> io::Result<Vec<ContainerInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(SUFFIX) {
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        match fs::read(entry.path())
            .and_then(|d| ContainerInfo::decode(d.as_slice()).map_err(io::Error::other))
        {
            Ok(info) if format!("{}{SUFFIX}", info.id) == name => out.push(info),
            Ok(_) => tracing::warn!(file = %name, "container record names another id; ignored"),
            Err(e) => tracing::warn!(file = %name, error = %e, "unreadable container record"),
        }
    }
    Ok(out)
}

/// Removes the record of `id` (missing is fine).
pub fn remove(dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let info = ContainerInfo {
            id: "a".repeat(64),
            name: "web".into(),
            args: vec!["sh".into()],
            ..Default::default()
        };
        write(tmp.path(), &info).unwrap();
        fs::create_dir(tmp.path().join("b".repeat(64))).unwrap();
        fs::write(tmp.path().join("junk.container"), b"\xff\xff").unwrap();
        let all = read_all(tmp.path()).unwrap();
        assert_eq!(all, vec![info.clone()]);
        remove(tmp.path(), &info.id).unwrap();
        remove(tmp.path(), &info.id).unwrap();
        assert!(read_all(tmp.path()).unwrap().is_empty());
    }
}
