//! Chat templates: the Jinja template in a GGUF, rendered with minijinja in a sandbox.
//!
//! A GGUF's template is code from whoever made the file, so it runs with limits: no loader
//! (`include`/`import`/`extends` fail), no access to the environment or files, a fuel budget
//! per render (every instruction costs fuel, so `range` loops stop), a recursion limit, an
//! output limit ([`MAX_OUTPUT_BYTES`]), and its own thread with a stack deep enough for the
//! deepest values the fuel lets it build (minijinja prints and drops values recursively).
//!
//! What Hugging Face templates expect is provided: `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `raise_exception`, `strftime_now`, Jinja2's `trim_blocks` and
//! `lstrip_blocks`, a Python-style `tojson`, and the common Python string and dict methods
//! (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`...).
//!
//! Limits: fuel bounds time but not memory; one instruction such as `'x' * 99999999` can still
//! allocate ~100 MB (minijinja's own cap), so the process running templates needs a memory limit.
//! Python methods that mutate (`list.append`) are not available.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Serde, Value, ValueKind, from_args};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::{ChatMessage, EngineError, Result};

/// Most bytes a render may produce.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Instructions one render may execute. Real templates use 30-100 per message.
pub const FUEL: u64 = 500_000;
/// Stack of the thread each render runs on. minijinja prints, compares and drops nested values
/// recursively (~700 bytes of stack per level); the fuel lets a template nest values at most
/// ~`FUEL / 4` deep, and this stack holds that with room to spare. Only touched pages are used.
const RENDER_STACK_BYTES: usize = 256 << 20;
/// Nesting depth of macros, includes and loops (a macro call counts ~10). Templates that format
/// tool schemas recurse a few levels; the render thread's stack holds minijinja's maximum.
pub const RECURSION_LIMIT: usize = 200;
/// Deepest value `tojson` serializes.
const MAX_JSON_DEPTH: usize = 64;

const TEMPLATE_NAME: &str = "chat_template";

/// llama.cpp's `CHATML_TEMPLATE_SRC` (`common/chat.cpp`), used when a GGUF has no template.
const CHATML_TEMPLATE_SRC: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\n' -}}\n{%- endif -%}";

/// A compiled chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is [`EngineError::Template`].
    pub fn new(source: &str) -> Result<Self> {
        let mut env = sandbox();
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| EngineError::Template(describe(&e)))?;
        Ok(Self { env })
    }

    /// llama.cpp's ChatML template, used when the GGUF has none.
    pub fn chatml_fallback() -> Self {
        let mut env = sandbox();
        // The fallback is a constant that compiles (checked by a test); should that ever
        // change, render() reports the missing template instead of panicking here.
        if let Err(e) = env.add_template_owned(TEMPLATE_NAME, CHATML_TEMPLATE_SRC) {
            log::error!(error:% = e; "built-in ChatML template does not compile");
        }
        Self { env }
    }

    /// Renders `messages`; `add_generation_prompt` opens the assistant's turn.
    ///
    /// Runs on its own thread with a large stack (see [`RENDER_STACK_BYTES`]) so that no
    /// template, however hostile, can overflow the caller's stack.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("chat-template".to_owned())
                .stack_size(RENDER_STACK_BYTES)
                .spawn_scoped(scope, || {
                    self.render_here(messages, add_generation_prompt, bos_token, eos_token)
                })
                .map_err(|e| {
                    EngineError::TemplateRender(format!("cannot start the render thread: {e}"))
                })?
                .join()
                .map_err(|_| {
                    EngineError::TemplateRender("the template engine panicked".to_owned())
                })?
        })
    }

    fn render_here(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::TemplateRender(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        let mut out = LimitedWriter::default();
        let result = template.render_captured_to(ctx, &mut out);
        if out.exceeded {
            return Err(EngineError::TemplateRender(format!(
                "output is larger than {} KiB",
                MAX_OUTPUT_BYTES / 1024
            )));
        }
        if let Err(e) = result {
            return Err(EngineError::TemplateRender(describe(&e)));
        }
        String::from_utf8(out.buf)
            .map_err(|_| EngineError::TemplateRender("output is not UTF-8".to_owned()))
    }
}

/// An environment with the sandbox limits and the Hugging Face extras.
fn sandbox() -> Environment<'static> {
    let mut env = Environment::new();
    // No loader is ever set: include/import/extends of anything but this template fail.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // Hugging Face and llama.cpp render with Jinja2's trim_blocks and lstrip_blocks.
    match minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        Ok(syntax) => env.set_syntax(syntax),
        Err(e) => log::error!(error:% = e; "cannot configure template syntax"),
    }
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.set_unknown_method_callback(python_method);
    env
}

fn describe(e: &Error) -> String {
    if e.kind() == ErrorKind::OutOfFuel {
        return "the template ran too long (out of fuel)".to_owned();
    }
    let mut text = e.to_string();
    if let Some(detail) = e.detail().filter(|d| !text.contains(d)) {
        text = format!("{text}: {detail}");
    }
    // Errors inside includes and macros carry the real cause as their source.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Collects output and fails once it passes [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct LimitedWriter {
    buf: Vec<u8>,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.exceeded = true;
            return Err(io::Error::other("template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `raise_exception(message)`: templates use it to reject conversations they cannot format.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, formatted like Python's `strftime` for the
/// common directives. Needs no time zone database and no network.
fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime_utc(format, secs)
}

fn strftime_utc(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[weekday];

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let text = match directive {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year.rem_euclid(100)),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:2}"),
            'j' => format!("{day_of_year:03}"),
            'H' => format!("{hour:02}"),
            'I' => format!("{:02}", (hour + 11) % 12 + 1),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            'B' => month_name.to_owned(),
            'b' | 'h' => month_name[..3].to_owned(),
            'A' => day_name.to_owned(),
            'a' => day_name[..3].to_owned(),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            'Z' => "UTC".to_owned(),
            'z' => "+0000".to_owned(),
            '%' => "%".to_owned(),
            other => format!("%{other}"),
        };
        out.push_str(&text);
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as Hugging Face defines it: Python's `json.dumps` (`", "` and `": "` separators,
/// non-ASCII kept, no HTML escaping), with an optional `indent`.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // Python-only options with no effect on our output.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?.min(16)),
    };
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> std::result::Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value is nested too deeply",
        ));
    }
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: output too large",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let json_str = |out: &mut String, s: &str| {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
            out.push_str(&text);
        }
        ValueKind::String | ValueKind::Plain => json_str(out, &value.to_string()),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                json_str(out, &key.to_string());
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, sort_keys, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Bytes => {
            out.push('[');
            let mut empty = true;
            for (i, item) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, &item, indent, sort_keys, depth + 1)?;
                empty = false;
            }
            if !empty {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: invalid value",
            ));
        }
        _ => json_str(out, &value.to_string()),
    }
    Ok(())
}

/// Python methods on strings and dicts that Hugging Face templates call.
fn python_method(
    _state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return string_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        return map_method(value, method, args);
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    let strip_set = |args: &[Value]| -> std::result::Result<Option<Vec<char>>, Error> {
        let (chars,): (Option<&str>,) = from_args(args)?;
        Ok(chars.map(|c| c.chars().collect()))
    };
    let trimmer = |chars: &Option<Vec<char>>| {
        let chars = chars.clone();
        move |c: char| match &chars {
            Some(set) => set.contains(&c),
            None => c.is_whitespace(),
        }
    };
    Ok(match method {
        "strip" => {
            let set = strip_set(args)?;
            Value::from(s.trim_matches(trimmer(&set)))
        }
        "lstrip" => {
            let set = strip_set(args)?;
            Value::from(s.trim_start_matches(trimmer(&set)))
        }
        "rstrip" => {
            let set = strip_set(args)?;
            Value::from(s.trim_end_matches(trimmer(&set)))
        }
        "startswith" | "endswith" => {
            let (affixes,): (Value,) = from_args(args)?;
            let check = |a: &str| {
                if method == "startswith" {
                    s.starts_with(a)
                } else {
                    s.ends_with(a)
                }
            };
            let found = match affixes.as_str() {
                Some(a) => check(a),
                None => affixes.try_iter()?.any(|a| a.as_str().is_some_and(check)),
            };
            Value::from(found)
        }
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "capitalize" => {
            let mut chars = s.chars();
            let first: String = chars
                .next()
                .map(|c| c.to_uppercase().collect())
                .unwrap_or_default();
            Value::from(first + &chars.as_str().to_lowercase())
        }
        "title" => {
            let mut out = String::with_capacity(s.len());
            let mut prev_letter = false;
            for c in s.chars() {
                if prev_letter {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_letter = c.is_alphabetic();
            }
            Value::from(out)
        }
        "replace" => {
            let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
            match count {
                Some(n) if n >= 0 => Value::from(s.replacen(old, new, n as usize)),
                _ => Value::from(s.replace(old, new)),
            }
        }
        "split" | "rsplit" => {
            let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
            let limit = maxsplit.filter(|&n| n >= 0).map(|n| n as usize);
            Value::from(python_split(s, sep, limit, method == "rsplit")?)
        }
        "splitlines" => Value::from(s.lines().map(str::to_owned).collect::<Vec<_>>()),
        "join" => {
            let (items,): (Value,) = from_args(args)?;
            let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
            Value::from(parts.join(s))
        }
        "find" => {
            let (needle,): (&str,) = from_args(args)?;
            Value::from(s.find(needle).map_or(-1, |i| s[..i].chars().count() as i64))
        }
        "count" => {
            let (needle,): (&str,) = from_args(args)?;
            Value::from(if needle.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(needle).count()
            })
        }
        "removeprefix" => {
            let (prefix,): (&str,) = from_args(args)?;
            Value::from(s.strip_prefix(prefix).unwrap_or(s))
        }
        "removesuffix" => {
            let (suffix,): (&str,) = from_args(args)?;
            Value::from(s.strip_suffix(suffix).unwrap_or(s))
        }
        "isdigit" | "isalpha" | "isalnum" | "isspace" | "islower" | "isupper" => {
            let _: () = from_args(args)?;
            let test: fn(char) -> bool = match method {
                "isdigit" => |c| c.is_ascii_digit(),
                "isalpha" => char::is_alphabetic,
                "isalnum" => char::is_alphanumeric,
                "isspace" => char::is_whitespace,
                "islower" => |c| !c.is_uppercase(),
                _ => |c| !c.is_lowercase(),
            };
            let cased = match method {
                "islower" => s.chars().any(char::is_lowercase),
                "isupper" => s.chars().any(char::is_uppercase),
                _ => true,
            };
            Value::from(!s.is_empty() && cased && s.chars().all(test))
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

/// Python's `str.split`/`str.rsplit`: no separator splits on runs of whitespace.
fn python_split(
    s: &str,
    sep: Option<&str>,
    limit: Option<usize>,
    from_right: bool,
) -> std::result::Result<Vec<String>, Error> {
    let owned = |parts: Vec<&str>| parts.into_iter().map(str::to_owned).collect();
    match sep {
        Some("") => Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        Some(sep) => Ok(match (limit, from_right) {
            (None, _) => owned(s.split(sep).collect()),
            (Some(n), false) => owned(s.splitn(n + 1, sep).collect()),
            (Some(n), true) => {
                let mut parts: Vec<&str> = s.rsplitn(n + 1, sep).collect();
                parts.reverse();
                owned(parts)
            }
        }),
        None => {
            let words: Vec<&str> = s.split_whitespace().collect();
            let Some(n) = limit.filter(|&n| n < words.len()) else {
                return Ok(owned(words));
            };
            // Keep the unsplit remainder as Python does (its inner whitespace intact).
            if from_right {
                let mut rest = s.trim_end();
                let mut tail = Vec::with_capacity(n + 1);
                for _ in 0..n {
                    let cut = rest.rfind(char::is_whitespace).map_or(0, |i| i + 1);
                    tail.push(&rest[cut..]);
                    rest = rest[..cut].trim_end();
                }
                tail.push(rest);
                tail.reverse();
                Ok(owned(tail))
            } else {
                let mut rest = s.trim_start();
                let mut head = Vec::with_capacity(n + 1);
                for _ in 0..n {
                    let cut = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    head.push(&rest[..cut]);
                    rest = rest[cut..].trim_start();
                }
                head.push(rest);
                Ok(owned(head))
            }
        }
    }
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    Ok(match method {
        "items" => {
            let _: () = from_args(args)?;
            let mut items = Vec::new();
            for key in map.try_iter()? {
                let value = map.get_item(&key)?;
                items.push(Value::from(vec![key, value]));
            }
            Value::from(items)
        }
        "keys" => {
            let _: () = from_args(args)?;
            Value::from(map.try_iter()?.collect::<Vec<_>>())
        }
        "values" => {
            let _: () = from_args(args)?;
            let mut values = Vec::new();
            for key in map.try_iter()? {
                values.push(map.get_item(&key)?);
            }
            Value::from(values)
        }
        "get" => {
            let (key, default): (Value, Option<Value>) = from_args(args)?;
            match map.get_item(&key)? {
                v if v.is_undefined() => default.unwrap_or(Value::from(())),
                v => v,
            }
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }

    fn render(source: &str) -> Result<String> {
        ChatTemplate::new(source)?.render(&[msg("user", "hi")], true, "<s>", "</s>")
    }

    fn assert_render_error(source: &str, wanted: &str) {
        let start = Instant::now();
        match render(source) {
            Err(EngineError::TemplateRender(text)) => {
                assert!(text.contains(wanted), "{source}: {text}");
            }
            other => panic!("{source}: expected a render error, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{source} took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn chatml_fallback_matches_llama_cpp() {
        let out = ChatTemplate::chatml_fallback()
            .render(&[msg("system", "S"), msg("user", "U")], true, "", "")
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = ChatTemplate::chatml_fallback()
            .render(&[msg("user", "U")], false, "", "")
            .unwrap();
        assert_eq!(out, "<|im_start|>user\nU<|im_end|>\n");
    }

    #[test]
    fn huge_loops_stop() {
        assert_render_error("{% for i in range(1000000000) %}x{% endfor %}", "");
        assert_render_error(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "out of fuel",
        );
    }

    #[test]
    fn huge_output_stops() {
        assert_render_error(
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            "KiB",
        );
        assert_render_error("{{ 'x' * 10000000 }}", "KiB");
    }

    #[test]
    fn no_loader_and_bounded_recursion() {
        assert_render_error("{% include 'x' %}", "not found");
        assert_render_error("{% import 'x' as y %}", "not found");
        assert_render_error("{% extends 'x' %}", "not found");
        // Including itself is the only template there is: stopped by the recursion limit.
        assert_render_error("{% include 'chat_template' %}", "recursion");
        assert_render_error(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "recursion",
        );
    }

    #[test]
    fn deeply_nested_values_do_not_overflow_the_stack() {
        // As deep as the fuel allows, then printed, compared and dropped.
        let source = "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% for j in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}";
        assert_render_error(source, "out of fuel");
        let source = "{% set ns = namespace(x=[]) %}{% for i in range(60) %}{% for j in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}{{ (ns.x == ns.x) ~ (ns.x|string|length) }}";
        assert_eq!(render(source).unwrap(), "True120002");
    }

    #[test]
    fn syntax_errors_are_template_errors() {
        assert!(matches!(
            ChatTemplate::new("{% for %}"),
            Err(EngineError::Template(_))
        ));
    }

    #[test]
    fn raise_exception_reports_the_message() {
        assert_render_error(
            "{{ raise_exception('Conversation roles must alternate') }}",
            "Conversation roles must alternate",
        );
    }

    #[test]
    fn context_and_trim_blocks() {
        let source = "{{ bos_token }}\n{% for m in messages %}\n{{ m.role }}:{{ m['content'] }}\n{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}{{ eos_token }}";
        assert_eq!(render(source).unwrap(), "<s>\nuser:hi\nA:</s>");
        assert_eq!(render("{{ tools is defined }}").unwrap(), "False");
    }

    #[test]
    fn python_methods() {
        let cases = [
            ("{{ '  a b  '.strip() }}", "a b"),
            (
                "{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}",
                "a|a|a",
            ),
            (
                "{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('x', 'lo')) }}",
                "TrueTrue",
            ),
            ("{{ 'a b  c'.split() }}", "['a', 'b', 'c']"),
            ("{{ 'a<x>b<x>c'.split('<x>', 1) }}", "['a', 'b<x>c']"),
            ("{{ 'a,b,c'.rsplit(',', 1)[-1] }}", "c"),
            ("{{ ' a  b c '.split(None, 1) }}", "['a', 'b c ']"),
            ("{{ 'aBc'.upper() }}{{ 'aBc'.lower() }}", "ABCabc"),
            (
                "{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}",
                "Hello World|Hello",
            ),
            ("{{ 'aaa'.replace('a', 'b', 2) }}", "bba"),
            ("{{ '-'.join(['a', 'b']) }}", "a-b"),
            ("{{ 'abc'.find('c') }}{{ 'abc'.find('z') }}", "2-1"),
            ("{{ '123'.isdigit() }}{{ ''.isdigit() }}", "TrueFalse"),
            (
                "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}",
                "a=1",
            ),
            (
                "{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 2) }}{{ {'a': 1}.get('b') }}",
                "12None",
            ),
            (
                "{{ {'a': 1}.keys() | list }}{{ {'a': 1}.values() | list }}",
                "['a'][1]",
            ),
        ];
        for (source, want) in cases {
            assert_eq!(render(source).unwrap(), want, "{source}");
        }
        assert_render_error("{{ 'x'.nonexistent() }}", "");
    }

    /// The constructs Qwen3-style templates use: reversed slices, namespaces, `is string`,
    /// chained Python string methods, trim_blocks.
    #[test]
    fn qwen3_style_template() {
        let source = r#"{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "assistant" and '</think>' in content %}
        {%- set reasoning_content = content.split('</think>')[0].rstrip('
').split('<think>')[-1].lstrip('
') %}
        {%- set content = content.split('</think>')[-1].lstrip('
') %}
        {{- '<|im_start|>' + message.role + '
<think>
' + reasoning_content.strip('
') + '
</think>

' + content + '<|im_end|>
' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '
' + content + '<|im_end|>
' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant
' }}
{%- endif %}
{{- ns.last_query_index }}"#;
        let messages = [
            msg("user", "hi"),
            msg(
                "assistant",
                "<think>
hmm
</think>

hello",
            ),
            msg("user", "<tool_response>x</tool_response>"),
        ];
        let out = ChatTemplate::new(source)
            .unwrap()
            .render(&messages, true, "", "")
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nhello<|im_end|>\n<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n<|im_start|>assistant\n0"
        );
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        assert_eq!(
            render(r#"{{ {"name": "f", "args": [1, 2.5, true, none, "<é>"]} | tojson }}"#).unwrap(),
            r#"{"args": [1, 2.5, true, null, "<é>"], "name": "f"}"#
        );
        assert_eq!(
            render(r#"{{ {"a": [1]} | tojson(indent=2) }}"#).unwrap(),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
        assert_render_error(
            "{% set ns = namespace(x=[]) %}{% for i in range(200) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x | tojson }}",
            "nested too deeply",
        );
    }

    #[test]
    fn strftime_formats_utc() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_309;
        assert_eq!(
            strftime_utc("%d %b %Y %H:%M:%S %A %j %%", t),
            "26 Jul 2024 13:25:09 Friday 208 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime_utc("%F %B", 951_782_400), "2000-02-29 February");
        let now = render("{{ strftime_now('%Y') }}").unwrap();
        assert!(now.parse::<u32>().unwrap() >= 2024);
    }
}
