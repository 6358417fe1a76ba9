//! Which Linear modules of a checkpoint are quantized, and how, as NVIDIA TensorRT Model Optimizer
//! (modelopt) describes it (`shared/reference/ARCH_NOTES.md` §8).
//!
//! modelopt writes the same information twice: `hf_quant_config.json`
//! (`{"producer", "quantization": {quant_algo, kv_cache_quant_algo, group_size, exclude_modules |
//! quantized_layers}}`) and `config.json["quantization_config"]` (`quant_method: "modelopt"`,
//! `quant_algo`, `config_groups`, `ignore`, `kv_cache_scheme`, `quantized_layers`). Either may be
//! missing (hub uploads sometimes drop one); when both are present they must agree, because the
//! loader trusts whichever it reads and a disagreement means one of them was edited by hand.
//!
//! This module only says what the config *promises*; the weight loader checks the stored tensors'
//! dtypes against it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::read_json;
use crate::{Error, Result};

/// The one NVFP4 block size modelopt produces (16 E2M1 elements per E4M3 scale).
pub const NVFP4_GROUP_SIZE: usize = 16;

const SUPPORTED_ALGOS: &str = "NVFP4 (group_size 16), FP8, or MIXED_PRECISION of these two";

/// Storage format of one quantized Linear weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// E2M1 codes `U8 [out, in/2]`, E4M3 block scales `[out, in/group_size]`, an F32 tensor scale
    /// and an F32 input scale.
    Nvfp4 { group_size: usize },
    /// E4M3 weights `[out, in]` with one F32 weight scale and one F32 input scale.
    Fp8,
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantFormat::Nvfp4 { group_size } => write!(f, "NVFP4 (group size {group_size})"),
            QuantFormat::Fp8 => f.write_str("FP8"),
        }
    }
}

/// Quantization of the attention KV cache (per-tensor `k_scale` / `v_scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvCacheQuant {
    Fp8,
}

impl fmt::Display for KvCacheQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvCacheQuant::Fp8 => f.write_str("FP8"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantConfig {
    /// e.g. `modelopt 0.47.0`.
    pub producer: Option<String>,
    /// The global algorithm; `None` for `MIXED_PRECISION` (see `layers`) and for a KV-cache-only
    /// export (`quant_algo: null`).
    pub default: Option<QuantFormat>,
    /// fnmatch-style globs of modules left unquantized (`exclude_modules` / `ignore`).
    pub exclude: Vec<String>,
    /// `MIXED_PRECISION` only: module name (or dotted prefix, e.g. `...mixer.experts`) → format.
    pub layers: Vec<(String, QuantFormat)>,
    pub kv_cache: Option<KvCacheQuant>,
    /// The file the description was read from (`hf_quant_config.json` when present).
    pub source: PathBuf,
}

impl QuantConfig {
    /// Reads `dir/hf_quant_config.json` if present and `quantization_config` from the already
    /// parsed `config.json` (`model_config_json`). `Ok(None)`: the checkpoint is not quantized.
    pub fn load(dir: &Path, model_config_json: &Value) -> Result<Option<QuantConfig>> {
        let hf_path = dir.join("hf_quant_config.json");
        let from_hf = match std::fs::metadata(&hf_path) {
            Ok(_) => Some(QuantConfig::from_hf_quant_config(
                &read_json(&hf_path)?,
                &hf_path,
            )?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&hf_path, e)),
        };
        let cfg_path = dir.join("config.json");
        let from_cfg = match model_config_json.get("quantization_config") {
            None | Some(Value::Null) => None,
            Some(v) => Some(QuantConfig::from_quantization_config(v, &cfg_path)?),
        };
        match (from_hf, from_cfg) {
            (None, None) => Ok(None),
            (Some(q), None) | (None, Some(q)) => Ok(Some(q)),
            (Some(mut hf), Some(cfg)) => {
                hf.check_agrees(&cfg)?;
                hf.producer = hf.producer.or(cfg.producer);
                Ok(Some(hf))
            }
        }
    }

    /// Parses the contents of an `hf_quant_config.json`; `file` is used in messages and as
    /// `source`.
    pub fn from_hf_quant_config(value: &Value, file: &Path) -> Result<QuantConfig> {
        let root = object(value, file, "the file")?;
        let q = match root.get("quantization") {
            Some(q) => object(q, file, "quantization")?,
            None => return Err(Error::config(file, "has no \"quantization\" object")),
        };
        let algo = opt_str(q, "quantization.quant_algo", "quant_algo", file)?;
        let algo = algo
            .map(|a| Algo::parse(a, file, "quant_algo"))
            .transpose()?;
        let group_size = q.get("group_size").filter(|v| !v.is_null());
        let group_size = group_size
            .map(|v| usize_of(v, file, "quantization.group_size"))
            .transpose()?;
        let kv_cache = match opt_str(
            q,
            "quantization.kv_cache_quant_algo",
            "kv_cache_quant_algo",
            file,
        )? {
            Some(s) => Some(parse_kv_algo(s, file, "kv_cache_quant_algo")?),
            None => None,
        };
        let exclude = module_list(q.get("exclude_modules"), file, "exclude_modules")?;
        let (default, layers) = match algo {
            Some(Algo::Mixed) => {
                let layers = match q.get("quantized_layers") {
                    Some(v) => quantized_layers(v, file, "quantized_layers")?,
                    None => {
                        return Err(Error::config(
                            file,
                            "quant_algo is MIXED_PRECISION but there is no quantized_layers map",
                        ));
                    }
                };
                (None, layers)
            }
            Some(a) => (Some(a.format(group_size, file, "quant_algo")?), Vec::new()),
            None => (None, Vec::new()),
        };
        Ok(QuantConfig {
            producer: producer(root.get("producer")),
            default,
            exclude,
            layers,
            kv_cache,
            source: file.to_path_buf(),
        })
    }

    /// Parses `config.json["quantization_config"]`; `file` is the `config.json` path, used in
    /// messages and as `source`.
    pub fn from_quantization_config(value: &Value, file: &Path) -> Result<QuantConfig> {
        let q = object(value, file, "quantization_config")?;
        match q.get("quant_method").and_then(Value::as_str) {
            Some(m) if m.eq_ignore_ascii_case("modelopt") => {}
            Some(m) => {
                return Err(Error::Quant(format!(
                    "{}: quantization_config.quant_method {m:?} is not supported; only \"modelopt\" \
                     is, with quant_algo {SUPPORTED_ALGOS}",
                    file.display()
                )));
            }
            None => {
                return Err(Error::config(
                    file,
                    "quantization_config has no quant_method string (expected \"modelopt\")",
                ));
            }
        }
        let algo = opt_str(q, "quantization_config.quant_algo", "quant_algo", file)?;
        let algo = algo
            .map(|a| Algo::parse(a, file, "quantization_config.quant_algo"))
            .transpose()?;
        let groups = match q.get("config_groups") {
            None | Some(Value::Null) => None,
            Some(v) => Some(object(v, file, "quantization_config.config_groups")?),
        };

        // The NVFP4 block size lives in the config groups' weight schemes here; a top-level
        // group_size, if some exporter writes one, must say the same.
        let mut group_size = q
            .get("group_size")
            .filter(|v| !v.is_null())
            .map(|v| usize_of(v, file, "quantization_config.group_size"))
            .transpose()?;
        if algo == Some(Algo::Nvfp4) {
            for (name, g) in groups.into_iter().flatten() {
                let scheme = Scheme::of_group(g, file, name)?;
                if let Some(gs) = scheme.group_size.filter(|_| scheme.num_bits == Some(4)) {
                    if group_size.is_some_and(|top| top != gs) {
                        return Err(Error::config(
                            file,
                            format!(
                                "quantization_config.group_size ({}) and config_groups.{name} \
                                 weights group_size ({gs}) disagree",
                                group_size.unwrap_or_default()
                            ),
                        ));
                    }
                    group_size = Some(gs);
                }
            }
        }

        let kv_cache = kv_cache_of_config(q, file)?;
        let exclude = module_list(q.get("ignore"), file, "quantization_config.ignore")?;
        let (default, layers) = match algo {
            Some(Algo::Mixed) => {
                let layers = match q.get("quantized_layers") {
                    Some(v) => quantized_layers(v, file, "quantization_config.quantized_layers")?,
                    None => layers_from_groups(groups, file)?,
                };
                (None, layers)
            }
            Some(a) => (
                Some(a.format(group_size, file, "quantization_config.quant_algo")?),
                Vec::new(),
            ),
            None => (None, Vec::new()),
        };
        Ok(QuantConfig {
            producer: producer(q.get("producer")),
            default,
            exclude,
            layers,
            kv_cache,
            source: file.to_path_buf(),
        })
    }

    /// The format the config promises for the Linear module `module` (e.g.
    /// `backbone.layers.3.mixer.experts.7.up_proj`, `lm_head`); `None` = not quantized.
    ///
    /// An exclusion wins over everything: modelopt never lists a module both ways, and if a
    /// hand-edited file does, "unquantized" makes the loader's dtype check report the conflict
    /// instead of misreading bytes. For `MIXED_PRECISION` the longest entry of `layers` that names
    /// the module or a dotted prefix of it decides; otherwise the global algorithm applies.
    pub fn format_of(&self, module: &str) -> Option<QuantFormat> {
        if self.is_excluded(module) {
            return None;
        }
        if self.default.is_some() {
            return self.default;
        }
        self.layers
            .iter()
            .filter(|(name, _)| covers(name, module))
            .max_by_key(|(name, _)| name.len())
            .map(|&(_, format)| format)
    }

    /// Whether an `exclude_modules` / `ignore` entry matches `module`.
    pub fn is_excluded(&self, module: &str) -> bool {
        self.exclude.iter().any(|pattern| covers(pattern, module))
    }

    fn check_agrees(&self, other: &QuantConfig) -> Result<()> {
        let disagree = |what: &str, a: String, b: String| {
            Err(Error::config(
                &self.source,
                format!(
                    "disagrees with {} (quantization_config) on {what}: {a} here, {b} there",
                    other.source.display()
                ),
            ))
        };
        let algo = |q: &QuantConfig| match (q.default, q.layers.is_empty()) {
            (Some(f), _) => f.to_string(),
            (None, false) => "MIXED_PRECISION".to_string(),
            (None, true) => "none (quant_algo null)".to_string(),
        };
        if self.default != other.default || self.layers.is_empty() != other.layers.is_empty() {
            return disagree("the algorithm", algo(self), algo(other));
        }
        if self.kv_cache != other.kv_cache {
            let kv = |k: Option<KvCacheQuant>| k.map_or("none".into(), |k| k.to_string());
            return disagree("the KV cache", kv(self.kv_cache), kv(other.kv_cache));
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        let (a, b) = (sorted(&self.exclude), sorted(&other.exclude));
        if let Some(x) = a.iter().find(|x| !b.contains(x)) {
            let what = format!("excluded module {x:?}");
            return disagree(&what, "listed".into(), "not listed".into());
        }
        if let Some(x) = b.iter().find(|x| !a.contains(x)) {
            let what = format!("excluded module {x:?}");
            return disagree(&what, "not listed".into(), "listed".into());
        }
        let mut a = self.layers.clone();
        let mut b = other.layers.clone();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        if a != b {
            let show = |l: &[(String, QuantFormat)], name: &str| {
                l.iter()
                    .find(|(n, _)| n == name)
                    .map_or("not listed".to_string(), |(_, f)| f.to_string())
            };
            let name = a
                .iter()
                .chain(&b)
                .map(|(n, _)| n)
                .find(|n| show(&a, n) != show(&b, n))
                .cloned()
                .unwrap_or_default();
            return disagree(
                &format!("quantized layer {name:?}"),
                show(&a, &name),
                show(&b, &name),
            );
        }
        Ok(())
    }
}

/// Whether `pattern` (an exclude glob or a `quantized_layers` name) covers `module`.
///
/// fnmatch semantics, as modelopt writes them: `*` also matches dots, so `backbone.layers.1*`
/// matches `backbone.layers.10.mixer...` too. That is intended; modelopt picks these prefix
/// globs so that they never match a quantized module (quant_utils.py:609-680). A name without
/// wildcards also covers its dotted children (`backbone.layers.1.mixer.experts` covers
/// `backbone.layers.1.mixer.experts.7.up_proj`), since modelopt names parent modules that way.
fn covers(pattern: &str, module: &str) -> bool {
    if has_wildcard(pattern) {
        fnmatch(pattern, module)
    } else {
        module == pattern
            || (module.starts_with(pattern) && module.as_bytes().get(pattern.len()) == Some(&b'.'))
    }
}

fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Python's `fnmatch.fnmatchcase`: `*` any run (dots included), `?` one character, `[seq]` /
/// `[!seq]` a set with `a-z` ranges; a `[` without a closing `]` is literal.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, name index it swallowed up to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match char_class(&p, pi) {
                Some((matches, end)) => matches(s[si]).then_some(end),
                None => (s[si] == '[').then_some(pi + 1),
            },
            Some(&c) => (s[si] == c).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                si += 1;
            }
            (None, Some((after, swallowed))) => {
                pi = after;
                si = swallowed + 1;
                star = Some((after, swallowed + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

type ClassMatcher = Box<dyn Fn(char) -> bool>;

/// Parses the set starting at `p[start] == '['`; returns its matcher and the index after `]`.
fn char_class(p: &[char], start: usize) -> Option<(ClassMatcher, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let first = i;
    // A `]` right after `[` or `[!` is a member, not the end.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    while p.get(i).is_some_and(|&c| c != ']') {
        i += 1;
    }
    if i >= p.len() {
        return None;
    }
    let body = &p[first..i];
    let mut ranges = Vec::new();
    let mut j = 0;
    while j < body.len() {
        if j + 2 < body.len() && body[j + 1] == '-' {
            ranges.push((body[j], body[j + 2]));
            j += 3;
        } else {
            ranges.push((body[j], body[j]));
            j += 1;
        }
    }
    let matcher = move |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negate;
    Some((Box::new(matcher), i + 1))
}

/// Strips the mangled name sentinel of the modelopt 0.47 + transformers 5.x export bug
/// (ARCH_NOTES §8): modelopt appends `.\0modelopt_name_sentinel` before applying the model's
/// reverse renames, nemotron_h's `model.` → `backbone.` regex rewrites it to
/// `.\0backbone.pt_name_sentinel`, and modelopt's `removesuffix` then misses it. No real module
/// name contains a NUL, so everything from the NUL on is the sentinel.
pub fn strip_name_sentinel(name: &str) -> &str {
    match name.find('\0') {
        Some(nul) => {
            let head = &name[..nul];
            head.strip_suffix('.').unwrap_or(head)
        }
        None => name,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Nvfp4,
    Fp8,
    Mixed,
}

impl Algo {
    fn parse(s: &str, file: &Path, field: &str) -> Result<Algo> {
        match s.to_ascii_uppercase().as_str() {
            "NVFP4" => Ok(Algo::Nvfp4),
            "FP8" => Ok(Algo::Fp8),
            "MIXED_PRECISION" => Ok(Algo::Mixed),
            _ => Err(Error::Quant(format!(
                "{}: {field} {s:?} is not supported; supported: {SUPPORTED_ALGOS}",
                file.display()
            ))),
        }
    }

    fn format(self, group_size: Option<usize>, file: &Path, field: &str) -> Result<QuantFormat> {
        match self {
            Algo::Nvfp4 => match group_size.unwrap_or(NVFP4_GROUP_SIZE) {
                NVFP4_GROUP_SIZE => Ok(QuantFormat::Nvfp4 {
                    group_size: NVFP4_GROUP_SIZE,
                }),
                other => Err(Error::Quant(format!(
                    "{}: {field} NVFP4 with group_size {other} is not supported; NVFP4 blocks \
                     are {NVFP4_GROUP_SIZE} elements",
                    file.display()
                ))),
            },
            Algo::Fp8 => Ok(QuantFormat::Fp8),
            Algo::Mixed => Err(Error::Quant(format!(
                "{}: {field} MIXED_PRECISION is not a per-layer format; supported per layer: \
                 NVFP4, FP8",
                file.display()
            ))),
        }
    }
}

fn parse_kv_algo(s: &str, file: &Path, field: &str) -> Result<KvCacheQuant> {
    if s.eq_ignore_ascii_case("FP8") {
        Ok(KvCacheQuant::Fp8)
    } else {
        Err(Error::Quant(format!(
            "{}: {field} {s:?} is not supported; supported: FP8 (or null)",
            file.display()
        )))
    }
}

/// The weight scheme of one `config_groups` entry (`{"weights": {num_bits, type, group_size}}`).
struct Scheme {
    num_bits: Option<u64>,
    kind: Option<String>,
    group_size: Option<usize>,
}

impl Scheme {
    fn of_group(group: &Value, file: &Path, name: &str) -> Result<Scheme> {
        let field = format!("quantization_config.config_groups.{name}.weights");
        let w = match group.get("weights") {
            Some(w) => object(w, file, &field)?,
            None => return Err(Error::config(file, format!("{field} is missing"))),
        };
        Ok(Scheme {
            num_bits: w.get("num_bits").and_then(Value::as_u64),
            kind: w.get("type").and_then(Value::as_str).map(str::to_owned),
            group_size: w
                .get("group_size")
                .filter(|v| !v.is_null())
                .map(|v| usize_of(v, file, &format!("{field}.group_size")))
                .transpose()?,
        })
    }

    fn format(&self, file: &Path, name: &str) -> Result<QuantFormat> {
        let field = format!("quantization_config.config_groups.{name}");
        match (self.num_bits, self.kind.as_deref()) {
            (Some(4), Some("float")) => Algo::Nvfp4.format(self.group_size, file, &field),
            (Some(8), Some("float")) => Ok(QuantFormat::Fp8),
            (bits, kind) => Err(Error::Quant(format!(
                "{}: {field} weights are num_bits {bits:?}, type {kind:?}; supported: 4-bit float \
                 (NVFP4), 8-bit float (FP8)",
                file.display()
            ))),
        }
    }
}

/// `MIXED_PRECISION` without a `quantized_layers` map: each config group lists its modules as
/// `targets` and says its format in `weights`.
fn layers_from_groups(
    groups: Option<&Map<String, Value>>,
    file: &Path,
) -> Result<Vec<(String, QuantFormat)>> {
    let Some(groups) = groups.filter(|g| !g.is_empty()) else {
        return Err(Error::config(
            file,
            "quantization_config.quant_algo is MIXED_PRECISION but there is neither a \
             quantized_layers map nor config_groups",
        ));
    };
    let mut layers = Vec::new();
    for (name, g) in groups {
        let format = Scheme::of_group(g, file, name)?.format(file, name)?;
        let field = format!("quantization_config.config_groups.{name}.targets");
        for target in module_list(g.get("targets"), file, &field)? {
            layers.push((target, format));
        }
    }
    Ok(layers)
}

fn kv_cache_of_config(q: &Map<String, Value>, file: &Path) -> Result<Option<KvCacheQuant>> {
    if let Some(s) = opt_str(
        q,
        "quantization_config.kv_cache_quant_algo",
        "kv_cache_quant_algo",
        file,
    )? {
        return parse_kv_algo(s, file, "quantization_config.kv_cache_quant_algo").map(Some);
    }
    let scheme = match q.get("kv_cache_scheme") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let bits = scheme.get("num_bits").and_then(Value::as_u64);
    let kind = scheme.get("type").and_then(Value::as_str);
    match (bits, kind) {
        (Some(8), Some("float")) => Ok(Some(KvCacheQuant::Fp8)),
        _ => Err(Error::Quant(format!(
            "{}: quantization_config.kv_cache_scheme {scheme} is not supported; supported: FP8 \
             (num_bits 8, type float) or null",
            file.display()
        ))),
    }
}

fn quantized_layers(v: &Value, file: &Path, field: &str) -> Result<Vec<(String, QuantFormat)>> {
    let map = object(v, file, field)?;
    let mut layers = Vec::with_capacity(map.len());
    for (name, entry) in map {
        let name = strip_name_sentinel(name).to_string();
        let what = format!("{field}[{name:?}]");
        let entry = object(entry, file, &what)?;
        let algo = match entry.get("quant_algo").and_then(Value::as_str) {
            Some(a) => Algo::parse(a, file, &format!("{what}.quant_algo"))?,
            None => {
                return Err(Error::config(
                    file,
                    format!("{what} has no quant_algo string"),
                ));
            }
        };
        let group_size = entry
            .get("group_size")
            .filter(|v| !v.is_null())
            .map(|v| usize_of(v, file, &format!("{what}.group_size")))
            .transpose()?;
        let format = algo.format(group_size, file, &format!("{what}.quant_algo"))?;
        layers.push((name, format));
    }
    Ok(layers)
}

/// A list of module names / globs, with the export-bug sentinel stripped; absent or null = empty.
fn module_list(v: Option<&Value>, file: &Path, field: &str) -> Result<Vec<String>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::config(
                file,
                format!("{field} must be a list of module names, got {other}"),
            ));
        }
    };
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) => Ok(strip_name_sentinel(s).to_string()),
            None => Err(Error::config(
                file,
                format!("{field} must contain strings, got {item}"),
            )),
        })
        .collect()
}

fn producer(v: Option<&Value>) -> Option<String> {
    let p = v?;
    if let Some(s) = p.as_str() {
        return Some(s.to_string());
    }
    let name = p.get("name").and_then(Value::as_str)?;
    Some(match p.get("version").and_then(Value::as_str) {
        Some(version) => format!("{name} {version}"),
        None => name.to_string(),
    })
}

fn object<'v>(v: &'v Value, file: &Path, what: &str) -> Result<&'v Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::config(file, format!("{what} must be a JSON object, got {v}")))
}

fn opt_str<'v>(
    map: &'v Map<String, Value>,
    field: &str,
    key: &str,
    file: &Path,
) -> Result<Option<&'v str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::config(
            file,
            format!("{field} must be a string or null, got {other}"),
        )),
    }
}

fn usize_of(v: &Value, file: &Path, field: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            Error::config(
                file,
                format!("{field} must be a non-negative integer, got {v}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUPER: &str = "nemotronh_tiny_grouped_nvfp4_super";
    const CONSERVATIVE: &str = "nemotronh_tiny_grouped_nvfp4";

    fn fixture(file: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/configs")
            .join(file);
        read_json(&path).unwrap()
    }

    /// A checkpoint directory holding the given `hf_quant_config.json` (if any).
    fn dir_with(hf_quant_config: Option<&Value>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(v) = hf_quant_config {
            std::fs::write(
                dir.path().join("hf_quant_config.json"),
                serde_json::to_string_pretty(v).unwrap(),
            )
            .unwrap();
        }
        dir
    }

    fn load(hf: Option<&Value>, config: &Value) -> Result<Option<QuantConfig>> {
        let dir = dir_with(hf);
        QuantConfig::load(dir.path(), config)
    }

    fn err(r: Result<Option<QuantConfig>>) -> String {
        match r {
            Ok(q) => panic!("accepted: {q:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(fnmatch(
            "backbone.layers.0*",
            "backbone.layers.0.mixer.in_proj"
        ));
        // fnmatch's `*` crosses dots and digits: this is modelopt's intended meaning.
        assert!(fnmatch(
            "backbone.layers.1*",
            "backbone.layers.10.mixer.in_proj"
        ));
        assert!(!fnmatch("backbone.layers.1*", "backbone.layers.2.mixer"));
        assert!(fnmatch("*.gate", "backbone.layers.1.mixer.gate"));
        assert!(fnmatch("a?c", "abc") && !fnmatch("a?c", "ac"));
        assert!(fnmatch("layer[0-3]", "layer2") && !fnmatch("layer[0-3]", "layer4"));
        assert!(fnmatch("layer[!0-3]", "layer4") && !fnmatch("layer[!0-3]", "layer1"));
        assert!(fnmatch("a[]]b", "a]b"));
        assert!(fnmatch("a[b", "a[b"), "an unclosed [ is literal");
        assert!(fnmatch("*a*b*", "xxaxxbxx") && !fnmatch("*a*b", "xxbxxa"));
        assert!(fnmatch("", "") && !fnmatch("", "a") && fnmatch("**", ""));
        assert!(!fnmatch("lm_head", "lm_head.x"));
    }

    #[test]
    fn plain_names_cover_dotted_children_only() {
        assert!(covers("backbone.embeddings", "backbone.embeddings"));
        assert!(covers(
            "backbone.layers.1.mixer.experts",
            "backbone.layers.1.mixer.experts.7.up_proj"
        ));
        assert!(!covers(
            "backbone.layers.1.mixer.experts",
            "backbone.layers.1.mixer.experts_x"
        ));
        assert!(!covers("backbone.layers.1", "backbone.layers.10.mixer"));
    }

    #[test]
    fn sentinel_is_stripped() {
        assert_eq!(
            strip_name_sentinel("lm_head.\u{0}backbone.pt_name_sentinel"),
            "lm_head"
        );
        assert_eq!(
            strip_name_sentinel("backbone.layers.0*\u{0}x"),
            "backbone.layers.0*"
        );
        assert_eq!(strip_name_sentinel("lm_head"), "lm_head");
        let hf = json!({
            "producer": {"name": "modelopt", "version": "0.47.0"},
            "quantization": {
                "quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": null,
                "exclude_modules": ["lm_head.\u{0}backbone.pt_name_sentinel", "backbone.layers.0*.\u{0}backbone.pt_name_sentinel"],
            }
        });
        let q = load(Some(&hf), &json!({})).unwrap().unwrap();
        assert_eq!(q.exclude, vec!["lm_head", "backbone.layers.0*"]);
        assert_eq!(q.format_of("lm_head"), None);
        assert_eq!(q.format_of("backbone.layers.0.mixer.in_proj"), None);
        let mixed = json!({"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {
            "backbone.layers.1.mixer.experts.\u{0}backbone.pt_name_sentinel": {"quant_algo": "NVFP4", "group_size": 16}
        }}});
        let q = load(Some(&mixed), &json!({})).unwrap().unwrap();
        assert_eq!(
            q.format_of("backbone.layers.1.mixer.experts.3.down_proj"),
            Some(QuantFormat::Nvfp4 { group_size: 16 })
        );
    }

    #[test]
    fn super_recipe() {
        let hf = fixture(&format!("{SUPER}.hf_quant_config.json"));
        let config = fixture(&format!("{SUPER}.json"));
        let nvfp4 = Some(QuantFormat::Nvfp4 { group_size: 16 });
        let fp8 = Some(QuantFormat::Fp8);
        for (hf, config) in [
            (Some(&hf), config.clone()),
            (Some(&hf), json!({})),
            (None, config.clone()),
        ] {
            let q = load(hf, &config).unwrap().unwrap();
            assert_eq!(q.default, None);
            assert_eq!(q.kv_cache, Some(KvCacheQuant::Fp8));
            assert_eq!(q.producer.as_deref(), Some("modelopt 0.47.0"));
            assert_eq!(q.layers.len(), 15);
            for (name, format) in &q.layers {
                assert_eq!(q.format_of(name), Some(*format), "{name}");
            }
            for layer in [1, 4, 7] {
                for e in [0, 5, 15] {
                    for proj in ["up_proj", "down_proj"] {
                        let m = format!("backbone.layers.{layer}.mixer.experts.{e}.{proj}");
                        assert_eq!(q.format_of(&m), nvfp4, "{m}");
                    }
                }
                for proj in ["up_proj", "down_proj"] {
                    let m = format!("backbone.layers.{layer}.mixer.shared_experts.{proj}");
                    assert_eq!(q.format_of(&m), fp8, "{m}");
                }
                for bf16 in ["gate", "fc1_latent_proj", "fc2_latent_proj"] {
                    assert_eq!(
                        q.format_of(&format!("backbone.layers.{layer}.mixer.{bf16}")),
                        None
                    );
                }
            }
            for layer in [0, 2, 5] {
                for proj in ["in_proj", "out_proj"] {
                    let m = format!("backbone.layers.{layer}.mixer.{proj}");
                    assert_eq!(q.format_of(&m), fp8, "{m}");
                }
            }
            for m in [
                "backbone.layers.3.mixer.q_proj",
                "backbone.layers.3.mixer.o_proj",
                "backbone.layers.6.mixer.up_proj",
                "backbone.layers.1.mixer.experts_extra",
                "lm_head",
                "backbone.embeddings",
            ] {
                assert_eq!(q.format_of(m), None, "{m}");
            }
            assert_eq!(
                q.format_of("backbone.layers.1.mixer.experts.5.down_proj"),
                nvfp4
            );
        }
    }

    #[test]
    fn conservative_preset() {
        let hf = fixture(&format!("{CONSERVATIVE}.hf_quant_config.json"));
        let config = fixture(&format!("{CONSERVATIVE}.json"));
        let nvfp4 = Some(QuantFormat::Nvfp4 { group_size: 16 });
        for (hf, config) in [
            (Some(&hf), config.clone()),
            (None, config.clone()),
            (Some(&hf), json!({})),
        ] {
            let q = load(hf, &config).unwrap().unwrap();
            assert_eq!(q.default, nvfp4);
            assert_eq!(q.kv_cache, None);
            assert!(q.layers.is_empty());
            for layer in [1, 4, 7] {
                for e in [0, 9, 15] {
                    for proj in ["up_proj", "down_proj"] {
                        let m = format!("backbone.layers.{layer}.mixer.experts.{e}.{proj}");
                        assert_eq!(q.format_of(&m), nvfp4, "{m}");
                    }
                }
                for proj in ["up_proj", "down_proj"] {
                    let m = format!("backbone.layers.{layer}.mixer.shared_experts.{proj}");
                    assert_eq!(q.format_of(&m), nvfp4, "{m}");
                }
                for bf16 in ["gate", "fc1_latent_proj", "fc2_latent_proj"] {
                    assert_eq!(
                        q.format_of(&format!("backbone.layers.{layer}.mixer.{bf16}")),
                        None
                    );
                }
            }
            assert_eq!(q.format_of("backbone.layers.6.mixer.up_proj"), nvfp4);
            assert_eq!(q.format_of("backbone.layers.6.mixer.down_proj"), nvfp4);
            for m in [
                "lm_head",
                "backbone.embeddings",
                "backbone.layers.0.mixer.in_proj",
                "backbone.layers.2.mixer.out_proj",
                "backbone.layers.3.mixer.q_proj",
                "backbone.layers.3.mixer.k_proj",
                "backbone.layers.5.mixer.in_proj",
            ] {
                assert_eq!(q.format_of(m), None, "{m}");
            }
        }
    }

    #[test]
    fn unquantized_checkpoint() {
        let config = fixture("nemotronh_tiny_grouped.json");
        assert_eq!(load(None, &config).unwrap(), None);
        assert_eq!(
            load(None, &json!({"quantization_config": null})).unwrap(),
            None
        );
    }

    #[test]
    fn unknown_algorithms_are_named() {
        for algo in ["W4A16_AWQ", "INT8_SQ", "NVFP4_AWQ"] {
            let hf = json!({"quantization": {"quant_algo": algo}});
            let e = err(load(Some(&hf), &json!({})));
            assert!(e.starts_with("quantization: "), "{e}");
            assert!(
                e.contains(algo) && e.contains("hf_quant_config.json"),
                "{e}"
            );
            assert!(
                e.contains("NVFP4") && e.contains("FP8") && e.contains("MIXED_PRECISION"),
                "{e}"
            );
            let cfg =
                json!({"quantization_config": {"quant_method": "modelopt", "quant_algo": algo}});
            let e = err(load(None, &cfg));
            assert!(e.contains(algo) && e.contains("config.json"), "{e}");
        }
        let hf = json!({"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {
            "backbone.layers.0.mixer.in_proj": {"quant_algo": "W4A8_AWQ"}}}});
        let e = err(load(Some(&hf), &json!({})));
        assert!(
            e.contains("W4A8_AWQ") && e.contains("backbone.layers.0.mixer.in_proj"),
            "{e}"
        );
        // Lower case is accepted.
        let hf = json!({"quantization": {"quant_algo": "fp8", "kv_cache_quant_algo": "fp8"}});
        let q = load(Some(&hf), &json!({})).unwrap().unwrap();
        assert_eq!(
            (q.default, q.kv_cache),
            (Some(QuantFormat::Fp8), Some(KvCacheQuant::Fp8))
        );
    }

    #[test]
    fn unknown_methods_are_named() {
        for method in ["compressed-tensors", "gptq", "awq", "fp8"] {
            let cfg = json!({"quantization_config": {"quant_method": method, "bits": 4}});
            let e = err(load(None, &cfg));
            assert!(e.starts_with("quantization: ") && e.contains(method), "{e}");
            assert!(e.contains("modelopt") && e.contains("config.json"), "{e}");
        }
        let e = err(load(
            None,
            &json!({"quantization_config": {"quant_algo": "NVFP4"}}),
        ));
        assert!(e.contains("quant_method"), "{e}");
    }

    #[test]
    fn nvfp4_group_size_must_be_16() {
        let hf = json!({"quantization": {"quant_algo": "NVFP4", "group_size": 32}});
        let e = err(load(Some(&hf), &json!({})));
        assert!(e.contains("group_size 32") && e.contains("16"), "{e}");
        let mut config = fixture(&format!("{CONSERVATIVE}.json"));
        config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] =
            json!(32);
        let e = err(load(None, &config));
        assert!(
            e.contains("group_size 32") && e.contains("config.json"),
            "{e}"
        );
        let mut hf = fixture(&format!("{SUPER}.hf_quant_config.json"));
        hf["quantization"]["quantized_layers"]["backbone.layers.4.mixer.experts"]["group_size"] =
            json!(32);
        let e = err(load(Some(&hf), &json!({})));
        assert!(
            e.contains("group_size 32") && e.contains("backbone.layers.4.mixer.experts"),
            "{e}"
        );
    }

    #[test]
    fn kv_cache_algorithms() {
        let hf = json!({"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "NVFP4"}});
        let e = err(load(Some(&hf), &json!({})));
        assert!(
            e.contains("kv_cache_quant_algo") && e.contains("NVFP4"),
            "{e}"
        );
        let cfg = json!({"quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8",
            "kv_cache_scheme": {"num_bits": 4, "type": "float"}}});
        let e = err(load(None, &cfg));
        assert!(e.contains("kv_cache_scheme"), "{e}");
        // A KV-cache-only export quantizes no Linear.
        let hf = json!({"quantization": {"quant_algo": null, "kv_cache_quant_algo": "FP8"}});
        let q = load(Some(&hf), &json!({})).unwrap().unwrap();
        assert_eq!((q.default, q.kv_cache), (None, Some(KvCacheQuant::Fp8)));
        assert_eq!(q.format_of("backbone.layers.0.mixer.in_proj"), None);
    }

    #[test]
    fn files_must_agree() {
        let hf = fixture(&format!("{CONSERVATIVE}.hf_quant_config.json"));
        let super_config = fixture(&format!("{SUPER}.json"));
        let e = err(load(Some(&hf), &super_config));
        assert!(
            e.contains("hf_quant_config.json") && e.contains("config.json"),
            "{e}"
        );
        assert!(
            e.contains("algorithm") && e.contains("MIXED_PRECISION"),
            "{e}"
        );

        let mut config = fixture(&format!("{CONSERVATIVE}.json"));
        config["quantization_config"]["ignore"]
            .as_array_mut()
            .unwrap()
            .pop();
        let e = err(load(Some(&hf), &config));
        assert!(e.contains("backbone.layers.7.mixer.gate"), "{e}");

        let super_hf = fixture(&format!("{SUPER}.hf_quant_config.json"));
        let mut config = super_config.clone();
        config["quantization_config"]["kv_cache_scheme"] = Value::Null;
        let e = err(load(Some(&super_hf), &config));
        assert!(e.contains("KV cache"), "{e}");

        let mut config = super_config.clone();
        config["quantization_config"]["quantized_layers"]["backbone.layers.0.mixer.in_proj"] =
            json!({"quant_algo": "NVFP4", "group_size": 16});
        let e = err(load(Some(&super_hf), &config));
        assert!(
            e.contains("backbone.layers.0.mixer.in_proj") && e.contains("FP8"),
            "{e}"
        );
    }

    #[test]
    fn mixed_precision_from_config_groups_alone() {
        let mut config = fixture(&format!("{SUPER}.json"));
        let expected = load(None, &config).unwrap().unwrap();
        config["quantization_config"]
            .as_object_mut()
            .unwrap()
            .remove("quantized_layers");
        let q = load(None, &config).unwrap().unwrap();
        let sorted = |q: &QuantConfig| {
            let mut l = q.layers.clone();
            l.sort_by(|a, b| a.0.cmp(&b.0));
            l
        };
        assert_eq!(sorted(&q), sorted(&expected));
    }

    #[test]
    fn malformed_files() {
        let e = err(load(Some(&json!({"producer": {}})), &json!({})));
        assert!(e.contains("\"quantization\""), "{e}");
        let e = err(load(
            Some(&json!({"quantization": {"quant_algo": "NVFP4", "exclude_modules": "lm_head"}})),
            &json!({}),
        ));
        assert!(e.contains("exclude_modules must be a list"), "{e}");
        let e = err(load(
            Some(&json!({"quantization": {"quant_algo": "MIXED_PRECISION"}})),
            &json!({}),
        ));
        assert!(e.contains("quantized_layers"), "{e}");
    }

    #[test]
    fn display() {
        assert_eq!(
            QuantFormat::Nvfp4 { group_size: 16 }.to_string(),
            "NVFP4 (group size 16)"
        );
        assert_eq!(QuantFormat::Fp8.to_string(), "FP8");
        assert_eq!(KvCacheQuant::Fp8.to_string(), "FP8");
    }
}
