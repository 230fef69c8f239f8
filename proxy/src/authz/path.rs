//! Path normalization before a policy sees a path. Policies match paths as written, and an
//! app resolves `/public/../admin` or `/%61dmin` to `/admin`: evaluating the raw path would
//! let such a request past a DENY on `/admin`. So the path is normalized as RFC 3986
//! prescribes — percent-encoded unreserved characters decoded (§6.2.2.2), hex digits of the
//! remaining escapes upper-cased (§6.2.2.1), dot segments removed (§5.2.4) — and the request
//! is forwarded with the normalized path, so the app gets exactly what was authorized (as
//! Istio's default `BASE` normalization does).
//!
//! Not normalized, as in `BASE`: `%2F` (an escaped `/` is data, not a separator), repeated
//! slashes and `;` parameters.

use std::borrow::Cow;

/// `path` normalized, borrowed when it already was. Paths that don't start with `/` (`*`,
/// the empty path) are left alone.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || !(path.contains('%') || has_dot_segment(path)) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let normalized = remove_dot_segments(&decoded);
    if normalized == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalized)
    }
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let byte = hi << 4 | lo;
                if is_unreserved(byte) {
                    out.push(char::from(byte));
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                    out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        // Not an escape: copy the character (whole, so multi-byte UTF-8 stays intact).
        let ch = path[i..].chars().next().unwrap_or('%');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("/./") {
            input = &input[input.len() - rest.len() - 1..];
        } else if input == "/." {
            input = "/";
        } else if let Some(rest) = input.strip_prefix("/../") {
            input = &input[input.len() - rest.len() - 1..];
            pop_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut output);
        } else {
            // Move "/segment" (up to the next slash) to the output.
            let end = input[1..].find('/').map_or(input.len(), |i| i + 1);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn pop_segment(output: &mut String) {
    let cut = output.rfind('/').unwrap_or(0);
    output.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_paths_are_borrowed() {
        for path in ["/", "/a/b", "/a/b/", "/a.b/..c/.d", "*", "", "/a%2Fb"] {
            assert!(matches!(normalize(path), Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn dot_segments_and_unreserved_escapes_are_resolved() {
        for (raw, normalized) in [
            ("/public/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%2E%2E/admin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%zz", "/a%zz"),
            ("/a%4", "/a%4"),
            ("/caf\u{e9}/../x", "/x"),
        ] {
            assert_eq!(normalize(raw), normalized, "{raw}");
        }
    }
}
