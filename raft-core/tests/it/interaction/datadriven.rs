//! A small data-driven test runner in the style of cockroachdb/datadriven
//! (which etcd-io/raft uses): a file is a sequence of commands, each followed
//! by `----` and the output it is expected to produce, ended by a blank line.
//! Lines starting with `#` and blank lines between commands are comments.
//!
//! With `RAFT_REWRITE=1` in the environment the runner writes the actual
//! outputs back into the file instead of comparing, so a human reviews the
//! new expectations in `git diff`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One command of a file, parsed.
#[derive(Debug)]
pub struct Command {
    /// The first word.
    pub name: String,
    /// Arguments without `=`, in order, quotes removed.
    positional: Vec<String>,
    /// `key=value` arguments not yet consumed by the handler.
    keyed: BTreeMap<String, String>,
    /// How many positional arguments the handler consumed.
    positional_taken: usize,
}

impl Command {
    /// Parses one command line.
    pub fn parse(text: &str) -> Result<Command, String> {
        let tokens = tokenize(text)?;
        let mut tokens = tokens.into_iter();
        let name = tokens.next().ok_or("empty command")?;
        let mut positional = Vec::new();
        let mut keyed = BTreeMap::new();
        for token in tokens {
            match split_key(&token) {
                Some((key, value)) => {
                    if keyed.insert(key.to_string(), unquote(value)).is_some() {
                        return Err(format!("argument {key} given twice"));
                    }
                }
                None => positional.push(unquote(&token)),
            }
        }
        Ok(Command { name, positional, keyed, positional_taken: 0 })
    }

    /// The positional arguments from `from` on, all consumed.
    pub fn rest(&mut self, from: usize) -> Vec<String> {
        self.positional_taken = self.positional_taken.max(self.positional.len());
        self.positional.iter().skip(from).cloned().collect()
    }

    /// Positional argument `index`, required.
    pub fn arg(&mut self, index: usize) -> Result<String, String> {
        self.positional_taken = self.positional_taken.max(index + 1);
        self.positional.get(index).cloned().ok_or_else(|| format!("missing argument {}", index + 1))
    }

    /// Positional argument `index`, if present.
    pub fn opt_arg(&mut self, index: usize) -> Option<String> {
        self.positional_taken = self.positional_taken.max(index + 1);
        self.positional.get(index).cloned()
    }

    /// Positional argument `index` as a number.
    pub fn arg_u64(&mut self, index: usize) -> Result<u64, String> {
        let value = self.arg(index)?;
        parse_u64(&value)
    }

    /// Takes the `key=value` argument.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.keyed.remove(key)
    }

    /// Takes a numeric `key=value` argument.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>, String> {
        self.take(key).map(|v| parse_u64(&v).map_err(|e| format!("{key}: {e}"))).transpose()
    }

    /// Takes a boolean `key=true|false` argument.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, String> {
        match self.take(key).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(format!("{key}: expected true or false, got {other:?}")),
        }
    }

    /// Takes a list argument such as `voters=(1 2 3)`.
    pub fn take_list(&mut self, key: &str) -> Result<Option<Vec<u64>>, String> {
        self.take(key).map(|v| parse_list(&v).map_err(|e| format!("{key}: {e}"))).transpose()
    }

    /// Fails if the handler left arguments unused (most likely a typo).
    pub fn finish(&self) -> Result<(), String> {
        if let Some(key) = self.keyed.keys().next() {
            return Err(format!("unknown argument {key}="));
        }
        if self.positional.len() > self.positional_taken {
            return Err(format!("unexpected argument {:?}", self.positional[self.positional_taken]));
        }
        Ok(())
    }
}

pub fn parse_u64(value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| format!("expected a number, got {value:?}"))
}

/// Parses `(1 2 3)`, `(1,2,3)`, `()` or a bare `1`.
pub fn parse_list(value: &str) -> Result<Vec<u64>, String> {
    let inner = value.strip_prefix('(').and_then(|v| v.strip_suffix(')')).unwrap_or(value);
    inner.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(parse_u64).collect()
}

/// Splits a command line into words; parentheses and double quotes group.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                current.push(c);
            }
            ')' if !quoted => {
                depth = depth.checked_sub(1).ok_or("unbalanced )")?;
                current.push(c);
            }
            c if c.is_whitespace() && depth == 0 && !quoted => {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quoted || depth != 0 {
        return Err("unbalanced quotes or parentheses".into());
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    Ok(tokens)
}

/// `key=value` when the token starts with a plain key.
fn split_key(token: &str) -> Option<(&str, &str)> {
    let (key, value) = token.split_once('=')?;
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plain.then_some((key, value))
}

fn unquote(value: &str) -> String {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_string()
}

/// A piece of a test file: verbatim text, or a command and its expectation.
enum Block {
    Text(String),
    Command { line: usize, text: String, expected: Option<Vec<String>> },
}

fn parse_file(contents: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = contents.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('#') {
            blocks.push(Block::Text(line.to_string()));
            i += 1;
            continue;
        }
        let command_line = i + 1;
        i += 1;
        let expected = if lines.get(i) == Some(&"----") {
            i += 1;
            let mut expected = Vec::new();
            while i < lines.len() && !lines[i].is_empty() {
                expected.push(lines[i].to_string());
                i += 1;
            }
            // The blank line ending the block belongs to it.
            i += 1;
            Some(expected)
        } else if lines.get(i).is_none_or(|l| l.trim().is_empty()) {
            // A new command without an expectation yet (rewrite mode fills it in).
            i += 1;
            None
        } else {
            return Err(format!("line {}: expected ---- after the command", i + 1));
        };
        blocks.push(Block::Command { line: command_line, text: line.to_string(), expected });
    }
    Ok(blocks)
}

/// Runs every command of the file at `path` through `execute`, which returns
/// the command's output or a failure of the test itself (bad syntax, a broken
/// invariant). Panics on the first mismatch, with the file and line.
pub fn run_file(path: &Path, mut execute: impl FnMut(&mut Command) -> Result<String, String>) {
    let contents = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let blocks = parse_file(&contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rewrite = std::env::var("RAFT_REWRITE").is_ok_and(|v| v == "1");
    let mut rewritten = String::new();
    for block in &blocks {
        match block {
            Block::Text(text) => {
                rewritten.push_str(text);
                rewritten.push('\n');
            }
            Block::Command { line, text, expected } => {
                let location = format!("{}:{line}", path.display());
                let mut command =
                    Command::parse(text).unwrap_or_else(|e| panic!("{location}: `{text}`: {e}"));
                let output = execute(&mut command)
                    .and_then(|output| command.finish().map(|()| output))
                    .unwrap_or_else(|e| panic!("{location}: `{text}`: {e}"));
                let mut actual: Vec<String> = output.lines().map(str::to_string).collect();
                if actual.is_empty() {
                    actual.push("ok".to_string());
                }
                assert!(
                    actual.iter().all(|l| !l.trim().is_empty()),
                    "{location}: `{text}`: the output contains a blank line"
                );
                if !rewrite && expected.as_ref() != Some(&actual) {
                    panic!(
                        "{location}: `{text}`: output differs (run with RAFT_REWRITE=1 to accept it):\n{}",
                        diff(expected.as_deref().unwrap_or(&[]), &actual)
                    );
                }
                let _ = writeln!(rewritten, "{text}\n----");
                for l in &actual {
                    let _ = writeln!(rewritten, "{l}");
                }
                rewritten.push('\n');
            }
        }
    }
    if rewrite && rewritten != contents {
        std::fs::write(path, rewritten).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A line diff (longest common subsequence): `-` expected, `+` actual.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "  {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", actual[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn tokenizer_groups_lists_and_quotes() {
    let mut command = Command::parse(r#"add-nodes 3 voters=(1 2 3) data="a b" x"#).unwrap();
    assert_eq!(command.name, "add-nodes");
    assert_eq!(command.arg(0).unwrap(), "3");
    assert_eq!(command.take_list("voters").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(command.take("data").as_deref(), Some("a b"));
    assert_eq!(command.arg(1).unwrap(), "x");
    command.finish().unwrap();
}

#[test]
fn files_round_trip_through_the_parser() {
    let text = "# c\n\ncmd 1\n----\nout\n\nnew\n";
    let blocks = parse_file(text).unwrap();
    assert_eq!(blocks.len(), 4);
    assert!(matches!(&blocks[3], Block::Command { expected: None, .. }));
    assert_eq!(diff(&["a".into(), "b".into()], &["a".into(), "c".into()]), "  a\n- b\n+ c\n");
}
