//! Just enough of the tar format (POSIX ustar) to hand files to the engine: the archive upload
//! API takes a tar stream, and so does an image build context.

/// A tar archive being written in memory.
#[derive(Debug, Default)]
pub(crate) struct TarBuilder {
    data: Vec<u8>,
    directories: Vec<String>,
}

const BLOCK: usize = 512;

impl TarBuilder {
    /// An empty archive.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file at `path` (relative, `/`-separated; a leading `/` is dropped), with
    /// its missing parent directories.
    pub(crate) fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> Result<(), String> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(format!("{path:?} is not a file path"));
        }
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push_str(part);
            parent.push('/');
            if !self.directories.contains(&parent) {
                self.directories.push(parent.clone());
                self.header(&parent, 0o755, 0, b'5')?;
            }
        }
        self.header(path, mode, contents.len() as u64, b'0')?;
        self.data.extend_from_slice(contents);
        let padding = (BLOCK - contents.len() % BLOCK) % BLOCK;
        self.data.resize(self.data.len() + padding, 0);
        Ok(())
    }

    /// The archive, with its end-of-archive marker.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.data.resize(self.data.len() + 2 * BLOCK, 0);
        self.data
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> Result<(), String> {
        let mut header = [0u8; BLOCK];
        let (prefix, name) = split_path(path)?;
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(mode & 0o7777));
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        if size >= 8u64.pow(11) {
            return Err(format!("{path}: {size} bytes is more than a tar header holds"));
        }
        octal(&mut header[124..136], size);
        octal(&mut header[136..148], 0); // mtime
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&byte| u64::from(byte)).sum();
        octal(&mut header[148..155], sum);
        header[155] = b' ';
        self.data.extend_from_slice(&header);
        Ok(())
    }
}

/// Splits a path into ustar's prefix (155 bytes) and name (100 bytes) fields.
fn split_path(path: &str) -> Result<(&str, &str), String> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    // The split must fall on a `/`, with each side fitting its field.
    let trimmed = path.trim_end_matches('/');
    for (index, _) in trimmed.match_indices('/') {
        let (prefix, name) = (&path[..index], &path[index + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Ok((prefix, name));
        }
    }
    Err(format!("{path}: too long a path for a tar header"))
}

/// Writes `value` in octal, zero-padded, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the (name, kind, size, contents) entries back, checking each checksum.
    fn entries(data: &[u8]) -> Vec<(String, u8, usize, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut at = 0;
        while at + BLOCK <= data.len() && data[at..at + BLOCK].iter().any(|&b| b != 0) {
            let header = &data[at..at + BLOCK];
            let field = |range: std::ops::Range<usize>| {
                String::from_utf8_lossy(&header[range]).trim_end_matches('\0').to_owned()
            };
            let mut blank = header.to_vec();
            blank[148..156].copy_from_slice(b"        ");
            let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
            let stored = u64::from_str_radix(field(148..155).trim(), 8).unwrap();
            assert_eq!(sum, stored, "checksum of {}", field(0..100));
            let size = usize::from_str_radix(&field(124..135), 8).unwrap();
            let prefix = field(345..500);
            let name = if prefix.is_empty() {
                field(0..100)
            } else {
                format!("{prefix}/{}", field(0..100))
            };
            assert_eq!(&header[257..263], b"ustar\0");
            let contents = data[at + BLOCK..at + BLOCK + size].to_vec();
            entries.push((name, header[156], size, contents));
            at += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
        assert_eq!(data.len() - at, 2 * BLOCK, "the archive ends with two zero blocks");
        entries
    }

    #[test]
    fn files_and_their_directories_are_written_as_ustar() {
        let mut tar = TarBuilder::new();
        tar.file("/etc/app/config.toml", 0o600, b"a = 1\n").unwrap();
        tar.file("etc/app/other", 0o644, &[7u8; 700]).unwrap();
        let entries = entries(&tar.finish());
        let names: Vec<(&str, u8, usize)> =
            entries.iter().map(|(n, k, s, _)| (n.as_str(), *k, *s)).collect();
        assert_eq!(
            names,
            [
                ("etc/", b'5', 0),
                ("etc/app/", b'5', 0),
                ("etc/app/config.toml", b'0', 6),
                ("etc/app/other", b'0', 700)
            ]
        );
        assert_eq!(entries[2].3, b"a = 1\n");
        assert_eq!(entries[3].3, vec![7u8; 700]);
    }

    #[test]
    fn long_paths_use_the_prefix_field() {
        let long = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(90));
        let mut tar = TarBuilder::new();
        tar.file(&long, 0o644, b"x").unwrap();
        let entries = entries(&tar.finish());
        assert_eq!(entries.last().unwrap().0, long);
    }

    #[test]
    fn bad_paths_are_refused_with_the_path() {
        for path in ["", "/", "a/../b", "a//b", &"x".repeat(300)] {
            let error = TarBuilder::new().file(path, 0o644, b"").unwrap_err();
            assert!(error.contains(path.trim_start_matches('/')), "{error}");
        }
    }
}
