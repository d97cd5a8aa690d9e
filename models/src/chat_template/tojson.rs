//! The `tojson` filter as Hugging Face's chat-template environment defines it: Python's
//! `json.dumps(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
//! so tool schemas render byte for byte as in `transformers` (`", "` and `": "` between
//! items, no HTML escaping, non-ASCII text kept as is, floats written as Python does).

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Python's `json.dumps` over a template value; keyword arguments `indent` (a count of
/// spaces or a string), `separators` (a pair of strings), `sort_keys` and
/// `ensure_ascii` behave as in Python.
pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(v.as_i64().map_or(0, |n| n.max(0) as usize))),
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        Some(_) => return Err(invalid("tojson separators must be a pair of strings")),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let options = Options {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;

    let mut out = String::new();
    write_value(&mut out, value, &options, 0)?;
    Ok(Value::from_safe_string(out))
}

struct Options {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

fn write_value(
    out: &mut String,
    value: &Value,
    options: &Options,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value)?,
        ValueKind::String => write_string(
            out,
            value.as_str().unwrap_or_default(),
            options.ensure_ascii,
        ),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(
                out,
                ('[', ']'),
                &items,
                options,
                depth,
                |out, item, depth| write_value(out, item, options, depth),
            )?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_text(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                options,
                depth,
                |out, (key, item), depth| {
                    write_string(out, key, options.ensure_ascii);
                    out.push_str(&options.key_sep);
                    write_value(out, item, options, depth)
                },
            )?;
        }
        ValueKind::Undefined => return Err(invalid("an undefined value is not JSON serializable")),
        other => {
            return Err(invalid(format!(
                "a value of kind {other} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

/// Writes `[a, b]` or, with an indent, one item per line, as Python's encoder does.
fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    options: &Options,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |level: usize| {
        options
            .indent
            .as_ref()
            .map(|unit| format!("\n{}", unit.repeat(level)))
    };
    let inner = newline(depth + 1);
    for (idx, item) in items.iter().enumerate() {
        if idx > 0 {
            out.push_str(&options.item_sep);
        }
        if let Some(inner) = &inner {
            out.push_str(inner);
        }
        write_item(out, item, depth + 1)?;
    }
    if let Some(outer) = newline(depth) {
        out.push_str(&outer);
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings: `true`, `null`, `1`, `1.5`.
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Bool | ValueKind::None | ValueKind::Number => {
            let mut text = String::new();
            write_value(&mut text, key, &Options::plain(), 0)?;
            Ok(text)
        }
        other => Err(invalid(format!(
            "keys of kind {other} are not JSON serializable"
        ))),
    }
}

impl Options {
    fn plain() -> Self {
        Self {
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
            ensure_ascii: false,
        }
    }
}

fn write_number(out: &mut String, value: &Value) -> Result<(), Error> {
    if value.is_integer() {
        // Integers print exactly (i64, u64 and i128 alike).
        write!(out, "{value}").expect("writing to a String cannot fail");
        return Ok(());
    }
    let float = f64::try_from(value.clone())?;
    out.push_str(&python_float_repr(float));
    Ok(())
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when
/// the decimal exponent lies in -4..16 and in scientific notation (`1e-05`, `1e+16`)
/// otherwise; `NaN`, `Infinity` and `-Infinity` as `json.dumps` writes them.
pub(crate) fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }

    // Rust's `{:e}` gives the same shortest round-trip digits, as `d.ddde<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp output has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };

    if (-4..16).contains(&exp) {
        let n_int = exp + 1;
        let text = if n_int <= 0 {
            format!("0.{}{digits}", "0".repeat((-n_int) as usize))
        } else if digits.len() as i32 <= n_int {
            format!(
                "{digits}{}.0",
                "0".repeat((n_int - digits.len() as i32) as usize)
            )
        } else {
            let (int, frac) = digits.split_at(n_int as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// A JSON string literal with Python's escapes: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, `\u00XX` for other control characters, and with `ensure_ascii` every
/// non-ASCII character as `\uXXXX` (surrogate pairs above U+FFFF).
fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String cannot fail");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        // Expected strings are what CPython's repr() prints for these values.
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e17, "1.2345e+17"),
            (123.456, "123.456"),
            (f64::INFINITY, "Infinity"),
            (-0.0, "-0.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn strings_escape_controls_and_keep_unicode() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\n\u{1}é<>&", false);
        assert_eq!(out, r#""a\"b\\c\n\u0001é<>&""#);
        let mut ascii = String::new();
        write_string(&mut ascii, "é🙂\u{7f}", true);
        assert_eq!(ascii, r#""\u00e9\ud83d\ude42\u007f""#);
    }
}
