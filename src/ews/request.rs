//! Writing EWS requests: the SOAP 1.1 envelope every operation shares (server version and
//! impersonation of the room in the header) and a small element writer over quick-xml's
//! [`Writer`] that the operation modules use for their bodies.
//!
//! Everything goes through quick-xml's event API, which escapes text and attribute values.
//! Escaping cannot make every string fit for XML 1.0, though (a NUL or a C0 control character
//! has no representation at all), so values are checked first and refused with a
//! [`RequestError`] rather than sent as a document Exchange would reject as malformed.

use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::{NS_MESSAGES, NS_SOAP11, NS_TYPES, is_xml_char};

/// `Content-Type` of an EWS request body (SOAP 1.1).
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// The schema version a request targets (`RequestServerVersion/@Version`).
///
/// Exchange 2007 RTM is left out on purpose: its `ConnectingSID` has no `SmtpAddress`, which
/// is how every request here names the room it impersonates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServerVersion {
    /// `Exchange2007_SP1` (also covers SP2 and SP3).
    Exchange2007Sp1,
    /// `Exchange2010`.
    Exchange2010,
    /// `Exchange2010_SP1`.
    Exchange2010Sp1,
    /// `Exchange2010_SP2` (also covers SP3).
    Exchange2010Sp2,
    /// `Exchange2013`.
    Exchange2013,
    /// `Exchange2013_SP1`: what Exchange Online and Exchange 2016/2019 are asked for.
    #[default]
    Exchange2013Sp1,
}

impl ServerVersion {
    /// The `Version` attribute value, e.g. `Exchange2013_SP1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exchange2007Sp1 => "Exchange2007_SP1",
            Self::Exchange2010 => "Exchange2010",
            Self::Exchange2010Sp1 => "Exchange2010_SP1",
            Self::Exchange2010Sp2 => "Exchange2010_SP2",
            Self::Exchange2013 => "Exchange2013",
            Self::Exchange2013Sp1 => "Exchange2013_SP1",
        }
    }
}

/// Why a request could not be written. Raised before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A required value is empty.
    #[error("{what} is empty")]
    Empty {
        /// The element or attribute that would hold it.
        what: &'static str,
    },
    /// A value holds a character XML 1.0 cannot carry (NUL and the other C0 controls but
    /// tab, CR and LF; U+FFFE, U+FFFF), or a tab or line break where an attribute would turn
    /// it into a space.
    #[error("{what} holds a character that cannot be sent in XML")]
    NotXmlText {
        /// The element or attribute that would hold it.
        what: &'static str,
    },
    /// A number outside the range the schema allows.
    #[error("{what} must be within {min}..={max}, not {value}")]
    OutOfRange {
        /// The element or attribute that would hold it.
        what: &'static str,
        /// The value given.
        value: u64,
        /// Smallest value allowed.
        min: u64,
        /// Largest value allowed.
        max: u64,
    },
    /// The push callback is not an absolute `http` or `https` URL.
    #[error("the callback URL is not an absolute http(s) URL")]
    InvalidUrl,
    /// A time range whose end is before its start.
    #[error("the end of the range is before its start")]
    EndBeforeStart,
    /// The writer failed (it writes to memory, so this is not expected).
    #[error("writing the request failed: {0}")]
    Write(#[from] io::Error),
}

/// Checks that `text` can be written as XML 1.0 character data.
fn check_text(what: &'static str, text: &str) -> Result<(), RequestError> {
    if text.chars().all(is_xml_char) {
        Ok(())
    } else {
        Err(RequestError::NotXmlText { what })
    }
}

/// Checks an attribute value: character data without tab, CR or LF, which attribute-value
/// normalization on the receiving side would turn into spaces.
fn check_attribute(what: &'static str, value: &str) -> Result<(), RequestError> {
    check_text(what, value)?;
    if value.contains(['\t', '\r', '\n']) {
        return Err(RequestError::NotXmlText { what });
    }
    Ok(())
}

/// Fails with [`RequestError::Empty`] when `text` is empty.
pub(crate) fn non_empty(what: &'static str, text: &str) -> Result<(), RequestError> {
    if text.is_empty() {
        Err(RequestError::Empty { what })
    } else {
        Ok(())
    }
}

/// An element writer: qualified names are written as given (`m:…`, `t:…`, with the prefixes
/// the envelope declares), text and attribute values are checked and escaped.
pub(crate) struct Out {
    w: Writer<Vec<u8>>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("written", &self.w.get_ref().len())
            .finish()
    }
}

impl Out {
    fn new() -> Self {
        Self {
            w: Writer::new(Vec::with_capacity(1024)),
        }
    }

    fn tag<'a>(
        name: &'a str,
        attrs: &[(&'static str, &'a str)],
    ) -> Result<BytesStart<'a>, RequestError> {
        let mut tag = BytesStart::new(name);
        for (key, value) in attrs {
            check_attribute(key, value)?;
            // `(&str, &str)` into an attribute escapes the value.
            tag.push_attribute((*key, *value));
        }
        Ok(tag)
    }

    /// `<name attrs…>`.
    pub(crate) fn open(
        &mut self,
        name: &str,
        attrs: &[(&'static str, &str)],
    ) -> Result<(), RequestError> {
        self.w.write_event(Event::Start(Self::tag(name, attrs)?))?;
        Ok(())
    }

    /// `</name>`.
    pub(crate) fn close(&mut self, name: &str) -> Result<(), RequestError> {
        self.w.write_event(Event::End(BytesEnd::new(name)))?;
        Ok(())
    }

    /// `<name attrs…/>`.
    pub(crate) fn empty(
        &mut self,
        name: &str,
        attrs: &[(&'static str, &str)],
    ) -> Result<(), RequestError> {
        self.w.write_event(Event::Empty(Self::tag(name, attrs)?))?;
        Ok(())
    }

    /// `<name>text</name>`; `name` doubles as the label in a [`RequestError`].
    pub(crate) fn text(&mut self, name: &'static str, text: &str) -> Result<(), RequestError> {
        check_text(name, text)?;
        self.open(name, &[])?;
        // `BytesText::new` escapes `<`, `>`, `&` (and `\r`, which EOL normalization would eat).
        self.w.write_event(Event::Text(BytesText::new(text)))?;
        self.close(name)
    }

    /// `<t:DistinguishedFolderId Id="calendar"/>` inside `wrapper`: the room's calendar,
    /// resolved in the mailbox the header impersonates.
    pub(crate) fn calendar_folder(&mut self, wrapper: &str) -> Result<(), RequestError> {
        self.open(wrapper, &[])?;
        self.empty("t:DistinguishedFolderId", &[("Id", "calendar")])?;
        self.close(wrapper)
    }
}

/// Writes a whole request: XML declaration, `soap:Envelope` declaring the `soap`, `t` and
/// `m` prefixes, a header with `t:RequestServerVersion` and `t:ExchangeImpersonation` of
/// `room` (by SMTP address), and a body that `body` fills with the operation element.
pub(crate) fn envelope(
    version: ServerVersion,
    room: &str,
    body: impl FnOnce(&mut Out) -> Result<(), RequestError>,
) -> Result<Vec<u8>, RequestError> {
    non_empty("t:SmtpAddress", room)?;
    let mut out = Out::new();
    out.w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    out.open(
        "soap:Envelope",
        &[
            ("xmlns:soap", NS_SOAP11),
            ("xmlns:t", NS_TYPES),
            ("xmlns:m", NS_MESSAGES),
        ],
    )?;
    out.open("soap:Header", &[])?;
    out.empty("t:RequestServerVersion", &[("Version", version.as_str())])?;
    out.open("t:ExchangeImpersonation", &[])?;
    out.open("t:ConnectingSID", &[])?;
    out.text("t:SmtpAddress", room)?;
    out.close("t:ConnectingSID")?;
    out.close("t:ExchangeImpersonation")?;
    out.close("soap:Header")?;
    out.open("soap:Body", &[])?;
    body(&mut out)?;
    out.close("soap:Body")?;
    out.close("soap:Envelope")?;
    Ok(out.w.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::Ns;
    use crate::ews::tree::{Node, parse};

    /// `(namespace, local name)` of each child of `node`, in order.
    fn shape(node: &Node) -> Vec<(Ns, &str)> {
        node.children
            .iter()
            .map(|c| (c.ns, c.local.as_str()))
            .collect()
    }

    fn with_text_body(room: &str, text: &str) -> Result<Vec<u8>, RequestError> {
        envelope(ServerVersion::default(), room, |out| {
            out.open("m:Probe", &[("Id", text)])?;
            out.text("t:Value", text)?;
            out.close("m:Probe")
        })
    }

    #[test]
    fn the_envelope_carries_the_version_and_impersonates_the_room_by_smtp_address() {
        let xml = with_text_body("room-1@rooms.example", "x").unwrap();
        assert!(xml.starts_with(br#"<?xml version="1.0" encoding="utf-8"?>"#));
        let root = parse(&xml).unwrap();
        assert_eq!((root.ns, root.local.as_str()), (Ns::Soap, "Envelope"));
        assert_eq!(shape(&root), [(Ns::Soap, "Header"), (Ns::Soap, "Body")]);
        let header = root.child("Header").unwrap();
        assert_eq!(
            shape(header),
            [
                (Ns::Types, "RequestServerVersion"),
                (Ns::Types, "ExchangeImpersonation")
            ]
        );
        assert_eq!(
            header
                .child("RequestServerVersion")
                .unwrap()
                .attr("Version"),
            Some("Exchange2013_SP1")
        );
        let sid = header
            .path(&["ExchangeImpersonation", "ConnectingSID"])
            .unwrap();
        assert_eq!(sid.ns, Ns::Types);
        assert_eq!(shape(sid), [(Ns::Types, "SmtpAddress")]);
        assert_eq!(
            sid.child("SmtpAddress").unwrap().text,
            "room-1@rooms.example"
        );
        let body = root.child("Body").unwrap();
        assert_eq!(shape(body), [(Ns::Messages, "Probe")]);
    }

    #[test]
    fn markup_in_text_and_attributes_is_escaped_and_reads_back_unchanged() {
        let nasty = r#"a<b>&"c'</m:Probe><x/>"#;
        let xml = with_text_body("o'brien&co@rooms.example", nasty).unwrap();
        let root = parse(&xml).unwrap();
        let probe = root.path(&["Body", "Probe"]).unwrap();
        assert_eq!(probe.attr("Id"), Some(nasty));
        assert_eq!(probe.child("Value").unwrap().text, nasty);
        assert_eq!(probe.children.len(), 1);
        assert_eq!(
            root.find("SmtpAddress").unwrap().text,
            "o'brien&co@rooms.example"
        );
    }

    #[test]
    fn characters_xml_cannot_carry_are_refused_before_writing() {
        assert!(matches!(
            with_text_body("room@rooms.example", "a\u{0}b"),
            Err(RequestError::NotXmlText { what: "Id" })
        ));
        assert!(matches!(
            with_text_body("room\u{1b}@rooms.example", "x"),
            Err(RequestError::NotXmlText {
                what: "t:SmtpAddress"
            })
        ));
        // A line break is fine in text but would become a space in an attribute.
        assert!(matches!(
            with_text_body("room@rooms.example", "a\nb"),
            Err(RequestError::NotXmlText { what: "Id" })
        ));
    }

    #[test]
    fn an_empty_room_address_is_refused() {
        assert!(matches!(
            with_text_body("", "x"),
            Err(RequestError::Empty {
                what: "t:SmtpAddress"
            })
        ));
    }

    #[test]
    fn every_server_version_has_its_schema_name() {
        let all = [
            (ServerVersion::Exchange2007Sp1, "Exchange2007_SP1"),
            (ServerVersion::Exchange2010, "Exchange2010"),
            (ServerVersion::Exchange2010Sp1, "Exchange2010_SP1"),
            (ServerVersion::Exchange2010Sp2, "Exchange2010_SP2"),
            (ServerVersion::Exchange2013, "Exchange2013"),
            (ServerVersion::Exchange2013Sp1, "Exchange2013_SP1"),
        ];
        for (version, name) in all {
            assert_eq!(version.as_str(), name);
        }
    }
}
