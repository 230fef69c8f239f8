//! A YAML stream cut into its documents without parsing it, so that a document `inject`
//! leaves alone is written back byte for byte: separators (`---`, `--- # comment`), comments
//! and blank lines included.
//!
//! YAML ends a document at a line that starts with `---` followed by a space, a tab or the
//! end of the line (a document marker can't appear inside a scalar, so a line scan finds
//! them all). The text before the first marker is a document only if it holds more than
//! comments and blank lines, like a YAML parser counts them.

/// One document: its marker line (empty for text before the first marker) and the text up
/// to the next marker. `header` + `body` of every document, in order, is the whole input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// `---` and whatever follows it on that line, with the line's end; empty for the text
    /// before the first marker.
    pub header: &'a str,
    /// Everything up to the next marker line.
    pub body: &'a str,
    /// 1-based line of the header (or of the body's first line when there is no header).
    pub line: usize,
    /// Whether YAML counts this as a document (a leading segment of only comments isn't).
    pub counts: bool,
}

impl<'a> Document<'a> {
    /// The YAML text of the document: content after `---` on the marker line, then the
    /// body. (`--- {kind: Pod}` is a document whose content starts on the marker line.)
    pub fn yaml(&self) -> String {
        let inline = self.header.strip_prefix("---").unwrap_or("");
        format!("{inline}{}", self.body)
    }

    /// Whether the marker line carries content besides a comment (`--- {a: 1}`, `--- !!map`).
    pub fn header_has_content(&self) -> bool {
        let rest = self.header.strip_prefix("---").unwrap_or("").trim();
        !rest.is_empty() && !rest.starts_with('#')
    }
}

/// Cuts `text` into documents; concatenating every `header` and `body` gives `text` back.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    // (start of header, end of header = start of body, line of header)
    let mut current: (usize, usize, usize) = (0, 0, 1);
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line) {
            let (start, body_start, line_no) = current;
            push(&mut documents, text, start, body_start, offset, line_no);
            current = (offset, offset + line.len(), index + 1);
        }
        offset += line.len();
    }
    let (start, body_start, line_no) = current;
    push(&mut documents, text, start, body_start, text.len(), line_no);
    documents
}

fn push<'a>(
    documents: &mut Vec<Document<'a>>,
    text: &'a str,
    start: usize,
    body_start: usize,
    end: usize,
    line: usize,
) {
    let header = &text[start..body_start];
    let body = &text[body_start..end];
    if header.is_empty() && body.is_empty() {
        return;
    }
    let counts = !header.is_empty() || has_content(body);
    documents.push(Document {
        header,
        body,
        line,
        counts,
    });
}

fn is_marker(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("---") else {
        return false;
    };
    rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r'])
}

/// Whether a line is blank or only a comment.
pub fn is_trivia(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

fn has_content(body: &str) -> bool {
    body.split_inclusive('\n').any(|line| !is_trivia(line))
}

/// The comment and blank lines at the start and at the end of a body (kept when the document
/// in between is rewritten). A body of only trivia is all `leading`.
pub fn trivia(body: &str) -> (&str, &str) {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let first = lines.iter().position(|l| !is_trivia(l));
    let Some(first) = first else {
        return (body, "");
    };
    let last = lines.iter().rposition(|l| !is_trivia(l)).unwrap_or(first);
    let leading: usize = lines[..first].iter().map(|l| l.len()).sum();
    let trailing: usize = lines[last + 1..].iter().map(|l| l.len()).sum();
    // Indented comment lines at the end may belong to a block scalar: keep only unindented
    // trailing trivia apart.
    let mut trailing_start = body.len() - trailing;
    for line in &lines[last + 1..] {
        if line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            trailing_start += line.len();
        } else {
            break;
        }
    }
    (&body[..leading], &body[trailing_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejoin(docs: &[Document<'_>]) -> String {
        docs.iter()
            .map(|d| format!("{}{}", d.header, d.body))
            .collect()
    }

    #[test]
    fn splitting_keeps_every_byte() {
        for text in [
            "",
            "a: 1\n",
            "---\na: 1\n",
            "# only a comment\n---\na: 1\n---\nb: 2",
            "a: 1\r\n--- # two\r\nb: 2\r\n",
            "---\n---\n",
            "a: |\n  ---x\n---x: 1\n",
        ] {
            assert_eq!(rejoin(&split(text)), text, "{text:?}");
        }
    }

    #[test]
    fn markers_and_counting() {
        let docs = split("# header comment\n---\na: 1\n--- # second\nb: 2\n---x: 3\n");
        assert_eq!(docs.len(), 3);
        assert!(!docs[0].counts, "a leading comment is not a document");
        assert_eq!(docs[1].header, "---\n");
        assert_eq!(docs[1].line, 2);
        assert_eq!(docs[2].header, "--- # second\n");
        assert_eq!(docs[2].body, "b: 2\n---x: 3\n", "`---x` is not a marker");
        assert_eq!(docs[2].line, 4);
        assert!(!docs[2].header_has_content());

        let inline = split("--- {kind: Pod}\n");
        assert!(inline[0].header_has_content());
        assert_eq!(inline[0].yaml(), " {kind: Pod}\n");
    }

    #[test]
    fn trivia_around_a_document() {
        let body = "# leading\n\nkind: Pod\nspec: |\n  x\n  # in the scalar\n# trailing\n\n";
        let (leading, trailing) = trivia(body);
        assert_eq!(leading, "# leading\n\n");
        assert_eq!(trailing, "# trailing\n\n");
        assert_eq!(trivia("# only\n"), ("# only\n", ""));
    }
}
