//! The reply to a `SendNotification`: a SOAP 1.1 envelope holding
//! `m:SendNotificationResult/m:SubscriptionStatus` (`OK` or `Unsubscribe`).
//! Send it with HTTP 200 and `Content-Type: text/xml; charset=utf-8`.

/// What to tell Exchange about the subscription a notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    /// Keep sending notifications.
    Ok,
    /// End the subscription (the only way to cancel a push subscription).
    Unsubscribe,
}

impl SubscriptionStatus {
    /// The `SubscriptionStatusType` value: `OK` or `Unsubscribe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Unsubscribe => "Unsubscribe",
        }
    }
}

const RESULT_OK: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <s:Body>
    <m:SendNotificationResult>
      <m:SubscriptionStatus>OK</m:SubscriptionStatus>
    </m:SendNotificationResult>
  </s:Body>
</s:Envelope>
"#;

const RESULT_UNSUBSCRIBE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <s:Body>
    <m:SendNotificationResult>
      <m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>
    </m:SendNotificationResult>
  </s:Body>
</s:Envelope>
"#;

/// The full response body for `status`.
pub fn send_notification_result(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Ok => RESULT_OK,
        SubscriptionStatus::Unsubscribe => RESULT_UNSUBSCRIBE,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NS_MESSAGES, NS_SOAP11};
    use super::*;
    use quick_xml::NsReader;
    use quick_xml::events::Event;
    use quick_xml::name::{Namespace, ResolveResult};

    /// Reads `xml` by namespace and returns the text of the one
    /// `Envelope/Body/SendNotificationResult/SubscriptionStatus`.
    fn subscription_status(xml: &str) -> String {
        let mut reader = NsReader::from_str(xml);
        let mut path: Vec<(String, String)> = Vec::new();
        let mut found = Vec::new();
        loop {
            match reader.read_resolved_event().unwrap() {
                (ResolveResult::Bound(Namespace(ns)), Event::Start(e)) => {
                    path.push((ns.to_owned(), e.local_name().into_inner().to_owned()));
                }
                (_, Event::Start(e)) => {
                    path.push((String::new(), e.local_name().into_inner().to_owned()));
                }
                (_, Event::End(_)) => {
                    path.pop();
                }
                (_, Event::Text(t)) => {
                    let expected = [
                        (NS_SOAP11, "Envelope"),
                        (NS_SOAP11, "Body"),
                        (NS_MESSAGES, "SendNotificationResult"),
                        (NS_MESSAGES, "SubscriptionStatus"),
                    ];
                    let here: Vec<(&str, &str)> = path
                        .iter()
                        .map(|(ns, local)| (ns.as_str(), local.as_str()))
                        .collect();
                    if here == expected {
                        found.push(t.xml10_content().into_owned());
                    }
                }
                (_, Event::Eof) => break,
                (_, Event::Empty(_)) => panic!("no empty elements expected"),
                _ => {}
            }
        }
        assert!(path.is_empty(), "unclosed elements: {path:?}");
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    #[test]
    fn the_ok_reply_is_well_formed_and_says_ok_in_the_messages_namespace() {
        assert_eq!(
            subscription_status(send_notification_result(SubscriptionStatus::Ok)),
            "OK"
        );
    }

    #[test]
    fn the_unsubscribe_reply_is_well_formed_and_says_unsubscribe() {
        assert_eq!(
            subscription_status(send_notification_result(SubscriptionStatus::Unsubscribe)),
            "Unsubscribe"
        );
    }

    #[test]
    fn the_replies_match_the_fixtures_byte_for_byte() {
        let ok = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ews/send-notification-result-ok.xml"
        ));
        let unsubscribe = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ews/send-notification-result-unsubscribe.xml"
        ));
        assert_eq!(send_notification_result(SubscriptionStatus::Ok), ok);
        assert_eq!(
            send_notification_result(SubscriptionStatus::Unsubscribe),
            unsubscribe
        );
    }

    #[test]
    fn the_replies_start_with_the_xml_declaration_and_use_the_status_names() {
        for status in [SubscriptionStatus::Ok, SubscriptionStatus::Unsubscribe] {
            let body = send_notification_result(status);
            assert!(body.starts_with(r#"<?xml version="1.0" encoding="utf-8"?>"#));
            assert!(body.contains(&format!(
                "<m:SubscriptionStatus>{}</m:SubscriptionStatus>",
                status.as_str()
            )));
        }
    }
}
