//! Validation and conversion from the Kubernetes resource types (`weft_api::crd`) to the
//! discovery wire types (`weft_api::proto::discovery::v1`).
//!
//! Each function checks a whole object and reports every problem it finds, each as a
//! [`FieldError`] naming the field by its path in the YAML (`spec.rules[0].from[1].principals[2]`),
//! so one `kubectl apply` round trip is enough to fix an object. A valid object converts to
//! exactly one wire value: list order is kept as written and nothing depends on hash order,
//! because the control plane hashes what it sends to derive view versions.
//!
//! The caller fills in the default namespace before converting; an object without a name or
//! namespace is still an error here.

mod authz;
mod duration;
mod route;
mod traffic;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use authz::authorization_policy;
pub use duration::parse_duration;
pub use route::http_route;
pub use traffic::traffic_policy;

/// One problem in one object: `field` is a path like `spec.rules[0].from[1].principals[2]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Collects the problems of one object.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// How many problems so far (to tell whether a part added any).
    pub(crate) fn count(&self) -> usize {
        self.0.len()
    }

    /// `value` if nothing was wrong, else every problem found.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// Parses an optional Gateway API duration at `field` into milliseconds.
    pub(crate) fn duration_ms(&mut self, field: &str, text: Option<&str>) -> Option<u64> {
        let text = text?;
        match parse_duration(text) {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(message) => {
                self.add(field, message);
                None
            }
        }
    }

    /// Compiles `pattern` with the `regex` crate (the proxy's engine), reporting a failure
    /// at `field`.
    pub(crate) fn regex(&mut self, field: &str, pattern: &str) {
        // The proxy's dialect: bytes, ASCII classes (no \p{..}); accepting more here would
        // pass a route the proxy then rejects.
        if let Err(e) = regex::bytes::RegexBuilder::new(pattern)
            .unicode(false)
            .build()
        {
            // The parser's message is several lines (the pattern, a caret, then
            // "error: ..."); the last line is the useful part.
            let text = e.to_string();
            let reason = text
                .lines()
                .last()
                .map(|l| l.strip_prefix("error: ").unwrap_or(l))
                .unwrap_or("");
            self.add(
                field,
                format!("invalid regular expression {pattern:?}: {reason}"),
            );
        }
    }
}

/// The object's namespace and name, both required.
pub(crate) fn namespace_and_name(meta: &ObjectMeta, errors: &mut Errors) -> (String, String) {
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.add("metadata.name", "required");
    }
    if namespace.is_empty() {
        errors.add("metadata.namespace", "required");
    }
    (namespace, name)
}

/// Checks that a reference names a core Service: `group` absent, `""` or `core`, `kind`
/// absent or `Service`.
pub(crate) fn service_ref(errors: &mut Errors, at: &str, group: Option<&str>, kind: Option<&str>) {
    if let Some(group) = group.filter(|g| !matches!(*g, "" | "core")) {
        let message = format!("unsupported group {group:?}: only \"\" (core) is supported");
        errors.add(format!("{at}.group"), message);
    }
    if let Some(kind) = kind.filter(|k| *k != "Service") {
        let message = format!("unsupported kind {kind:?}: only Service is supported");
        errors.add(format!("{at}.kind"), message);
    }
}

/// Test helpers shared by the modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::FieldError;

    /// Parses a resource from YAML (as written by a user).
    pub fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test YAML does not parse: {e}"))
    }

    /// The errors as `field: message` lines, for compact assertions.
    pub fn lines<T: std::fmt::Debug>(result: Result<T, Vec<FieldError>>) -> Vec<String> {
        match result {
            Ok(v) => panic!("expected errors, converted to {v:#?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_display_as_path_and_message() {
        let e = FieldError::new("spec.x.y", "must be positive");
        assert_eq!(e.to_string(), "spec.x.y: must be positive");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"field": "spec.x.y", "message": "must be positive"})
        );
    }

    #[test]
    fn metadata_needs_a_name_and_a_namespace() {
        let mut errors = Errors::default();
        let meta = ObjectMeta {
            name: Some(String::new()),
            ..Default::default()
        };
        namespace_and_name(&meta, &mut errors);
        assert_eq!(
            errors.finish(()).unwrap_err(),
            vec![
                FieldError::new("metadata.name", "required"),
                FieldError::new("metadata.namespace", "required"),
            ]
        );
    }

    #[test]
    fn regex_errors_keep_only_the_reason() {
        let mut errors = Errors::default();
        errors.regex("f", "a(b");
        errors.regex("g", "^a+$");
        assert_eq!(
            errors.finish(()).unwrap_err(),
            vec![FieldError::new(
                "f",
                "invalid regular expression \"a(b\": unclosed group"
            )]
        );
    }
}
