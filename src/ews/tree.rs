//! A small element tree over the safe XML reader ([`XmlIn`]), for EWS documents that are read
//! whole rather than streamed (operation responses in the client, requests in the simulator),
//! so both read by namespace and local name under one XML policy; plus text escaping for XML
//! written by hand.

use super::{Ns, SoapError, Tok, XmlIn};

/// Attributes kept on elements; the reader asks for attributes by name.
const ATTRS: [&str; 12] = [
    "Id",
    "ChangeKey",
    "StartDate",
    "EndDate",
    "MaxEntriesReturned",
    "Name",
    "ResponseClass",
    "TotalItemsInView",
    "IncludesLastItemInRange",
    "Version",
    "FieldURI",
    "Traversal",
];

/// One element.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) ns: Ns,
    pub(crate) local: String,
    attrs: [Option<String>; ATTRS.len()],
    pub(crate) children: Vec<Self>,
    /// Direct text content, trimmed.
    pub(crate) text: String,
}

impl Node {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        let i = ATTRS.iter().position(|a| *a == name)?;
        self.attrs.get(i)?.as_deref()
    }

    /// The first child element with this local name (any namespace).
    pub(crate) fn child(&self, local: &str) -> Option<&Self> {
        self.children.iter().find(|c| c.local == local)
    }

    pub(crate) fn children_named<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Self> {
        self.children.iter().filter(move |c| c.local == local)
    }

    /// Follows a path of child local names.
    pub(crate) fn path(&self, path: &[&str]) -> Option<&Self> {
        path.iter().try_fold(self, |node, step| node.child(step))
    }

    /// The first descendant (depth first) with this local name.
    #[cfg(test)]
    pub(crate) fn find(&self, local: &str) -> Option<&Self> {
        self.children.iter().find_map(|c| {
            if c.local == local {
                Some(c)
            } else {
                c.find(local)
            }
        })
    }
}

/// Parses a whole document into its root element.
pub(crate) fn parse(body: &[u8]) -> Result<Node, SoapError> {
    let mut x = XmlIn::new(body)?;
    loop {
        match x.next()? {
            Tok::Open(open) => {
                let attrs = open.attrs(ATTRS)?;
                let root = Node {
                    ns: open.ns,
                    local: open.local().to_owned(),
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                };
                return fill(&mut x, root);
            }
            Tok::Eof => return Err(SoapError::Malformed("no root element".to_owned())),
            Tok::Text(_) | Tok::Char(_) | Tok::Close => {}
        }
    }
}

/// Reads the content of `node` (just opened) up to its end tag.
fn fill(x: &mut XmlIn<'_>, mut node: Node) -> Result<Node, SoapError> {
    loop {
        match x.next()? {
            Tok::Open(open) => {
                let attrs = open.attrs(ATTRS)?;
                let child = Node {
                    ns: open.ns,
                    local: open.local().to_owned(),
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                };
                node.children.push(fill(x, child)?);
            }
            Tok::Text(t) => node.text.push_str(&t),
            Tok::Char(c) => node.text.push(c),
            Tok::Close => {
                node.text = node
                    .text
                    .trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
                    .to_owned();
                return Ok(node);
            }
            Tok::Eof => {
                return Err(SoapError::Malformed(
                    "unexpected end of document".to_owned(),
                ));
            }
        }
    }
}

/// Escapes text for element content and double-quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_keeps_namespaces_attributes_and_trimmed_text() {
        let xml = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItem xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ItemIds><t:ItemId Id="a&amp;b"/></m:ItemIds><t:Subject> x &lt; y </t:Subject></m:GetItem></s:Body></s:Envelope>"#;
        let root = parse(xml.as_bytes()).unwrap();
        assert_eq!(root.ns, Ns::Soap);
        let op = root.path(&["Body", "GetItem"]).unwrap();
        assert_eq!(op.ns, Ns::Messages);
        assert_eq!(op.find("ItemId").unwrap().attr("Id"), Some("a&b"));
        assert_eq!(op.child("Subject").unwrap().text, "x < y");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
    }
}
