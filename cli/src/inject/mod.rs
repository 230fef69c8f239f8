//! `weftctl inject`: the injector's mutation, offline, over a multi-document YAML stream.
//!
//! Each document is one of:
//! - a workload (`v1` Pod; `apps/v1` Deployment, StatefulSet, DaemonSet, ReplicaSet;
//!   `batch/v1` Job, CronJob), or a `v1` List of objects: its pod template goes through
//!   [`weft_injector::inject_pod_spec`] — the webhook's own function — as if its namespace
//!   were labelled `weft.dev/inject=enabled`; only the template's `weft.dev/inject: disabled`
//!   (annotation, or label — the webhook's objectSelector never sends such a pod) keeps it
//!   out. An injected document is written re-serialized (see below);
//! - anything else, or a workload the mutation leaves alone (opted out, already injected,
//!   hostNetwork): written back byte for byte.
//!
//! A re-serialized document keeps its marker line, the comments and blank lines before and
//! after it, and its keys in their order (added keys follow); comments inside it and the
//! quoting and layout of its scalars are not kept — the content is the same. Documents stay
//! in their order with their separators.
//!
//! Errors (a document that isn't YAML, a template that doesn't fit the Kubernetes types, an
//! invalid `weft.dev/*` annotation) name the document (1-based, as YAML counts them) and its
//! line, and nothing is written to stdout, so `weftctl inject | kubectl apply -f -` never
//! applies half a file. A line per workload on stderr says what was done.

mod args;
mod documents;
mod workload;

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use serde_yaml::Value;
use weft_injector::InjectConfig;

pub use args::InjectArgs;
use documents::Document;
use workload::Outcome;

/// Reads `file` (`-`: stdin), writes the injected stream to stdout and a report to stderr.
pub fn run(file: &Path, args: &InjectArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let (source, text) = if file.as_os_str() == "-" {
        ("stdin".to_owned(), read_stdin()?)
    } else {
        (
            file.display().to_string(),
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        )
    };
    let (output, report) =
        inject_stream(&text, &config).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(output.as_bytes())?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    for line in report {
        writeln!(stderr, "{line}")?;
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin")?;
    Ok(text)
}

/// The injected stream and one report line per workload, or the first error (naming the
/// document).
pub fn inject_stream(text: &str, config: &InjectConfig) -> anyhow::Result<(String, Vec<String>)> {
    let mut output = String::with_capacity(text.len() * 2);
    let mut report = Vec::new();
    let mut index = 0;
    for document in documents::split(text) {
        if document.counts {
            index += 1;
        }
        let at = || format!("document {index} (line {})", document.line);
        let rewritten = inject_document(&document, config, &mut report)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        match rewritten {
            Some(text) => output.push_str(&text),
            None => {
                output.push_str(document.header);
                output.push_str(document.body);
            }
        }
    }
    Ok((output, report))
}

/// The document's new text, or `None` to keep it as it was.
fn inject_document(
    document: &Document<'_>,
    config: &InjectConfig,
    report: &mut Vec<String>,
) -> anyhow::Result<Option<String>> {
    let yaml = document.yaml();
    let mut value: Value = match serde_yaml::from_str(&yaml) {
        Ok(value) => value,
        Err(e) => bail!(
            "invalid YAML: {}",
            shift_lines(&e.to_string(), document.line - 1)
        ),
    };
    // `<<: *anchor` merges, as kubectl applies them. A merge that doesn't apply is left as
    // it is: harmless in a document passed through, and reported by the types in a workload.
    let _ = value.apply_merge();
    let changed = if value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("apiVersion").and_then(Value::as_str) == Some("v1")
    {
        let mut changed = false;
        if let Some(items) = value.get_mut("items").and_then(Value::as_sequence_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(new) = inject_object(item, config, report)
                    .map_err(|e| anyhow::anyhow!("items[{i}]: {e}"))?
                {
                    *item = new;
                    changed = true;
                }
            }
        }
        changed.then_some(value)
    } else {
        inject_object(&value, config, report).map_err(|e| anyhow::anyhow!(e))?
    };
    let Some(value) = changed else {
        return Ok(None);
    };
    let serialized = serde_yaml::to_string(&value).context("serializing the injected object")?;
    let (leading, trailing) = documents::trivia(document.body);
    let header = if document.header_has_content() {
        // The content moved off the marker line; keep the marker itself.
        "---\n".to_owned()
    } else {
        let mut header = document.header.to_owned();
        if !header.is_empty() && !header.ends_with('\n') {
            header.push('\n');
        }
        header
    };
    // With content on the marker line, the body's leading trivia belongs inside the object.
    let leading = if document.header_has_content() {
        ""
    } else {
        leading
    };
    let mut text = format!("{header}{leading}{serialized}");
    if !trailing.is_empty() {
        text.push_str(trailing);
    } else if !format!("{}{}", document.header, document.body).ends_with('\n') {
        // Like the input: no newline at the very end.
        text.pop();
    }
    Ok(Some(text))
}

/// A parser message with its `line N` numbers (counted in the document) made lines of the
/// whole input.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

fn inject_object(
    object: &Value,
    config: &InjectConfig,
    report: &mut Vec<String>,
) -> Result<Option<Value>, String> {
    Ok(match workload::inject(object, config)? {
        Outcome::NotAWorkload => None,
        Outcome::Skipped { name, reason } => {
            report.push(format!("{name} skipped: {reason}"));
            None
        }
        Outcome::Injected { name, object } => {
            report.push(format!("{name} injected"));
            Some(object)
        }
    })
}
