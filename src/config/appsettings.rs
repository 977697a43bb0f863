//! Reader for the .NET appSettings file format (RoomsAppSettings.config).
//!
//! Accepts `<appSettings>` as the root or inside `<configuration>`, takes `<add key value>`,
//! honours `<remove key>` and `<clear/>` as .NET does, and refuses DTDs: the file is shared with
//! the rest of ROOMS, so unknown keys and unknown sibling sections are simply skipped.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Longest reader message kept in [`AppSettingsError::Malformed`], in characters, as for the
/// values quoted in other problems: the XML reader quotes input (a whole mismatched end tag, say).
const MAX_REASON_CHARS: usize = 200;

/// Why the file could not be read as appSettings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppSettingsError {
    /// Not well-formed XML; `position` is the byte offset where the reader stopped, `reason` the
    /// reader's message on one line (control characters escaped) and at most 200 characters.
    #[error("not well-formed XML at byte {position}: {reason}")]
    Malformed { position: u64, reason: String },
    /// The file carries a `<!DOCTYPE`.
    #[error("DTD and entity declarations are not accepted")]
    Doctype,
    /// The root element is neither `<appSettings>` nor `<configuration>`.
    #[error("expected <appSettings> or <configuration><appSettings> as the root, found <{found}>")]
    WrongRoot { found: String },
    /// An `<add>` or `<remove>` without its `key` attribute.
    #[error("an <{element}> element has no key attribute")]
    MissingKey { element: &'static str },
}

/// Reads the text of a RoomsAppSettings.config file: the `(key, value)` pairs in document order,
/// `remove`/`clear` applied, keys as written (known or not); the caller lets the last duplicate
/// win. No environment and no validation: [`super::load_from`] does both on top of this.
///
/// # Errors
/// [`AppSettingsError`] when the text is not an appSettings document.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, AppSettingsError> {
    let mut reader = Reader::from_str(text.trim_start_matches('\u{feff}'));
    reader.config_mut().check_end_names = true;
    // Element path from the root, by local name.
    let mut path: Vec<String> = Vec::new();
    let mut entries: Vec<(String, String)> = Vec::new();
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| AppSettingsError::Malformed {
                position,
                reason: one_line(&e),
            })?;
        match event {
            Event::DocType(_) => return Err(AppSettingsError::Doctype),
            Event::Start(start) => {
                let name = local_name(&start);
                check_root(&path, &name)?;
                if in_app_settings(&path) {
                    apply(&start, &name, &mut entries)?;
                }
                path.push(name);
            }
            Event::Empty(start) => {
                let name = local_name(&start);
                check_root(&path, &name)?;
                if in_app_settings(&path) {
                    apply(&start, &name, &mut entries)?;
                }
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(entries)
}

fn local_name(start: &BytesStart<'_>) -> String {
    start.local_name().as_ref().to_owned()
}

fn check_root(path: &[String], name: &str) -> Result<(), AppSettingsError> {
    if path.is_empty() && name != "appSettings" && name != "configuration" {
        return Err(AppSettingsError::WrongRoot {
            found: name.chars().take(64).collect(),
        });
    }
    Ok(())
}

fn in_app_settings(path: &[String]) -> bool {
    match path {
        [root] => root == "appSettings",
        [outer, inner] => outer == "configuration" && inner == "appSettings",
        _ => false,
    }
}

fn apply(
    start: &BytesStart<'_>,
    name: &str,
    entries: &mut Vec<(String, String)>,
) -> Result<(), AppSettingsError> {
    match name {
        "add" => {
            let key =
                attribute(start, "key")?.ok_or(AppSettingsError::MissingKey { element: "add" })?;
            let value = attribute(start, "value")?.unwrap_or_default();
            entries.push((key, value));
        }
        "remove" => {
            let key = attribute(start, "key")?
                .ok_or(AppSettingsError::MissingKey { element: "remove" })?;
            entries.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
        }
        "clear" => entries.clear(),
        _ => {}
    }
    Ok(())
}

fn attribute(start: &BytesStart<'_>, wanted: &str) -> Result<Option<String>, AppSettingsError> {
    for attr in start.attributes() {
        let attr = attr.map_err(|e| AppSettingsError::Malformed {
            position: 0,
            reason: one_line(&e),
        })?;
        if attr.key.local_name().as_ref() == wanted {
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| AppSettingsError::Malformed {
                    position: 0,
                    reason: one_line(&e),
                })?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// The reader's message as one short line: every problem is printed on a line of its own, and a
/// quoted tag can span lines and run to the end of the file.
fn one_line(error: &impl std::fmt::Display) -> String {
    let mut out = String::new();
    for (i, c) in error.to_string().chars().enumerate() {
        if i == MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
