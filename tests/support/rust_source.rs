//! A small lexer for Rust source, for the tests that read `src/` as text: the layering check
//! (`tests/layering.rs`) and the OpenAPI completeness check (`tests/api/openapi.rs`).
//!
//! It drops comments (line, block, nested, doc) and turns every string, char and number literal
//! into one token, so nothing written inside them is mistaken for code — `"tower_http=info"` in a
//! log filter is not a use of `tower_http`, nor is `crate::http` in a doc comment. It is not a
//! parser: the checks built on it look at short token patterns (paths, `.route("…", …)` calls).

/// One token of Rust source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An identifier or keyword, without a raw identifier's `r#`.
    Ident(String),
    /// `::`
    PathSep,
    /// Any other punctuation character, one at a time.
    Punct(char),
    /// A string literal (plain, raw, byte or C string): the text between its quotes, escapes as
    /// written.
    Str(String),
    /// A char, byte or number literal, or a lifetime.
    Literal,
}

/// A token and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexed {
    pub token: Token,
    pub line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The tokens of `source`, comments left out.
pub fn lex(source: &str) -> Vec<Lexed> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        let mut push = |token: Token| {
            out.push(Lexed {
                token,
                line: start_line,
            })
        };
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some((hashes, quote)) = raw_string_start(&chars, i) {
            // r"…", r#"…"#, br"…", cr#"…"#: ends at a quote followed by as many hashes.
            let mut j = quote + 1;
            let content_start = j;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    break;
                }
                if chars[j] == '\n' {
                    line += 1;
                }
                j += 1;
            }
            let content: String = chars[content_start..j.min(chars.len())].iter().collect();
            push(Token::Str(content));
            i = j + 1 + hashes;
        } else if c == '"' || ((c == 'b' || c == 'c') && at(i + 1) == '"') {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            let content_start = j;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                }
                if at(j) == '\n' {
                    line += 1;
                }
                j += 1;
            }
            let content: String = chars[content_start..j.min(chars.len())].iter().collect();
            push(Token::Str(content));
            i = j + 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let q = if c == '\'' { i } else { i + 1 };
            if at(q + 1) == '\\' {
                // An escaped char: '\n', '\'', '\u{1F600}'.
                let mut j = q + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if at(q + 2) == '\'' {
                i = q + 3; // 'x'
            } else {
                // A lifetime or label: 'a, 'static.
                let mut j = q + 1;
                while j < chars.len() && is_ident_char(chars[j]) {
                    j += 1;
                }
                i = j;
            }
            push(Token::Literal);
        } else if c == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
            let mut j = i + 2;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            push(Token::Ident(chars[i + 2..j].iter().collect()));
            i = j;
        } else if is_ident_start(c) {
            let mut j = i;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            push(Token::Ident(chars[i..j].iter().collect()));
            i = j;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && is_ident_char(chars[j]) {
                j += 1;
            }
            push(Token::Literal);
            i = j;
        } else if c == ':' && at(i + 1) == ':' {
            push(Token::PathSep);
            i += 2;
        } else {
            push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// At a raw string literal (`r"`, `r#"`, `br"`, `cr#"`, …): the number of hashes and the index
/// of its opening quote.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let r = match chars.get(i)? {
        'r' => i,
        'b' | 'c' if chars.get(i + 1) == Some(&'r') => i + 1,
        _ => return None,
    };
    if i > 0 && is_ident_char(chars[i - 1]) {
        return None; // the end of an identifier such as `bar`
    }
    let mut j = r + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((j - r - 1, j))
}

/// Every `.rs` file under `dir`, sorted, with its path relative to `base` (`/`-separated).
pub fn rust_files(base: &std::path::Path, dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![base.join(dir)];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read a source directory") {
                pending.push(entry.expect("a directory entry").path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(base)
                .expect("under the base")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path).expect("read a source file");
            files.push((relative, text));
        }
    }
    files.sort();
    files
}
