//! EWS on the wire, both directions, with no HTTP client and no database: parses the
//! `SendNotification` bodies that Exchange POSTs to the push callback and builds the
//! `SendNotificationResult` replies; writes the operation requests the client sends and reads
//! their responses.
//!
//! This module knows nothing about HTTP or the database. It takes bytes and
//! returns a typed model (or a [`SoapError`] whose text is fit for an HTTP 400
//! body), and it hands out the reply envelopes as static strings.
//!
//! XML is read by namespace URI and local name, never by prefix. The reader
//! policy (`XmlIn`) refuses any DTD before reading it, never expands
//! entities other than the five predefined ones and character references,
//! bounds element depth to [`MAX_DEPTH`], accepts UTF-8 only and refuses NUL
//! (which XML does not allow and Postgres text cannot hold).

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::name::{NamespaceResolver, ResolveResult};
use quick_xml::{Reader, XmlVersion};

pub mod notification;
mod outcome;
mod request;
pub mod response;
mod subscribe;
mod sync;
pub mod tree;

pub use notification::{
    ErrorMessage, Event, EventKind, ItemRef, Notification, NotificationMessage, ObjectRef,
    SendNotification, parse_send_notification,
};
pub use outcome::{ErrorClass, EwsError, ResponseCode, ResponseError};
pub use request::{CONTENT_TYPE, RequestError, ServerVersion};
pub use response::{SubscriptionStatus, send_notification_result};
pub use subscribe::{
    EventType, PushSubscribe, STATUS_FREQUENCY_MINUTES, SubscribeResult, Subscription,
    parse_subscribe_response,
};
pub use sync::{
    CalendarItem, CalendarItemType, CalendarViewPage, ChangeKind, FetchedItem, FindCalendarView,
    GetCalendarItems, ItemChange, MAX_CALENDAR_VIEW, MAX_SYNC_CHANGES, Organizer, SyncChanges,
    SyncFolderItems, parse_find_item_response, parse_get_item_response,
    parse_sync_folder_items_response,
};

/// SOAP 1.1 envelope namespace (what Exchange sends).
pub const NS_SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace (accepted as well).
pub const NS_SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
/// EWS messages namespace (`m:`).
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// EWS types namespace (`t:`).
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

/// Deepest element nesting accepted. A `SendNotification` needs 8 levels.
pub const MAX_DEPTH: usize = 32;

/// Longest piece of input quoted back in an error message, in characters.
const QUOTE_MAX_CHARS: usize = 64;

/// Why a body was refused. The `Display` text is short and safe to return as
/// an HTTP 400 body: input is quoted at most 64 characters long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// Not well-formed XML, or not UTF-8.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The body carries a `<!DOCTYPE`; refused before it is read.
    #[error("DTD and entity declarations are not accepted")]
    DoctypeForbidden,
    /// The XML declaration names an encoding other than UTF-8 (or the body is UTF-16).
    #[error("only UTF-8 is accepted, not {0}")]
    UnsupportedEncoding(String),
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("XML nesting deeper than {} levels", MAX_DEPTH)]
    TooDeep,
    /// A SOAP envelope whose body is something else (a `GetItem`, a fault...).
    #[error("SOAP body holds no SendNotification")]
    NotSendNotification,
    /// Well-formed XML that breaks the EWS schema in a way that matters.
    #[error("invalid SendNotification: {0}")]
    Invalid(String),
}

/// Cuts `s` to at most [`QUOTE_MAX_CHARS`] characters for use in an error message.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        None => s.to_owned(),
        Some((cut, _)) => {
            let mut out = String::with_capacity(cut + 3);
            out.push_str(s.get(..cut).unwrap_or_default());
            out.push('…');
            out
        }
    }
}

/// The namespaces this module tells apart. Everything else is [`Ns::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ns {
    /// SOAP 1.1 or SOAP 1.2 envelope.
    Soap,
    /// EWS messages.
    Messages,
    /// EWS types.
    Types,
    /// Any other namespace, or none.
    Other,
}

impl Ns {
    fn of(uri: &str) -> Self {
        match uri {
            NS_SOAP11 | NS_SOAP12 => Self::Soap,
            NS_MESSAGES => Self::Messages,
            NS_TYPES => Self::Types,
            _ => Self::Other,
        }
    }

    /// EWS messages or types: the parser is liberal about which of the two
    /// holds an element.
    pub(crate) fn is_ews(self) -> bool {
        matches!(self, Self::Messages | Self::Types)
    }
}

/// A start tag (or an empty-element tag) with its resolved namespace.
#[derive(Debug)]
pub(crate) struct Open<'i> {
    pub(crate) ns: Ns,
    start: BytesStart<'i>,
}

impl Open<'_> {
    /// The local name (prefix removed).
    pub(crate) fn local(&self) -> &str {
        self.start.local_name().into_inner()
    }

    /// Values of the unprefixed attributes named in `names`, in that order,
    /// with predefined entities and character references resolved.
    pub(crate) fn attrs<const N: usize>(
        &self,
        names: [&str; N],
    ) -> Result<[Option<String>; N], SoapError> {
        let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
        for attr in self.start.attributes() {
            let attr = attr.map_err(|e| SoapError::Malformed(quote(&e.to_string())))?;
            let key = attr.key.as_ref();
            if let Some(slot) = names
                .iter()
                .position(|n| *n == key)
                .and_then(|i| out.get_mut(i))
            {
                let value = attr
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(|e| SoapError::Malformed(quote(&e.to_string())))?;
                *slot = Some(value.into_owned());
            }
        }
        Ok(out)
    }
}

/// One step of the document as the parsers see it: comments, processing
/// instructions and the XML declaration are consumed by [`XmlIn::next`].
#[derive(Debug)]
pub(crate) enum Tok<'i> {
    /// A start tag; an empty-element tag is an `Open` followed by a `Close`.
    Open(Open<'i>),
    /// The end of the innermost open element.
    Close,
    /// Character data (EOLs normalized, not trimmed).
    Text(Cow<'i, str>),
    /// A resolved character or predefined entity reference.
    Char(char),
    /// End of input.
    Eof,
}

/// The safe XML reader: a streaming quick-xml [`Reader`] over a UTF-8 slice with the
/// module's policy applied (no DTD, no custom entities, bounded depth, UTF-8 only,
/// no NUL, end tag names checked), resolving element namespaces itself.
///
/// It keeps its own [`NamespaceResolver`] rather than using quick-xml's `NsReader`, which
/// scans the attributes of every start tag for declarations: an EWS notification declares its
/// namespaces on two or three of its dozens of elements, and skipping the scan on the others
/// saves about 1% of the instructions of handling a notification. Here a tag opens a scope in the resolver only when its attributes contain the bytes
/// `xmlns` at all (a value that happens to contain them costs a needless scan, nothing more),
/// and `scoped` remembers which depths did, so each scope is closed by its own end tag.
#[derive(Debug)]
pub(crate) struct XmlIn<'i> {
    reader: Reader<&'i [u8]>,
    namespaces: NamespaceResolver,
    /// Bit `d` set: the element open at depth `d` opened a scope in `namespaces`.
    scoped: u64,
    depth: usize,
    pending_close: bool,
}

// Every depth the reader accepts has its bit in `XmlIn::scoped`.
const _: () = assert!(MAX_DEPTH < u64::BITS as usize);

impl<'i> XmlIn<'i> {
    /// Checks the encoding and the prolog of `body` and sets up the reader.
    pub(crate) fn new(body: &'i [u8]) -> Result<Self, SoapError> {
        if body.starts_with(&[0xFF, 0xFE]) || body.starts_with(&[0xFE, 0xFF]) {
            return Err(SoapError::UnsupportedEncoding("UTF-16".to_owned()));
        }
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        refuse_doctype_in_prolog(body)?;
        // XML 1.0 has no NUL character, raw or referenced (references are checked where they
        // are resolved), and Postgres text cannot hold one: refusing it here means no parsed
        // value can carry it to the database. After the DOCTYPE check, which reads only the
        // prolog: the cheapest refusal first.
        if let Some(at) = memchr::memchr(0, body) {
            return Err(SoapError::Malformed(format!(
                "NUL byte at byte {at}, which XML does not allow"
            )));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| SoapError::Malformed(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.allow_unmatched_ends = false;
        config.allow_dangling_amp = false;
        config.expand_empty_elements = false;
        // Text is trimmed per element value by the parsers, not per event:
        // quick-xml's event trimming would eat spaces around `&amp;`.
        config.trim_text(false);
        Ok(Self {
            reader,
            namespaces: NamespaceResolver::default(),
            scoped: 0,
            depth: 0,
            pending_close: false,
        })
    }

    /// Current element depth (0 outside the root element).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// `error` (quoted short) and the byte offset it was found at.
    fn malformed(error: &dyn std::fmt::Display, at: u64) -> SoapError {
        SoapError::Malformed(format!("{} (at byte {at})", quote(&error.to_string())))
    }

    fn enter(&mut self) -> Result<(), SoapError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SoapError::TooDeep);
        }
        Ok(())
    }

    fn leave(&mut self) -> Result<(), SoapError> {
        let bit = 1_u64 << self.depth;
        if self.scoped & bit != 0 {
            self.scoped &= !bit;
            self.namespaces.pop();
        }
        self.depth = self
            .depth
            .checked_sub(1)
            .ok_or_else(|| SoapError::Malformed("unmatched end tag".to_owned()))?;
        Ok(())
    }

    /// Opens the namespace scope of `start` (just entered) if it declares any, and resolves
    /// its name.
    fn open(&mut self, start: BytesStart<'i>) -> Result<Open<'i>, SoapError> {
        if memchr::memmem::find(start.attributes_raw().as_bytes(), b"xmlns").is_some() {
            // A declaration the resolver refuses is found here, not by the reader, so the
            // reader's error position is not this one's.
            self.namespaces
                .push(&start)
                .map_err(|e| Self::malformed(&e, self.reader.buffer_position()))?;
            self.scoped |= 1_u64 << self.depth;
        }
        let (ns, _) = self.namespaces.resolve_element(start.name());
        let ns = match ns {
            ResolveResult::Bound(uri) => Ns::of(uri.into_inner()),
            ResolveResult::Unbound => Ns::Other,
            ResolveResult::Unknown(prefix) => {
                return Err(SoapError::Malformed(format!(
                    "unknown namespace prefix {}",
                    quote(&prefix)
                )));
            }
        };
        Ok(Open { ns, start })
    }

    /// The next token, with the reader policy applied.
    pub(crate) fn next(&mut self) -> Result<Tok<'i>, SoapError> {
        if self.pending_close {
            self.pending_close = false;
            self.leave()?;
            return Ok(Tok::Close);
        }
        loop {
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(Self::malformed(&e, self.reader.error_position())),
            };
            return match event {
                XmlEvent::Start(start) => {
                    self.enter()?;
                    Ok(Tok::Open(self.open(start)?))
                }
                XmlEvent::Empty(start) => {
                    self.enter()?;
                    let open = self.open(start)?;
                    self.pending_close = true;
                    Ok(Tok::Open(open))
                }
                XmlEvent::End(_) => {
                    self.leave()?;
                    Ok(Tok::Close)
                }
                XmlEvent::Text(text) => {
                    let content = text.xml10_content();
                    if content.is_empty() {
                        continue;
                    }
                    Ok(Tok::Text(content))
                }
                XmlEvent::CData(cdata) => Ok(Tok::Text(cdata.xml10_content())),
                XmlEvent::GeneralRef(reference) => resolve_reference(&reference).map(Tok::Char),
                XmlEvent::Comment(_) | XmlEvent::PI(_) => continue,
                XmlEvent::Decl(decl) => {
                    check_declared_encoding(&decl)?;
                    continue;
                }
                XmlEvent::DocType(_) => Err(SoapError::DoctypeForbidden),
                XmlEvent::Eof => Ok(Tok::Eof),
            };
        }
    }

    /// Consumes the rest of the element whose `Open` was just returned,
    /// children included. Depth and DTD limits still apply inside it.
    pub(crate) fn skip(&mut self) -> Result<(), SoapError> {
        let Some(outer) = self.depth.checked_sub(1) else {
            return Ok(());
        };
        loop {
            match self.next()? {
                Tok::Close if self.depth == outer => return Ok(()),
                Tok::Eof => return Err(unexpected_eof()),
                _ => {}
            }
        }
    }

    /// The text content of the element whose `Open` was just returned, trimmed
    /// of XML whitespace. `what` names the element in the error when it holds
    /// child elements.
    pub(crate) fn text(&mut self, what: &str) -> Result<Cow<'i, str>, SoapError> {
        let mut acc: Option<Cow<'i, str>> = None;
        loop {
            match self.next()? {
                Tok::Text(piece) => match acc.as_mut() {
                    None => acc = Some(piece),
                    Some(existing) => existing.to_mut().push_str(&piece),
                },
                Tok::Char(c) => acc.get_or_insert_with(Cow::default).to_mut().push(c),
                Tok::Close => break,
                Tok::Open(_) => {
                    return Err(SoapError::Invalid(format!(
                        "{} must hold text only",
                        quote(what)
                    )));
                }
                Tok::Eof => return Err(unexpected_eof()),
            }
        }
        Ok(trim_cow(acc.unwrap_or_default()))
    }
}

pub(crate) fn unexpected_eof() -> SoapError {
    SoapError::Malformed("unexpected end of document".to_owned())
}

pub(crate) fn is_xml_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn trim_cow(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim_matches(is_xml_whitespace)),
        Cow::Owned(s) => {
            let trimmed = s.trim_matches(is_xml_whitespace);
            if trimmed.len() == s.len() {
                Cow::Owned(s)
            } else {
                Cow::Owned(trimmed.to_owned())
            }
        }
    }
}

/// `&lt;` `&gt;` `&amp;` `&apos;` `&quot;` and `&#…;` only.
fn resolve_reference(reference: &quick_xml::events::BytesRef<'_>) -> Result<char, SoapError> {
    let name: &str = reference;
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(c),
            _ => Err(SoapError::Malformed(format!(
                "invalid character reference &{};",
                quote(name)
            ))),
        };
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        _ => Err(SoapError::Malformed(format!(
            "undeclared entity &{};",
            quote(name)
        ))),
    }
}

/// XML 1.0 `Char` production.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_declared_encoding(decl: &quick_xml::events::BytesDecl<'_>) -> Result<(), SoapError> {
    match decl.encoding() {
        None => Ok(()),
        Some(Ok(enc)) => {
            let enc = enc.trim();
            if ["utf-8", "utf8", "us-ascii", "ascii"]
                .iter()
                .any(|ok| enc.eq_ignore_ascii_case(ok))
            {
                Ok(())
            } else {
                Err(SoapError::UnsupportedEncoding(quote(enc)))
            }
        }
        Some(Err(e)) => Err(SoapError::Malformed(quote(&e.to_string()))),
    }
}

/// Refuses a `<!DOCTYPE` in the prolog by looking at its first bytes, before
/// the XML parser reads the DTD. Skips whitespace, the XML declaration,
/// processing instructions and comments; stops at anything else (the reader
/// refuses a DOCTYPE event found later as well).
fn refuse_doctype_in_prolog(body: &[u8]) -> Result<(), SoapError> {
    let mut rest = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    loop {
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(rest.len());
        rest = rest.get(start..).unwrap_or_default();
        let skip_past = |hay: &[u8], open: usize, close: &[u8]| -> Option<usize> {
            hay.get(open..)?
                .windows(close.len())
                .position(|w| w == close)
                .map(|p| open + p + close.len())
        };
        let next = if rest.starts_with(b"<?") {
            skip_past(rest, 2, b"?>")
        } else if rest.starts_with(b"<!--") {
            skip_past(rest, 4, b"-->")
        } else if rest
            .get(..9)
            .is_some_and(|head| head.eq_ignore_ascii_case(b"<!DOCTYPE"))
        {
            return Err(SoapError::DoctypeForbidden);
        } else {
            None
        };
        match next {
            Some(n) => rest = rest.get(n..).unwrap_or_default(),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(xml: &str) -> Result<Vec<String>, SoapError> {
        let mut x = XmlIn::new(xml.as_bytes())?;
        let mut out = Vec::new();
        loop {
            match x.next()? {
                Tok::Open(o) => out.push(format!("<{:?}:{}", o.ns, o.local())),
                Tok::Close => out.push(">".to_owned()),
                Tok::Text(t) => out.push(t.into_owned()),
                Tok::Char(c) => out.push(c.to_string()),
                Tok::Eof => return Ok(out),
            }
        }
    }

    #[test]
    fn quote_cuts_long_input_at_sixty_four_characters() {
        let long = "é".repeat(500);
        let q = quote(&long);
        assert_eq!(q.chars().count(), 65);
        assert!(q.ends_with('…'));
        assert_eq!(quote("short"), "short");
    }

    #[test]
    fn a_doctype_after_comments_and_a_declaration_is_refused_before_parsing() {
        let xml = "\u{FEFF}<?xml version=\"1.0\"?>\n<!-- c --><?pi x?>\n<!doctype x [<!ENTITY a \"b\">]><x/>";
        assert_eq!(
            refuse_doctype_in_prolog(xml.as_bytes()),
            Err(SoapError::DoctypeForbidden)
        );
        assert_eq!(
            XmlIn::new(xml.as_bytes()).err(),
            Some(SoapError::DoctypeForbidden)
        );
    }

    #[test]
    fn a_doctype_the_prescan_misses_is_still_refused_by_the_reader() {
        // A DOCTYPE after the root element never reaches the prescan.
        let xml = "<a/><!DOCTYPE a>";
        assert_eq!(tokens(xml), Err(SoapError::DoctypeForbidden));
    }

    #[test]
    fn predefined_entities_and_character_references_resolve_and_others_are_refused() {
        assert_eq!(
            tokens("<a>x &amp; &#x41;&#66;&lt;</a>").unwrap(),
            ["<Other:a", "x ", "&", " ", "A", "B", "<", ">"]
        );
        assert!(matches!(
            tokens("<a>&xxe;</a>"),
            Err(SoapError::Malformed(m)) if m.contains("undeclared entity")
        ));
        assert!(matches!(
            tokens("<a>&#0;</a>"),
            Err(SoapError::Malformed(_))
        ));
        assert!(matches!(
            tokens("<a>&#x1;</a>"),
            Err(SoapError::Malformed(_))
        ));
    }

    #[test]
    fn empty_elements_become_an_open_and_a_close_and_prefixes_resolve_to_namespaces() {
        let xml = format!(r#"<s:E xmlns:s="{NS_SOAP11}"><b xmlns="{NS_TYPES}"/></s:E>"#);
        assert_eq!(tokens(&xml).unwrap(), ["<Soap:E", "<Types:b", ">", ">"]);
    }

    #[test]
    fn a_namespace_declaration_holds_for_its_element_and_descendants_only() {
        // Redeclared inside, restored after the inner element ends (empty or not); a default
        // namespace declared on an empty element does not reach its sibling.
        let xml = format!(
            r#"<m:a xmlns:m="{NS_MESSAGES}"><m:b xmlns:m="{NS_TYPES}"><m:c/></m:b><m:d/><m:e xmlns:m="{NS_SOAP11}"/><m:f/><g xmlns="{NS_TYPES}"/><h/></m:a>"#
        );
        assert_eq!(
            tokens(&xml).unwrap(),
            [
                "<Messages:a",
                "<Types:b",
                "<Types:c",
                ">",
                ">",
                "<Messages:d",
                ">",
                "<Soap:e",
                ">",
                "<Messages:f",
                ">",
                "<Types:g",
                ">",
                "<Other:h",
                ">",
                ">"
            ]
        );
        // A prefix declared on a sibling is out of scope.
        let leaked = format!(r#"<r><x:a xmlns:x="{NS_TYPES}"></x:a><x:b/></r>"#);
        assert!(
            matches!(tokens(&leaked), Err(SoapError::Malformed(m)) if m.contains("prefix")),
            "{:?}",
            tokens(&leaked)
        );
        // `xmlns` inside an attribute value declares nothing, deep or shallow.
        let value = format!(
            r#"<r xmlns:t="{NS_TYPES}"><t:a Id="xmlns:t=&quot;x&quot;"><t:b/></t:a><t:c/></r>"#
        );
        assert_eq!(
            tokens(&value).unwrap(),
            [
                "<Other:r", "<Types:a", "<Types:b", ">", ">", "<Types:c", ">", ">"
            ]
        );
    }

    #[test]
    fn an_unknown_prefix_is_malformed() {
        assert!(matches!(tokens("<q:a/>"), Err(SoapError::Malformed(m)) if m.contains("prefix")));
        // A declaration the namespace rules forbid: refused with the offset of the end of its tag.
        assert!(
            matches!(
                tokens(r#"<r><a xmlns:xml="urn:other"/></r>"#),
                Err(SoapError::Malformed(m)) if m.ends_with("(at byte 29)")
            ),
            "{:?}",
            tokens(r#"<r><a xmlns:xml="urn:other"/></r>"#)
        );
    }

    #[test]
    fn mismatched_end_tags_are_malformed() {
        assert!(matches!(tokens("<a></b>"), Err(SoapError::Malformed(_))));
    }

    #[test]
    fn nesting_beyond_the_limit_is_too_deep_and_the_limit_itself_is_fine() {
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(tokens(&ok).is_ok());
        let deep = format!(
            "{}<b/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert_eq!(tokens(&deep), Err(SoapError::TooDeep));
    }

    #[test]
    fn only_utf8_is_accepted() {
        assert!(matches!(
            XmlIn::new(b"<a>\xff</a>"),
            Err(SoapError::Malformed(m)) if m.contains("UTF-8")
        ));
        assert!(matches!(
            XmlIn::new(b"\xff\xfe<\x00a\x00/\x00>\x00"),
            Err(SoapError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            tokens("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>"),
            Err(SoapError::UnsupportedEncoding(e)) if e == "ISO-8859-1"
        ));
        assert!(tokens("<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>").is_ok());
        assert!(tokens("<?xml version='1.0' encoding='us-ascii'?><a/>").is_ok());
    }

    #[test]
    fn nul_is_refused_raw_anywhere_and_as_a_reference_in_text_or_attributes() {
        for xml in [
            "<a>x\0y</a>",
            "<a b=\"x\0y\"/>",
            "<a><![CDATA[x\0y]]></a>",
            "<!-- \0 --><a/>",
        ] {
            assert!(
                matches!(XmlIn::new(xml.as_bytes()), Err(SoapError::Malformed(m)) if m.contains("NUL")),
                "{xml:?}"
            );
        }
        let attr = XmlIn::new(b"<a b=\"x&#0;y\"/>").and_then(|mut x| match x.next()? {
            Tok::Open(open) => open.attrs(["b"]).map(|_| ()),
            _ => Ok(()),
        });
        assert!(matches!(attr, Err(SoapError::Malformed(_))), "{attr:?}");
    }

    #[test]
    fn error_texts_are_short_even_for_huge_names() {
        let name = "n".repeat(10_000);
        let err = tokens(&format!("<a></{name}>")).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
