use std::time::Duration;

use super::*;
use crate::ews::outcome::{ErrorClass, ResponseCode};
use crate::ews::tree::{Node, parse};
use crate::ews::{Ns, SoapError};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ews/client/",
            $name
        ))
        .as_slice()
    };
}

const ROOM: &str = "room-1@rooms.example";
const CALLBACK: &str = "https://rooms-sync.example/ews/notify?tenant=a&room=1";

fn request(watermark: Option<&'static str>) -> PushSubscribe<'static> {
    PushSubscribe {
        room: ROOM,
        event_types: &[
            EventType::Created,
            EventType::Modified,
            EventType::Deleted,
            EventType::Moved,
            EventType::Created,
        ],
        watermark,
        status_frequency_minutes: 30,
        callback_url: CALLBACK,
    }
}

fn shape(node: &Node) -> Vec<(Ns, &str)> {
    node.children
        .iter()
        .map(|c| (c.ns, c.local.as_str()))
        .collect()
}

/// The `PushSubscriptionRequest` of a written request, checked to sit in
/// `Envelope/Body/Subscribe` in the right namespaces.
fn written(req: &PushSubscribe<'_>) -> Node {
    let xml = req.to_xml(ServerVersion::Exchange2013Sp1).unwrap();
    let root = parse(&xml).unwrap();
    assert_eq!(
        root.find("SmtpAddress").map(|n| n.text.as_str()),
        Some(ROOM)
    );
    let body = root.child("Body").unwrap();
    assert_eq!(shape(body), [(Ns::Messages, "Subscribe")]);
    let subscribe = body.child("Subscribe").unwrap();
    assert_eq!(
        shape(subscribe),
        [(Ns::Messages, "PushSubscriptionRequest")]
    );
    subscribe.child("PushSubscriptionRequest").unwrap().clone()
}

#[test]
fn a_push_subscribe_request_follows_the_schema_order_in_the_types_namespace() {
    let push = written(&request(Some("AQAAAHdtLTAwNDI=")));
    assert_eq!(
        shape(&push),
        [
            (Ns::Types, "FolderIds"),
            (Ns::Types, "EventTypes"),
            (Ns::Types, "Watermark"),
            (Ns::Types, "StatusFrequency"),
            (Ns::Types, "URL"),
        ]
    );
    let folders = push.child("FolderIds").unwrap();
    assert_eq!(shape(folders), [(Ns::Types, "DistinguishedFolderId")]);
    assert_eq!(folders.children[0].attr("Id"), Some("calendar"));
    let types: Vec<(Ns, &str)> = push
        .child("EventTypes")
        .unwrap()
        .children
        .iter()
        .map(|c| {
            assert_eq!(c.local, "EventType");
            (c.ns, c.text.as_str())
        })
        .collect();
    // The repeated Created is sent once.
    assert_eq!(
        types,
        [
            (Ns::Types, "CreatedEvent"),
            (Ns::Types, "ModifiedEvent"),
            (Ns::Types, "DeletedEvent"),
            (Ns::Types, "MovedEvent"),
        ]
    );
    assert_eq!(push.child("Watermark").unwrap().text, "AQAAAHdtLTAwNDI=");
    assert_eq!(push.child("StatusFrequency").unwrap().text, "30");
    // The `&` in the query string was escaped on the way out and reads back whole.
    assert_eq!(push.child("URL").unwrap().text, CALLBACK);
}

#[test]
fn without_a_watermark_the_request_has_no_watermark_element() {
    let push = written(&request(None));
    assert_eq!(
        shape(&push),
        [
            (Ns::Types, "FolderIds"),
            (Ns::Types, "EventTypes"),
            (Ns::Types, "StatusFrequency"),
            (Ns::Types, "URL"),
        ]
    );
}

#[test]
fn status_frequency_outside_one_to_1440_minutes_is_refused() {
    for minutes in [0, 1441, u32::MAX] {
        let req = PushSubscribe {
            status_frequency_minutes: minutes,
            ..request(None)
        };
        assert!(matches!(
            req.to_xml(ServerVersion::default()),
            Err(RequestError::OutOfRange { what: "t:StatusFrequency", value, min: 1, max: 1440 })
                if value == u64::from(minutes)
        ));
    }
    for minutes in [1, 1440] {
        let req = PushSubscribe {
            status_frequency_minutes: minutes,
            ..request(None)
        };
        assert_eq!(
            written(&req).child("StatusFrequency").unwrap().text,
            minutes.to_string()
        );
    }
}

#[test]
fn a_request_without_event_types_or_with_an_empty_watermark_is_refused() {
    let none = PushSubscribe {
        event_types: &[],
        ..request(None)
    };
    assert!(matches!(
        none.to_xml(ServerVersion::default()),
        Err(RequestError::Empty {
            what: "t:EventTypes"
        })
    ));
    assert!(matches!(
        request(Some("")).to_xml(ServerVersion::default()),
        Err(RequestError::Empty {
            what: "t:Watermark"
        })
    ));
}

#[test]
fn only_absolute_http_or_https_callback_urls_are_accepted() {
    for url in ["", "/ews/notify", "ftp://rooms-sync.example/x", "https://"] {
        let req = PushSubscribe {
            callback_url: url,
            ..request(None)
        };
        assert!(
            matches!(
                req.to_xml(ServerVersion::default()),
                Err(RequestError::InvalidUrl)
            ),
            "{url}"
        );
    }
    let plain = PushSubscribe {
        callback_url: "http://10.0.0.5:8080/ews",
        ..request(None)
    };
    assert!(plain.to_xml(ServerVersion::default()).is_ok());
}

#[test]
fn event_types_use_the_notification_element_names() {
    let all = [
        (EventType::Copied, "CopiedEvent"),
        (EventType::Created, "CreatedEvent"),
        (EventType::Deleted, "DeletedEvent"),
        (EventType::Modified, "ModifiedEvent"),
        (EventType::Moved, "MovedEvent"),
        (EventType::NewMail, "NewMailEvent"),
        (EventType::FreeBusyChanged, "FreeBusyChangedEvent"),
    ];
    for (t, name) in all {
        assert_eq!(t.element_name(), name);
    }
}

#[test]
fn a_successful_subscribe_yields_the_subscription_id_and_watermark() {
    let result = parse_subscribe_response(fixture!("subscribe-response-success.xml")).unwrap();
    assert_eq!(
        result,
        Ok(Subscription {
            subscription_id: "JgBmaXh0dXJlLW1ieDAyLnJvb21zLmV4YW1wbGUQAAAAc3ViLXJvb20tMS0wMDE="
                .to_owned(),
            watermark: Some("AQAAAGZpeHR1cmUtcm9vbS0xLXdtLTAxMDA=".to_owned()),
        })
    );
}

#[test]
fn a_default_namespace_response_without_watermark_parses() {
    let result =
        parse_subscribe_response(fixture!("subscribe-response-default-namespace.xml")).unwrap();
    assert_eq!(
        result,
        Ok(Subscription {
            subscription_id: "5c1d2e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f".to_owned(),
            watermark: None,
        })
    );
}

#[test]
fn an_invalid_watermark_is_an_error_message_not_a_failure_to_read() {
    let result =
        parse_subscribe_response(fixture!("subscribe-response-invalid-watermark.xml")).unwrap();
    let e = result.unwrap_err();
    assert_eq!(
        e,
        EwsError {
            class: ErrorClass::Error,
            code: ResponseCode::ErrorInvalidWatermark,
            message: Some(
                "The watermark this subscription was to resume from is no longer in the event table."
                    .to_owned()
            ),
            inner_code: None,
            back_off: None,
        }
    );
    assert!(!e.is_transient());
}

#[test]
fn a_busy_fault_to_subscribe_is_a_transient_response_error_with_its_back_off() {
    let e = parse_subscribe_response(fixture!("fault-server-busy.xml")).unwrap_err();
    assert!(e.is_transient());
    assert_eq!(
        e.fault().map(|f| (&f.code, f.back_off)),
        Some((
            &ResponseCode::ErrorServerBusy,
            Some(Duration::from_millis(24_517))
        ))
    );
}

#[test]
fn subscription_id_and_watermark_in_the_types_namespace_are_accepted() {
    let body = String::from_utf8(fixture!("subscribe-response-success.xml").to_vec())
        .unwrap()
        .replace("m:SubscriptionId", "t:SubscriptionId")
        .replace("m:Watermark", "t:Watermark");
    let sub = parse_subscribe_response(body.as_bytes()).unwrap().unwrap();
    assert!(sub.subscription_id.starts_with("JgBmaXh0"));
    assert!(sub.watermark.is_some());
}

#[test]
fn a_success_without_subscription_id_or_with_two_messages_is_invalid() {
    let fixture = String::from_utf8(fixture!("subscribe-response-success.xml").to_vec()).unwrap();
    let no_id = fixture.replace(
        "<m:SubscriptionId>JgBmaXh0dXJlLW1ieDAyLnJvb21zLmV4YW1wbGUQAAAAc3ViLXJvb20tMS0wMDE=</m:SubscriptionId>",
        "",
    );
    assert!(matches!(
        parse_subscribe_response(no_id.as_bytes()),
        Err(ResponseError::Invalid(m)) if m.contains("no SubscriptionId")
    ));
    let start = fixture.find("<m:SubscribeResponseMessage").unwrap();
    let end = fixture.find("</m:SubscribeResponseMessage>").unwrap()
        + "</m:SubscribeResponseMessage>".len();
    let message = &fixture[start..end];
    let twice = fixture.replacen(message, &format!("{message}{message}"), 1);
    assert!(matches!(
        parse_subscribe_response(twice.as_bytes()),
        Err(ResponseError::Invalid(m)) if m.contains("2 response messages")
    ));
}

#[test]
fn a_truncated_body_is_malformed() {
    let full = fixture!("subscribe-response-success.xml");
    let cut = &full[..full.len() / 2];
    assert!(matches!(
        parse_subscribe_response(cut),
        Err(ResponseError::Xml(SoapError::Malformed(_)))
    ));
}
