use super::*;

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

/// What reading `body` as a response to `operation` yields for its messages.
fn messages(body: &[u8], operation: &str) -> Result<Vec<Option<EwsError>>, ResponseError> {
    let root = read_envelope(body)?;
    response_messages(&root, operation)?
        .into_iter()
        .map(message_status)
        .collect()
}

fn fault_of(body: &[u8]) -> EwsError {
    match messages(body, "GetItem") {
        Err(ResponseError::Fault(e)) => e,
        other => panic!("expected a fault, got {other:?}"),
    }
}

/// A one-message `SyncFolderItems` response with the given `ResponseMessage` content.
fn sync_response(class: &str, content: &str) -> Vec<u8> {
    format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:SyncFolderItemsResponseMessage{class}>{content}</m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse></s:Body></s:Envelope>"#
    )
    .into_bytes()
}

fn only_error(body: &[u8]) -> EwsError {
    let mut all = messages(body, "SyncFolderItems").unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0).expect("an error message")
}

#[test]
fn a_busy_fault_yields_its_back_off() {
    let e = fault_of(fixture!("fault-server-busy.xml"));
    assert_eq!(
        e,
        EwsError {
            class: ErrorClass::Fault,
            code: ResponseCode::ErrorServerBusy,
            message: Some("The server is busy with other requests; try again later.".to_owned()),
            inner_code: None,
            back_off: Some(Duration::from_millis(24_517)),
        }
    );
    assert!(e.is_busy());
    assert!(e.is_transient());
    let whole = ResponseError::Fault(e);
    assert!(whole.is_transient());
    assert_eq!(
        whole.fault().and_then(|f| f.back_off),
        Some(Duration::from_millis(24_517))
    );
}

#[test]
fn a_fault_takes_its_code_from_the_detail_whatever_the_prefixes() {
    let e = fault_of(fixture!("fault-impersonation-denied.xml"));
    assert_eq!(e.class, ErrorClass::Fault);
    assert_eq!(e.code, ResponseCode::ErrorImpersonateUserDenied);
    assert_eq!(
        e.message.as_deref(),
        Some("This service account may not act on behalf of room-9@rooms.example.")
    );
    assert_eq!(e.inner_code, None);
    assert_eq!(e.back_off, None);
    assert!(!e.is_busy());
    assert!(!e.is_transient());
}

#[test]
fn a_fault_without_detail_takes_the_local_part_of_its_faultcode() {
    let e = fault_of(fixture!("fault-code-only.xml"));
    assert_eq!(e.code, ResponseCode::ErrorMailboxStoreUnavailable);
    assert_eq!(
        e.message.as_deref(),
        Some("The mailbox database holding this room is offline.")
    );
    assert_eq!(e.back_off, None);
    assert!(!e.is_busy());
    assert!(e.is_transient());
}

#[test]
fn a_soap_1_2_fault_reads_its_subcode_and_reason() {
    let body = br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">Busy.</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
    let e = fault_of(body);
    assert_eq!(e.code, ResponseCode::ErrorServerBusy);
    assert_eq!(e.message.as_deref(), Some("Busy."));
    assert!(e.is_busy());
}

#[test]
fn a_fault_with_no_code_at_all_is_invalid() {
    let body = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultstring>?</faultstring></s:Fault></s:Body></s:Envelope>"#;
    assert!(matches!(
        messages(body, "GetItem"),
        Err(ResponseError::Invalid(m)) if m.contains("fault code")
    ));
}

#[test]
fn an_internal_error_wrapping_server_busy_counts_as_busy_with_its_back_off() {
    let e = only_error(fixture!("syncfolderitems-internal-error-inner-busy.xml"));
    assert_eq!(
        e,
        EwsError {
            class: ErrorClass::Error,
            code: ResponseCode::ErrorInternalServerError,
            message: Some(
                "An internal server error occurred. The operation failed., The server is busy with other requests; try again later."
                    .to_owned()
            ),
            inner_code: Some(ResponseCode::ErrorServerBusy),
            back_off: Some(Duration::from_secs(5)),
        }
    );
    assert_eq!(e.effective_code(), &ResponseCode::ErrorServerBusy);
    assert!(e.is_busy());
    assert!(e.is_transient());
}

#[test]
fn any_error_with_a_back_off_is_treated_as_busy() {
    let body = sync_response(
        r#" ResponseClass="Error""#,
        r#"<m:ResponseCode>ErrorInternalServerError</m:ResponseCode><m:MessageXml><t:Value Name="BackOffMilliseconds">750</t:Value></m:MessageXml>"#,
    );
    let e = only_error(&body);
    assert_eq!(e.inner_code, None);
    assert_eq!(e.effective_code(), &ResponseCode::ErrorInternalServerError);
    assert_eq!(e.back_off, Some(Duration::from_millis(750)));
    assert!(e.is_busy());
}

#[test]
fn an_internal_error_wrapping_a_permanent_code_is_not_transient() {
    let body = sync_response(
        r#" ResponseClass="Error""#,
        r#"<m:MessageText>An internal server error occurred.</m:MessageText><m:ResponseCode>ErrorInternalServerError</m:ResponseCode><m:MessageXml><t:Value Name="InnerErrorResponseCode">ErrorInvalidLicense</t:Value></m:MessageXml>"#,
    );
    let e = only_error(&body);
    assert_eq!(
        e.effective_code(),
        &ResponseCode::Other("ErrorInvalidLicense".to_owned())
    );
    assert!(!e.is_busy());
    assert!(!e.is_transient());
    // Without an inner code, an internal error is worth a retry.
    let bare = sync_response(
        r#" ResponseClass="Error""#,
        "<m:ResponseCode>ErrorInternalServerError</m:ResponseCode>",
    );
    assert!(only_error(&bare).is_transient());
}

#[test]
fn an_unreadable_back_off_is_ignored() {
    let body = sync_response(
        r#" ResponseClass="Error""#,
        r#"<m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:MessageXml><t:Value Name="BackOffMilliseconds">soon</t:Value></m:MessageXml>"#,
    );
    let e = only_error(&body);
    assert_eq!(e.back_off, None);
    assert!(e.is_busy());
}

#[test]
fn success_warning_and_error_classes_are_told_apart() {
    let ok = sync_response(
        r#" ResponseClass="Success""#,
        "<m:ResponseCode>NoError</m:ResponseCode>",
    );
    assert_eq!(messages(&ok, "SyncFolderItems").unwrap(), [None]);
    let warning = sync_response(
        r#" ResponseClass="Warning""#,
        "<m:MessageText>Moved.</m:MessageText><m:ResponseCode>ErrorMailboxMoveInProgress</m:ResponseCode>",
    );
    let e = only_error(&warning);
    assert_eq!(e.class, ErrorClass::Warning);
    assert_eq!(e.code, ResponseCode::ErrorMailboxMoveInProgress);
    assert!(e.is_transient());
}

#[test]
fn a_message_without_a_known_class_or_an_error_without_a_code_is_invalid() {
    for (class, content, needle) in [
        (
            "",
            "<m:ResponseCode>NoError</m:ResponseCode>",
            "no ResponseClass",
        ),
        (
            r#" ResponseClass="Fine""#,
            "<m:ResponseCode>NoError</m:ResponseCode>",
            "ResponseClass Fine",
        ),
        (r#" ResponseClass="Error""#, "", "no ResponseCode"),
    ] {
        let body = sync_response(class, content);
        assert!(
            matches!(messages(&body, "SyncFolderItems"), Err(ResponseError::Invalid(ref m)) if m.contains(needle)),
            "{class} {content}"
        );
    }
}

#[test]
fn a_response_to_another_operation_or_without_messages_is_invalid() {
    let ok = sync_response(
        r#" ResponseClass="Success""#,
        "<m:ResponseCode>NoError</m:ResponseCode>",
    );
    assert!(matches!(
        messages(&ok, "GetItem"),
        Err(ResponseError::Invalid(m)) if m.contains("no GetItemResponse")
    ));
    let empty = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages/></m:GetItemResponse></s:Body></s:Envelope>"#;
    assert!(matches!(
        messages(empty, "GetItem"),
        Err(ResponseError::Invalid(m)) if m.contains("no GetItemResponseMessage")
    ));
}

#[test]
fn elements_outside_the_ews_namespaces_are_not_taken_for_ews() {
    let no_ns = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetItemResponse><ResponseMessages><GetItemResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode></GetItemResponseMessage></ResponseMessages></GetItemResponse></s:Body></s:Envelope>"#;
    assert!(matches!(
        messages(no_ns, "GetItem"),
        Err(ResponseError::Invalid(_))
    ));
    let not_soap = br#"<Envelope><Body/></Envelope>"#;
    assert!(matches!(
        messages(not_soap, "GetItem"),
        Err(ResponseError::Invalid(m)) if m.contains("not a SOAP Envelope")
    ));
}

#[test]
fn bodies_that_are_not_xml_are_xml_errors_and_not_transient() {
    let html = b"<html><body>502 Bad Gateway</body>";
    let e = messages(html, "GetItem").unwrap_err();
    assert!(
        matches!(e, ResponseError::Xml(SoapError::Malformed(_))),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert!(e.fault().is_none());
    assert!(matches!(
        messages(b"<!DOCTYPE x><x/>", "GetItem"),
        Err(ResponseError::Xml(SoapError::DoctypeForbidden))
    ));
}

#[test]
fn every_named_code_reads_back_from_its_wire_name_and_others_are_kept() {
    for (code, name) in &NAMED_CODES {
        assert_eq!(ResponseCode::from(*name), *code);
        assert_eq!(code.as_str(), *name);
        assert_eq!(code.to_string(), *name);
    }
    let other = ResponseCode::from("ErrorQuotaExceeded");
    assert_eq!(other, ResponseCode::Other("ErrorQuotaExceeded".to_owned()));
    assert_eq!(other.as_str(), "ErrorQuotaExceeded");
    let transient: Vec<&str> = NAMED_CODES
        .iter()
        .filter(|(code, _)| code.is_transient())
        .map(|(_, name)| *name)
        .collect();
    assert_eq!(
        transient,
        [
            "ErrorServerBusy",
            "ErrorInternalServerError",
            "ErrorMailboxMoveInProgress",
            "ErrorMailboxStoreUnavailable"
        ]
    );
    assert!(!other.is_transient());
}

#[test]
fn error_texts_name_the_code_and_quote_the_message_briefly() {
    let e = EwsError {
        class: ErrorClass::Error,
        code: ResponseCode::ErrorItemNotFound,
        message: Some("x".repeat(5000)),
        inner_code: None,
        back_off: None,
    };
    let text = e.to_string();
    assert!(
        text.starts_with("EWS error ErrorItemNotFound: xxx"),
        "{text}"
    );
    assert!(text.len() < 200, "{text}");
    let bare = EwsError { message: None, ..e };
    assert_eq!(bare.to_string(), "EWS error ErrorItemNotFound");
}
