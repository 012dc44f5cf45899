//! The table of docs/errors.md, read by the tests that back its rows: [`expect`] checks a
//! command's failure against the row of an ID.

use super::crate_root;
use std::process::Output;

pub struct Row {
    pub id: String,
    pub exit: i32,
    pub message: String,
    pub test: String,
}

pub fn table() -> Vec<Row> {
    let path = crate_root().join("docs/errors.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        // | ID | Input | Exit | Message | Test |
        if cells.len() != 5
            || cells[0].is_empty()
            || !cells[0].chars().next().unwrap().is_ascii_uppercase()
        {
            continue;
        }
        let Ok(exit) = cells[2].parse::<i32>() else {
            continue;
        };
        let message = cells[3]
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("row {}: message not in backticks", cells[0]))
            .to_string();
        rows.push(Row {
            id: cells[0].to_string(),
            exit,
            message,
            test: cells[4].to_string(),
        });
    }
    assert!(
        rows.len() > 40,
        "docs/errors.md: only {} rows parsed",
        rows.len()
    );
    rows
}

/// The literal pieces of a documented message, `<placeholder>`s removed.
pub fn literal_pieces(message: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = message;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        pieces.push(rest[..start].to_string());
        rest = &rest[start + len + 1..];
    }
    pieces.push(rest.to_string());
    pieces
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect()
}

/// Asserts that `out` is the documented failure `id`: its exit status, exactly one
/// `error:` line (no panic), holding the message's literal pieces in order and each of
/// `names` (the file, line or field it must name).
pub fn expect(out: &Output, id: &str, names: &[&str]) {
    let rows = table();
    let row = rows
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} is not in docs/errors.md"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(row.exit),
        "{id}: exit status; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{id}: panicked:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{id}: want one error line:\n{stderr}");
    let line = errors[0];
    let mut at = 0;
    for piece in literal_pieces(&row.message) {
        match line[at..].find(&piece) {
            Some(i) => at += i + piece.len(),
            None => panic!(
                "{id}: {piece:?} (of `{}`) not found in order in:\n{line}",
                row.message
            ),
        }
    }
    for name in names {
        assert!(line.contains(name), "{id}: {name:?} not named in:\n{line}");
    }
}
