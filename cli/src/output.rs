//! Rendering results as aligned tables, key/value details or JSON on stdout.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Output format chosen with `-o/--output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts: arrays for lists, one object otherwise.
    Json,
    /// The same document as JSON, in YAML.
    Yaml,
}

/// Why output could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing to stdout: {0}")]
    Write(#[from] std::io::Error),
}

/// A value that is one row of a table.
pub trait Tabular {
    /// Upper-case column headers.
    const HEADERS: &'static [&'static str];
    /// The cells of this row; `now` is used for ages.
    fn row(&self, now: DateTime<Utc>) -> Vec<String>;
}

/// A value shown alone as `Key: value` lines.
pub trait Detail {
    /// Labels and values, in display order.
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)>;
}

/// Separator between table columns.
const GAP: &str = "   ";

/// Replaces empty cells with `-` so columns stay readable and splittable.
pub fn dashes(cells: Vec<String>) -> Vec<String> {
    cells
        .into_iter()
        .map(|cell| {
            if cell.is_empty() {
                "-".to_owned()
            } else {
                cell
            }
        })
        .collect()
}

/// Renders rows under headers with every column left-aligned to its widest cell.
pub fn render_table(headers: &[&str], rows: &[Vec<String>], with_headers: bool) -> String {
    let cell = |text: &str| -> String { text.replace(['\n', '\t'], " ") };
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    if with_headers {
        lines.push(headers.iter().map(|h| (*h).to_owned()).collect());
    }
    lines.extend(
        rows.iter()
            .map(|row| row.iter().map(|text| cell(text)).collect()),
    );
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for line in &lines {
        for (width, text) in widths.iter_mut().zip(line) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (index, cell) in line.iter().enumerate() {
            if index > 0 {
                text.push_str(GAP);
            }
            text.push_str(cell);
            if index + 1 < line.len() {
                let pad = widths[index].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Renders `Key: value` lines with the values aligned.
pub fn render_details(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(label, _)| label.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in fields {
        let key = format!("{label}:");
        let value = if value.is_empty() { "-" } else { value };
        out.push_str(format!("{key:<width$}  {value}").trim_end());
        out.push('\n');
    }
    out
}

/// A short age like `kubectl` prints: `42s`, `17m`, `5h`, `3d`.
pub fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(since) = since else {
        return String::new();
    };
    let secs = (now - since).num_seconds().max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Writes results in the chosen format to stdout.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Table or JSON.
    pub format: Format,
    /// Whether tables start with a header line (`--no-headers` clears it).
    pub headers: bool,
}

impl Printer {
    /// A printer for the global `-o` and `--no-headers` flags.
    pub fn new(format: Format, no_headers: bool) -> Self {
        Self {
            format,
            headers: !no_headers,
        }
    }

    /// Prints a list: a table, or a JSON array.
    pub fn list<T: Serialize + Tabular>(&self, items: &[T]) -> Result<(), OutputError> {
        match self.format {
            Format::Json | Format::Yaml => self.json(&items),
            Format::Table => {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = items.iter().map(|item| item.row(now)).collect();
                write_stdout(&render_table(T::HEADERS, &rows, self.headers))
            }
        }
    }

    /// Prints one item: `Key: value` lines, or one JSON object.
    pub fn one<T: Serialize + Detail>(&self, item: &T) -> Result<(), OutputError> {
        match self.format {
            Format::Json | Format::Yaml => self.json(item),
            Format::Table => write_stdout(&render_details(&item.fields(Utc::now()))),
        }
    }

    /// Prints `value` as JSON, or the plain `text` line in table mode.
    pub fn outcome<T: Serialize>(&self, value: &T, text: &str) -> Result<(), OutputError> {
        match self.format {
            Format::Json | Format::Yaml => self.json(value),
            Format::Table => write_stdout(&format!("{text}\n")),
        }
    }

    /// Prints `value` as JSON, or `rows` under `headers` in table mode (for
    /// one object best shown as a table, such as a quota report).
    pub fn table<T: Serialize>(
        &self,
        value: &T,
        headers: &[&str],
        rows: &[Vec<String>],
    ) -> Result<(), OutputError> {
        match self.format {
            Format::Json | Format::Yaml => self.json(value),
            Format::Table => write_stdout(&render_table(headers, rows, self.headers)),
        }
    }

    /// Prints one plain line, whatever the format (e.g. a token for `$(...)`).
    pub fn line(&self, text: &str) -> Result<(), OutputError> {
        write_stdout(&format!("{text}\n"))
    }

    /// Prints any serializable value as pretty JSON, or as YAML with `-o yaml`.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), OutputError> {
        if self.format == Format::Yaml {
            return write_stdout(&to_yaml(&serde_json::to_value(value)?));
        }
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        write_stdout(&text)
    }
}

/// Renders a JSON document as block-style YAML (strings always quoted, so
/// values like `no` or `1.0` keep their type).
pub fn to_yaml(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn scalar(value: &Value) -> String {
        match value {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            // A JSON string is a valid YAML double-quoted scalar.
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            Value::Array(a) if a.is_empty() => "[]".to_owned(),
            Value::Object(o) if o.is_empty() => "{}".to_owned(),
            Value::Array(_) | Value::Object(_) => String::new(),
        }
    }
    fn nested(value: &Value) -> bool {
        matches!(value, Value::Array(a) if !a.is_empty())
            || matches!(value, Value::Object(o) if !o.is_empty())
    }
    fn emit(value: &Value, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, item) in map {
                    let key = serde_json::to_string(key).unwrap_or_default();
                    if nested(item) {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(item, indent + 1, out);
                    } else {
                        out.push_str(&format!("{pad}{key}: {}\n", scalar(item)));
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    if nested(item) {
                        out.push_str(&format!("{pad}-\n"));
                        emit(item, indent + 1, out);
                    } else {
                        out.push_str(&format!("{pad}- {}\n", scalar(item)));
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", scalar(other))),
        }
    }
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

/// Writes to stdout; a closed pipe (`paddock list | head -1`) is not an error.
fn write_stdout(text: &str) -> Result<(), OutputError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml_rendering_keeps_types_and_nesting() {
        let value = serde_json::json!({
            "name": "web1",
            "vcpus": 1.5,
            "ipv4": ["10.0.0.2", "10.0.0.3"],
            "ipv6": [],
            "quota": {"max_vps": 10, "suspended": false},
            "note": "no",
            "list": [{"a": 1}],
        });
        let yaml = super::to_yaml(&value);
        let expected = "\"ipv4\":\n  - \"10.0.0.2\"\n  - \"10.0.0.3\"\n\"ipv6\": []\n\"list\":\n  -\n    \"a\": 1\n\"name\": \"web1\"\n\"note\": \"no\"\n\"quota\":\n  \"max_vps\": 10\n  \"suspended\": false\n\"vcpus\": 1.5\n";
        assert_eq!(yaml, expected);
    }

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn table_columns_are_aligned() {
        let rows = vec![
            vec!["web1".to_owned(), "running".to_owned(), "node-a".to_owned()],
            dashes(vec![
                "database-primary".to_owned(),
                "stopped".to_owned(),
                String::new(),
            ]),
        ];
        let text = render_table(&["NAME", "STATE", "NODE"], &rows, true);
        assert_eq!(
            text,
            "NAME               STATE     NODE\n\
             web1               running   node-a\n\
             database-primary   stopped   -\n"
        );
        let lines: Vec<&str> = text.lines().collect();
        for (column, words) in [
            (1, ["STATE", "running", "stopped"]),
            (2, ["NODE", "node-a", "-"]),
        ] {
            let starts: Vec<usize> = lines
                .iter()
                .zip(words)
                .map(|(line, word)| line.rfind(word).unwrap_or(usize::MAX))
                .collect();
            assert!(
                starts.iter().all(|s| *s == starts[0]),
                "column {column} misaligned:\n{text}"
            );
        }
    }

    #[test]
    fn no_headers_drops_the_header_line_only() {
        let rows = vec![vec!["a".to_owned(), "b".to_owned()]];
        assert_eq!(render_table(&["X", "LONGER"], &rows, false), "a   b\n");
        assert_eq!(render_table(&["X", "Y"], &[], true), "X   Y\n");
    }

    #[test]
    fn details_align_values() {
        let text = render_details(&[("Name", "web1".into()), ("Memory", "1.0 GiB".into())]);
        assert_eq!(text, "Name:    web1\nMemory:  1.0 GiB\n");
    }

    #[test]
    fn ages_are_short() {
        let now = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("time");
        let ago = |secs| Some(now - chrono::Duration::seconds(secs));
        assert_eq!(age(ago(5), now), "5s");
        assert_eq!(age(ago(600), now), "10m");
        assert_eq!(age(ago(3 * 3600), now), "3h");
        assert_eq!(age(ago(5 * 86_400), now), "5d");
        assert_eq!(age(None, now), "");
    }
}
