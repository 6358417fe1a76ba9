//! Safetensors checkpoints as Hugging Face and ModelOpt write them: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`. Files are memory-mapped and never copied; a
//! tensor is a view into its file's map. The header is parsed and checked here (rather than
//! trusting a library) so that every lie a damaged file can tell is reported with the file and
//! tensor it concerns.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;

use crate::codec;
use crate::error::{Error, Result};

/// The on-disk element types we understand. Anything else in a header is an error that names
/// the tensor and the dtype string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F8E4M3,
    U8,
    I8,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F8_E4M3" => DType::F8E4M3,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "I32" => DType::I32,
            "I64" => DType::I64,
            "BOOL" => DType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::U8 | DType::I8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::Bool => "BOOL",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One memory-mapped safetensors file, or bytes built in memory (tests, synthesized weights).
pub struct MappedFile {
    pub path: PathBuf,
    map: Backing,
}

enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl MappedFile {
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedFile({})", self.path.display())
    }
}

/// A cheap, clonable view of a byte range inside a mapped file.
#[derive(Clone, Debug)]
pub struct ByteView {
    file: Arc<MappedFile>,
    range: Range<usize>,
}

impl ByteView {
    /// A view of bytes that live in memory rather than in a file; `name` stands in for the
    /// path in error messages.
    pub fn owned(bytes: Vec<u8>, name: &str) -> ByteView {
        let len = bytes.len();
        ByteView {
            file: Arc::new(MappedFile {
                path: PathBuf::from(name),
                map: Backing::Owned(bytes),
            }),
            range: 0..len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.range.clone()]
    }

    /// Maps every page of the view now (reading it from disk if it is not cached), so that
    /// the first pass over the weights does not stop on a page fault every 64 KiB: a decode
    /// step that touches experts no earlier token chose otherwise spends a few milliseconds
    /// in the kernel. Only an optimization: where the kernel lacks `MADV_POPULATE_READ`
    /// (Linux < 5.14) it asks for read-ahead instead, and any failure is ignored.
    pub fn populate(&self) {
        #[cfg(unix)]
        if let Backing::Map(m) = &self.file.map {
            let (start, len) = (self.range.start, self.range.len());
            #[cfg(target_os = "linux")]
            if m.advise_range(memmap2::Advice::PopulateRead, start, len)
                .is_ok()
            {
                return;
            }
            let _ = m.advise_range(memmap2::Advice::WillNeed, start, len);
        }
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// A tensor as the header describes it, already checked against the file's size.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: ByteView,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn file(&self) -> &Path {
        self.data.path()
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::tensor(&self.name, self.file(), msg)
    }

    /// Checks dtype membership and exact shape, with a message naming both sides.
    pub fn expect(&self, dtypes: &[DType], shape: &[usize]) -> Result<()> {
        if !dtypes.contains(&self.dtype) {
            let allowed: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
            return Err(self.error(format!(
                "dtype is {}, expected one of {}",
                self.dtype,
                allowed.join(", ")
            )));
        }
        if self.shape != shape {
            return Err(self.error(format!(
                "shape is {:?}, expected {:?} from config.json",
                self.shape, shape
            )));
        }
        Ok(())
    }

    /// Fails, naming the first element (row and column for a matrix), when a value is NaN or
    /// infinite: F32/BF16/F16 NaN and inf, E4M3 NaN (`0x7f`/`0xff`; it has no inf). A weight
    /// like that makes every later logit NaN, and the reference would produce the same NaNs,
    /// so it is a broken checkpoint, better named at load than seen as empty output. Other
    /// dtypes (packed E2M1 codes have no NaN) pass. Scans in parallel, at memory speed.
    pub fn ensure_finite(&self) -> Result<()> {
        use rayon::prelude::*;
        let size = match self.dtype {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::F8E4M3 => 1,
            _ => return Ok(()),
        };
        let bad = |e: &[u8]| match self.dtype {
            DType::F32 => {
                let bits = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                bits & 0x7f80_0000 == 0x7f80_0000
            }
            DType::BF16 => u16::from_le_bytes([e[0], e[1]]) & 0x7f80 == 0x7f80,
            DType::F16 => u16::from_le_bytes([e[0], e[1]]) & 0x7c00 == 0x7c00,
            _ => e[0] & 0x7f == 0x7f,
        };
        // Whole chunks are or-reduced without branching (so they vectorize); only a chunk
        // that has a bad value is searched for it.
        const CHUNK: usize = 1 << 20;
        let bytes = self.bytes();
        let first = bytes
            .par_chunks(CHUNK)
            .enumerate()
            .filter(|(_, c)| c.chunks_exact(size).fold(false, |a, e| a | bad(e)))
            .map(|(i, c)| i * CHUNK / size + c.chunks_exact(size).position(bad).unwrap_or(0))
            .min();
        let Some(i) = first else {
            return Ok(());
        };
        let at = if self.shape.len() >= 2 {
            let inner: usize = self.shape[1..].iter().product();
            format!("element {i} (row {}, column {})", i / inner, i % inner)
        } else {
            format!("element {i}")
        };
        Err(self.error(format!(
            "{at} is NaN or infinite ({}); expected finite values, the checkpoint is corrupt",
            self.dtype
        )))
    }

    /// Decodes a small float tensor (norm weights, biases, A_log, scales) to f32. Large
    /// quantized weights never pass through here: kernels read them in their stored format.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| codec::bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| codec::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::F8E4M3 => b.iter().map(|&x| codec::fp8::e4m3_to_f32(x)).collect(),
            other => {
                return Err(self.error(format!("dtype {other} is not a floating-point type")));
            }
        })
    }

    /// A scalar scale (`weight_scale_2`, `input_scale`, `k_scale`): shape `[]` or `[1]`.
    pub fn scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(self.error(format!("expected a scalar, found shape {:?}", self.shape)));
        }
        let v = self.to_f32_vec()?[0];
        Ok(v)
    }

    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        match self.dtype {
            DType::I64 => Ok(self
                .bytes()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()),
            DType::I32 => Ok(self
                .bytes()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect()),
            other => Err(self.error(format!("dtype {other} is not an integer type"))),
        }
    }
}

/// Every tensor of a checkpoint folder, by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<Arc<MappedFile>>,
    tensors: BTreeMap<String, TensorInfo>,
}

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The files of the checkpoint in `dir` that loading it reads (configs, tokenizer, index and
/// weights; those present), for refusing to write an output over one: the weights are mapped,
/// so truncating one would kill the process, and any of them is the user's checkpoint. Where
/// an index exists but cannot be read, every `*.safetensors` of the folder counts as a shard.
pub fn files_read(dir: &Path) -> Vec<PathBuf> {
    const FIXED: [&str; 7] = [
        "config.json",
        "generation_config.json",
        "hf_quant_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        INDEX_FILE,
        SINGLE_FILE,
    ];
    let mut files: Vec<PathBuf> = FIXED.iter().map(|f| dir.join(f)).collect();
    let shards: Option<Vec<PathBuf>> = match std::fs::read(dir.join(INDEX_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
        Err(_) => None,
        Ok(b) => (|| {
            let index: Value = serde_json::from_slice(&b).ok()?;
            let map = index.get("weight_map")?.as_object()?;
            Some(
                map.values()
                    .filter_map(|v| v.as_str().map(|f| dir.join(f)))
                    .collect(),
            )
        })(),
    };
    match shards {
        Some(shards) => files.extend(shards),
        None => files.extend(
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors")),
        ),
    }
    files
        .into_iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect()
}

impl Checkpoint {
    /// Opens `dir/model.safetensors` or the shards named by `dir/model.safetensors.index.json`.
    /// Where both exist, the single file wins, as in transformers' `from_pretrained`, and a
    /// warning says the index was ignored.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a directory (expected a checkpoint folder with config.json and *.safetensors)",
                ),
            ));
        }
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        if index_path.is_file() && !single_path.is_file() {
            Self::open_sharded(dir, &index_path)
        } else if single_path.is_file() {
            if index_path.is_file() {
                tracing::warn!(
                    "{} has both {SINGLE_FILE} and {INDEX_FILE}: loading {SINGLE_FILE}, as \
                     transformers does, and ignoring the index",
                    dir.display()
                );
            }
            let file = map_file(&single_path)?;
            let tensors = parse_header(&file)?;
            let mut ck = Checkpoint {
                dir: dir.to_path_buf(),
                files: vec![file],
                tensors: BTreeMap::new(),
            };
            for t in tensors {
                ck.tensors.insert(t.name.clone(), t);
            }
            Ok(ck)
        } else {
            Err(Error::checkpoint(
                dir,
                format!("no {SINGLE_FILE} and no {INDEX_FILE} in this folder"),
            ))
        }
    }

    /// Opens standalone safetensors files (golden outputs, codec vectors) the same careful way.
    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        Self::from_file(map_file(path)?)
    }

    /// A safetensors file held in memory, checked as [`open_file`](Self::open_file) checks a
    /// file (the fuzz targets use it); `name` stands in for its path in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Checkpoint> {
        Self::from_file(Arc::new(MappedFile {
            path: PathBuf::from(name),
            map: Backing::Owned(bytes),
        }))
    }

    fn from_file(file: Arc<MappedFile>) -> Result<Checkpoint> {
        let path = file.path.clone();
        let tensors = parse_header(&file)?;
        let mut ck = Checkpoint {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            files: vec![file],
            tensors: BTreeMap::new(),
        };
        for t in tensors {
            ck.tensors.insert(t.name.clone(), t);
        }
        Ok(ck)
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(index_path, format!("invalid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::checkpoint(
                    index_path,
                    "missing the \"weight_map\" object (tensor -> file)",
                )
            })?;
        let mut shard_names: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::checkpoint(
                    index_path,
                    format!("weight_map[\"{tensor}\"] is not a file name"),
                )
            })?;
            if file.contains('/') || file.contains('\\') || file.contains("..") {
                return Err(Error::checkpoint(
                    index_path,
                    format!("weight_map[\"{tensor}\"] = \"{file}\" is not a plain file name"),
                ));
            }
            if !shard_names.iter().any(|s| s == file) {
                shard_names.push(file.to_string());
            }
        }
        shard_names.sort();
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for shard in &shard_names {
            let path = dir.join(shard);
            if !path.is_file() {
                let what = match std::fs::symlink_metadata(&path) {
                    Err(_) => "which does not exist",
                    Ok(m) if m.is_symlink() => {
                        "a link that does not lead to a file (dangling, a loop or a folder)"
                    }
                    Ok(_) => "which is not a regular file",
                };
                return Err(Error::checkpoint(
                    index_path,
                    format!("names shard {shard}, {what}, in {}", dir.display()),
                ));
            }
            let file = map_file(&path)?;
            for t in parse_header(&file)? {
                if let Some(prev) = ck.tensors.get(&t.name) {
                    return Err(Error::checkpoint(
                        &path,
                        format!(
                            "tensor `{}` is stored twice (also in {})",
                            t.name,
                            prev.file().display()
                        ),
                    ));
                }
                ck.tensors.insert(t.name.clone(), t);
            }
            ck.files.push(file);
        }
        for (tensor, file) in map {
            let file = file.as_str().unwrap_or_default();
            match ck.tensors.get(tensor) {
                None => {
                    return Err(Error::checkpoint(
                        index_path,
                        format!(
                            "lists tensor `{tensor}` in {file}, but that shard does not contain it"
                        ),
                    ));
                }
                Some(t) if t.file().file_name().and_then(|n| n.to_str()) != Some(file) => {
                    return Err(Error::checkpoint(
                        index_path,
                        format!(
                            "lists tensor `{tensor}` in {file}, but it is stored in {}",
                            t.file().display()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(ck)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor, or an error naming it and what the model expected it to be.
    pub fn require(&self, name: &str, expected: impl fmt::Display) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
            expected: expected.to_string(),
        })
    }

    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data.len() as u64).sum()
    }
}

fn map_file(path: &Path) -> Result<Arc<MappedFile>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a checkpoint rewritten underneath a running process is
    // outside what any mmap-based loader (ours, safetensors', llama.cpp's) can defend against.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| {
        let size = f.metadata().map_or(0, |m| m.len());
        Error::checkpoint(
            path,
            format!(
                "cannot map its {:.2} GiB into memory ({e}); an address-space limit \
                 (`ulimit -v`) or too little memory would do this",
                size as f64 / (1u64 << 30) as f64
            ),
        )
    })?;
    Ok(Arc::new(MappedFile {
        path: path.to_path_buf(),
        map: Backing::Map(map),
    }))
}

/// Largest header we accept; the format's own reference implementation uses the same bound, and
/// a larger length prefix is a sure sign of a corrupt or non-safetensors file.
const MAX_HEADER: u64 = 100 * 1024 * 1024;

fn parse_header(file: &Arc<MappedFile>) -> Result<Vec<TensorInfo>> {
    let path = &file.path;
    let bytes = file.bytes();
    if bytes.len() < 8 {
        return Err(Error::checkpoint(
            path,
            format!(
                "file is {} bytes, too short for a safetensors header (truncated?)",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(Error::checkpoint(
            path,
            format!(
                "header length prefix says {n} bytes but the file holds {} after the prefix (truncated or not a safetensors file)",
                bytes.len() - 8
            ),
        ));
    }
    let n = n as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| Error::checkpoint(path, format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| Error::checkpoint(path, "header is not a JSON object"))?;
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| Error::tensor(name, path, msg);
        let dtype_s = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("header entry has no \"dtype\" string".into()))?;
        let dtype = DType::parse(dtype_s).ok_or_else(|| {
            bad(format!(
                "unknown dtype \"{dtype_s}\" (supported: F32, F16, BF16, F8_E4M3, U8, I8, I32, I64, BOOL)"
            ))
        })?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("header entry has no \"shape\" list".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape holds a value that is not a non-negative integer".into()))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("header entry has no [begin, end] \"data_offsets\"".into()))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let expected = numel
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if end < begin || end - begin != expected {
            return Err(bad(format!(
                "header says bytes {begin}..{end} ({} bytes) but {dtype} {shape:?} needs {expected}",
                end.saturating_sub(begin)
            )));
        }
        if end > data_len as u64 {
            return Err(bad(format!(
                "data ends at byte {end} of the data section but the file holds only {data_len} (truncated file?)"
            )));
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            data: ByteView {
                file: file.clone(),
                range: data_start + begin as usize..data_start + end as usize,
            },
        });
    }
    // Overlapping ranges mean the header is lying about where tensors live.
    let mut ranges: Vec<(usize, usize, &str)> = out
        .iter()
        .filter(|t| !t.data.is_empty())
        .map(|t| (t.data.range.start, t.data.range.end, t.name.as_str()))
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensors `{}` and `{}` overlap in the data section",
                    w[0].2, w[1].2
                ),
            ));
        }
    }
    Ok(out)
}
