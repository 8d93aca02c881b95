//! The `FROM` lines of a Dockerfile: which base images a build needs, and the same
//! Dockerfile with each base pointed at a local OCI layout, so buildah never asks a
//! registry for anything.
//!
//! Only `FROM` is read; every other line is passed on as written. Global `ARG`s (those
//! before the first `FROM`) and the build args fill `$NAME`, `${NAME}` and
//! `${NAME:-default}` in a `FROM`; a variable neither sets is refused.

use std::collections::BTreeMap;

/// What one `FROM` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: nothing to fetch.
    Scratch,
    /// An earlier stage of the same Dockerfile.
    Stage(String),
    /// `<project>/<repo>[:tag|@digest]` in the hosted registry.
    Hosted { repository: String, reference: String },
    /// A fully qualified reference (registry host first), through the layer cache.
    External(String),
}

/// One `FROM` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// Index of the physical line.
    pub line: usize,
    /// `--platform=…` and other flags, as written.
    pub flags: Vec<String>,
    /// The image as written, variables filled in.
    pub image: String,
    pub alias: Option<String>,
    pub base: Base,
}

/// A Dockerfile's lines and its `FROM`s.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    lines: Vec<String>,
    pub froms: Vec<From>,
}

/// Largest Dockerfile read, in bytes.
pub const MAX_DOCKERFILE_BYTES: usize = 1 << 20;

impl Dockerfile {
    /// Reads the `FROM`s of `text` with `args` (the build args) for its variables.
    pub fn parse(text: &str, args: &BTreeMap<String, String>) -> Result<Dockerfile, String> {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let escape = escape_char(&lines);
        let mut globals: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut froms: Vec<From> = Vec::new();
        let mut continued = false;
        for (i, raw) in lines.iter().enumerate() {
            let line = raw.trim();
            let was_continued = continued;
            continued = line.ends_with(escape) && !line.starts_with('#');
            if was_continued || line.is_empty() || line.starts_with('#') {
                if was_continued && (line.is_empty() || line.starts_with('#')) {
                    continued = true;
                }
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if word.eq_ignore_ascii_case("ARG") && froms.is_empty() {
                for decl in rest.split_whitespace() {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, d)) => (n, Some(unquote(d).to_string())),
                        None => (decl, None),
                    };
                    globals.insert(name.to_string(), default);
                }
                continue;
            }
            if !word.eq_ignore_ascii_case("FROM") {
                continue;
            }
            if continued {
                return Err(format!("Dockerfile line {}: a FROM over several lines is not supported", i + 1));
            }
            let mut words: Vec<&str> = rest.split_whitespace().collect();
            let flags: Vec<String> = words.iter().take_while(|w| w.starts_with("--")).map(|w| w.to_string()).collect();
            words.drain(..flags.len());
            let (image, alias) = match words.as_slice() {
                [image] => (*image, None),
                [image, kw, alias] if kw.eq_ignore_ascii_case("AS") => (*image, Some(alias.to_string())),
                _ => return Err(format!("Dockerfile line {}: FROM takes an image and an optional AS name", i + 1)),
            };
            let image = substitute(image, &globals, args).map_err(|m| format!("Dockerfile line {}: {m}", i + 1))?;
            let base = classify(&image, &froms)?;
            froms.push(From { line: i, flags, image, alias, base });
        }
        if froms.is_empty() {
            return Err("the Dockerfile has no FROM".into());
        }
        Ok(Dockerfile { lines, froms })
    }

    /// The Dockerfile with the `FROM` on line `i` naming `image` instead, for each
    /// `(i, image)` given.
    pub fn rewrite(&self, images: &BTreeMap<usize, String>) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            match (images.get(&i), self.froms.iter().find(|f| f.line == i)) {
                (Some(image), Some(f)) => {
                    out.push_str("FROM ");
                    for flag in &f.flags {
                        out.push_str(flag);
                        out.push(' ');
                    }
                    out.push_str(image);
                    if let Some(a) = &f.alias {
                        out.push_str(" AS ");
                        out.push_str(a);
                    }
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

/// The escape character (`# escape=` parser directive), `\` by default.
fn escape_char(lines: &[String]) -> char {
    for l in lines {
        let l = l.trim();
        let Some(directive) = l.strip_prefix('#') else { break };
        if let Some((k, v)) = directive.split_once('=') {
            if k.trim().eq_ignore_ascii_case("escape") && v.trim() == "`" {
                return '`';
            }
        }
    }
    '\\'
}

fn unquote(s: &str) -> &str {
    let s = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s);
    s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).unwrap_or(s)
}

/// Fills `$NAME`, `${NAME}` and `${NAME:-default}` from the build args (for
/// declared global `ARG`s) or the `ARG` defaults.
fn substitute(
    image: &str,
    globals: &BTreeMap<String, Option<String>>,
    args: &BTreeMap<String, String>,
) -> Result<String, String> {
    let value = |name: &str, default: Option<&str>| -> Result<String, String> {
        let declared = globals.get(name);
        let v = match declared {
            Some(d) => args.get(name).cloned().or_else(|| d.clone()),
            None => None,
        };
        match (v, default) {
            (Some(v), _) if !v.is_empty() => Ok(v),
            (_, Some(d)) => Ok(d.to_string()),
            (Some(v), None) => Ok(v),
            (None, None) if declared.is_some() => {
                Err(format!("FROM uses ${name}, which neither a build arg nor its ARG default sets"))
            }
            (None, None) => Err(format!("FROM uses ${name}, which no ARG before the first FROM declares")),
        }
    };
    let mut out = String::new();
    let mut rest = image;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| format!("FROM {image}: an unclosed ${{"))?;
            let inner = &braced[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_name(name) {
                return Err(format!("FROM {image}: ${{{inner}}} is not supported"));
            }
            out.push_str(&value(name, default)?);
            rest = &braced[end + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if len == 0 {
                return Err(format!("FROM {image}: a $ that names no variable"));
            }
            out.push_str(&value(&after[..len], None)?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What `image` is, given the stages before it.
fn classify(image: &str, earlier: &[From]) -> Result<Base, String> {
    if image.eq_ignore_ascii_case("scratch") {
        return Ok(Base::Scratch);
    }
    if let Some(stage) = earlier.iter().filter_map(|f| f.alias.as_ref()).find(|a| a.eq_ignore_ascii_case(image)) {
        return Ok(Base::Stage(stage.clone()));
    }
    let first = image.split('/').next().unwrap_or_default();
    if image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        return Ok(Base::External(image.to_string()));
    }
    let (repository, reference) = match image.split_once('@') {
        Some((r, d)) => (r.to_string(), d.to_string()),
        None => match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ => (image.to_string(), "latest".to_string()),
        },
    };
    if !crate::registry::names::is_repository(&repository) {
        return Err(format!(
            "FROM {image}: name a repository of this project's registry (<project>/<name>:<tag>) or a fully \
             qualified image (its registry first, e.g. docker.io/library/busybox:1.36)"
        ));
    }
    Ok(Base::Hosted { repository, reference })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dockerfile, String> {
        Dockerfile::parse(text, &BTreeMap::new())
    }

    #[test]
    fn froms_are_classified() {
        let d = parse(
            "# syntax comment\nFROM alpha/base:v1 AS build\nRUN make \\\n  FROM not/this\nFROM scratch\nFROM build\n\
             FROM docker.io/library/busybox:1.36\nFROM localhost:5000/x/y@sha256:abc\nFROM alpha/web\n",
        )
        .unwrap();
        let bases: Vec<&Base> = d.froms.iter().map(|f| &f.base).collect();
        assert_eq!(
            bases,
            vec![
                &Base::Hosted { repository: "alpha/base".into(), reference: "v1".into() },
                &Base::Scratch,
                &Base::Stage("build".into()),
                &Base::External("docker.io/library/busybox:1.36".into()),
                &Base::External("localhost:5000/x/y@sha256:abc".into()),
                &Base::Hosted { repository: "alpha/web".into(), reference: "latest".into() },
            ]
        );
        assert_eq!(d.froms[0].alias.as_deref(), Some("build"));
    }

    #[test]
    fn a_short_name_is_refused_with_what_to_write() {
        let e = parse("FROM busybox\n").unwrap_err();
        assert!(e.contains("fully qualified") && e.contains("<project>/<name>"), "{e}");
        assert!(parse("RUN true\n").unwrap_err().contains("no FROM"));
        assert!(parse("FROM a/b c\n").unwrap_err().contains("AS name"));
    }

    #[test]
    fn variables_come_from_build_args_and_arg_defaults() {
        let text = "ARG BASE=alpha/base\nARG TAG\nFROM ${BASE}:${TAG:-v2}\nFROM $BASE:x\n";
        let d = parse(text).unwrap();
        assert_eq!(d.froms[0].image, "alpha/base:v2");
        assert_eq!(d.froms[1].image, "alpha/base:x");
        let args = BTreeMap::from([("TAG".to_string(), "v3".to_string()), ("BASE".to_string(), "alpha/o".into())]);
        let d = Dockerfile::parse(text, &args).unwrap();
        assert_eq!(d.froms[0].image, "alpha/o:v3");
        let e = parse("ARG TAG\nFROM alpha/base:$TAG\n").unwrap_err();
        assert!(e.contains("neither a build arg"), "{e}");
        // A build arg alone does not make a variable: the ARG must declare it.
        let args = BTreeMap::from([("X".to_string(), "alpha/base".to_string())]);
        let e = Dockerfile::parse("FROM $X\n", &args).unwrap_err();
        assert!(e.contains("no ARG"), "{e}");
    }

    #[test]
    fn rewriting_touches_only_the_froms_given() {
        let text =
            "FROM --platform=linux/amd64 alpha/base:v1 AS b\nRUN echo \\\n  hi\nFROM scratch\nCOPY --from=b /x /x\n";
        let d = parse(text).unwrap();
        let out = d.rewrite(&BTreeMap::from([(0, "oci:bases/abc:base".to_string())]));
        assert_eq!(
            out,
            "FROM --platform=linux/amd64 oci:bases/abc:base AS b\nRUN echo \\\n  hi\nFROM scratch\nCOPY --from=b /x /x\n"
        );
    }

    #[test]
    fn a_from_split_over_lines_is_refused() {
        assert!(parse("FROM \\\n alpha/base\n").unwrap_err().contains("several lines"));
    }
}
